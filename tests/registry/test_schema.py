"""The one definition of the registry's keys: reading, problems, writing, the docs."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbenroll.registry import model, schema
from bbenroll.registry.schema import MASTER_FIELDS, PREVIOUS_FIELDS, WORKER_FIELDS, Problems

ROOT = Path(__file__).resolve().parents[2]
T = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
S1, S2 = "a" * 32, "b" * 32


def good(**changes: Any) -> dict[str, Any]:
    data = {"swissnum": S1, "password": "pw", "created": T, "rotated": T}
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def test_fields_are_the_model_attributes_in_order() -> None:
    names = [f.name for f in dataclasses.fields(model.Worker)]
    assert names[0] == "name"
    assert [field.key for field in WORKER_FIELDS] == names[1:]
    for fields, cls in ((PREVIOUS_FIELDS, model.Previous), (MASTER_FIELDS, model.MasterSettings)):
        assert [field.key for field in fields] == [f.name for f in dataclasses.fields(cls)]
    for fields, cls in ((WORKER_FIELDS, model.Worker), (MASTER_FIELDS, model.MasterSettings)):
        attributes = dataclasses.fields(cls)[-len(fields):]
        for field, attribute in zip(fields, attributes, strict=True):
            has_default = not (attribute.default is dataclasses.MISSING
                               and attribute.default_factory is dataclasses.MISSING)
            assert field.required != has_default, field.key


def test_invite_fields_are_the_invite_attributes_in_order() -> None:
    from bbenroll.registry.invites import Invite

    names = [f.name for f in dataclasses.fields(Invite)]
    assert names[0] == "id"
    assert [field.key for field in schema.INVITE_FIELDS] == names[1:]
    for field, attribute in zip(schema.INVITE_FIELDS, dataclasses.fields(Invite)[1:], strict=True):
        has_default = not (attribute.default is dataclasses.MISSING
                           and attribute.default_factory is dataclasses.MISSING)
        assert field.required != has_default, field.key


def test_docs_show_the_tables_of_the_definition() -> None:
    docs = (ROOT / "docs" / "registry.md").read_text(encoding="utf-8")
    assert schema.markdown_table(MASTER_FIELDS, "master") in docs
    assert schema.markdown_table(WORKER_FIELDS, "workers.NAME") in docs
    assert schema.markdown_table(schema.AUDIT_FIELDS, "audit") in docs
    assert schema.markdown_table(schema.INVITE_FIELDS, "invites.ID") in docs
    # and the numbers the prose quotes
    assert f"at most {model.WORKER_NAME_MAX} characters" in docs
    assert f"within {model.DEFAULT_EXPIRING_WITHIN.days} days" in docs
    assert f"reads `{model.REGISTRY_VERSION}`" in docs
    options = docs.partition("options that can be written in TOML:")[2].partition("Other commands")[0]
    for option, types in schema.BUILDBOT_OPTIONS.items():
        kinds = " or ".join(schema.TYPE_NAMES[t].split(" ", 1)[1] for t in types)
        assert f"`{option}` ({kinds})" in " ".join(options.split()), option


def test_well_formed_worker_reads_as_is() -> None:
    problems = Problems()
    data = good(expires=date(2027, 1, 1), tags=["x"], note="", previous={"swissnum": S2, "until": T},
                buildbot={"max_builds": 1})
    worker = schema.worker_from_data("w", data, problems)
    assert not problems
    assert worker == model.Worker("w", S1, "pw", T, T, datetime(2027, 1, 1, tzinfo=UTC), ("x",), "",
                                  model.Previous(S2, T), buildbot={"max_builds": 1})


def test_times_in_other_zones_are_stored_in_utc() -> None:
    problems = Problems()
    local = datetime(2026, 11, 29, 8, 0, 0, 500, tzinfo=timezone(timedelta(hours=2)))
    worker = schema.worker_from_data("w", good(created=local), problems)
    assert worker is not None and worker.created == T and worker.created.tzinfo is UTC


@pytest.mark.parametrize(
    "data,expected",
    [
        (good(swissnum=""), [("workers.w.swissnum", "swissnum must be at least 32 lowercase base32 "
                                                   "characters (160 bits)")]),
        (good(password=""), [("workers.w.password", "may not be empty")]),
        (good(password=3), [("workers.w.password", "must be a string, not an integer")]),
        (good(created=datetime(2026, 1, 1)),
         [("workers.w.created", "must include a time zone, like 2027-01-01T00:00:00Z")]),
        (good(rotated="2026"), [("workers.w.rotated", "must be a date-time, like 2027-01-01T00:00:00Z")]),
        (good(tags=["a", ""]), [("workers.w.tags", "must be an array of non-empty strings")]),
        (good(revoked_reason="why"), [("workers.w.revoked_reason", "set, but the worker is not revoked")]),
        (good(previous={"swissnum": S2}),
         [("workers.w.previous", "must be a table with exactly 'swissnum' and 'until'")]),
        (good(previous={"swissnum": "", "until": "x"}),
         [("workers.w.previous.swissnum", "swissnum must be at least 32 lowercase base32 characters "
                                          "(160 bits)"),
          ("workers.w.previous.until", "must be a date-time, like 2027-01-01T00:00:00Z")]),
        (good(buildbot=[]), [("workers.w.buildbot", "must be a table")]),
        (good(swissnum=None, zz=1, aa=2),
         [("workers.w.aa", "unknown key"), ("workers.w.zz", "unknown key"),
          ("workers.w.swissnum", "missing")]),
        ("x", [("workers.w", "must be a table")]),
    ],
)
def test_every_problem_is_reported_with_its_key(data: Any, expected: list[tuple[str, str]]) -> None:
    problems = Problems()
    assert schema.worker_from_data("w", data, problems) is None
    assert problems.items == expected


def test_a_bad_name_is_reported_with_the_problems_of_its_table() -> None:
    problems = Problems()
    assert schema.worker_from_data("1 w", good(password=""), problems) is None
    assert [key for key, _ in problems.items] == ['workers."1 w"', 'workers."1 w".password']


def test_master_problems() -> None:
    problems = Problems()
    data = {"identity": "", "tubid": "x", "location": ["tcp:ok:1", "no"], "listen": 1, "pb": None, "z": 0}
    assert schema.master_from_data(data, problems) is None
    keys = [key for key, _ in problems.items]
    assert keys == ["master.z", "master.identity", "master.tubid", "master.location[1]", "master.listen",
                    "master.pb"]


def test_worker_to_data_writes_only_what_differs_from_the_defaults() -> None:
    w = model.new_worker("w", T)
    assert list(schema.worker_to_data(w)) == ["swissnum", "password", "created", "rotated"]
    full = dataclasses.replace(model.revoke(w, T, "lost"), expires=T, tags=("a",), note="",
                               buildbot={"max_builds": 1})
    data = schema.worker_to_data(full)
    assert list(data) == ["swissnum", "password", "created", "rotated", "expires", "tags", "note", "revoked",
                          "revoked_reason", "buildbot"]
    assert data["tags"] == ["a"] and type(data["tags"]) is list
    problems = Problems()
    assert schema.worker_from_data("w", data, problems) == full and not problems
    # a reason without the revocation it explains is not written
    assert "revoked_reason" not in schema.worker_to_data(dataclasses.replace(full, revoked=None))


def test_model_still_offers_the_moved_names() -> None:
    assert model.key_path("workers", "wörker") == 'workers."wörker"'
    assert model.worker_to_data is schema.worker_to_data and model.Problems is Problems
    with pytest.raises(AttributeError):
        _ = model.no_such_name  # type: ignore[attr-defined]


# --- any data: a worker or problems, never an exception ---------------------

_times = st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]),
                 min_value=datetime(1970, 1, 2), max_value=datetime(9998, 1, 1)),
    st.datetimes(max_value=datetime(9998, 1, 1)),  # no time zone
    st.dates(),
)
_scalars = st.one_of(st.text(max_size=3), st.sampled_from(["", S1, S2]), st.integers(), st.booleans(),
                     st.floats(allow_nan=False), _times)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
_keys = st.sampled_from([field.key for field in WORKER_FIELDS] + ["until", "x"])
_previous = st.fixed_dictionaries({"swissnum": st.sampled_from([S2, "", 3]), "until": _times})


@st.composite
def _worker_data(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(_values)
    data = good() if draw(st.booleans()) else {}
    for key in draw(st.lists(_keys, max_size=4)):
        data[key] = draw(_previous if key == "previous" and draw(st.booleans()) else _values)
    return data


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["w", "1w", "", "wörker"]), data=_worker_data())
def test_any_data_reads_as_a_worker_or_as_problems(name: str, data: Any) -> None:
    problems = Problems()
    worker = schema.worker_from_data(name, data, problems)
    if worker is None:
        assert problems.items
        assert all(key.startswith("workers.") and message for key, message in problems.items)
        return
    assert not problems
    again = Problems()
    assert schema.worker_from_data(name, schema.worker_to_data(worker), again) == worker and not again


# --- pushed rotation: serial, delivery and the rotation policy ------------------


def test_delivery_keys_round_trip_in_the_documented_order() -> None:
    w = model.confirm(model.rotate(model.new_worker("w", T), T), 1, T + timedelta(seconds=4))
    w = dataclasses.replace(w, rotate_every=timedelta(days=90))
    data = schema.worker_to_data(w)
    assert list(data) == ["swissnum", "password", "created", "rotated", "previous", "serial", "changed",
                          "delivered", "delivered_at", "rotate_every"]
    assert (data["serial"], data["delivered"], data["rotate_every"]) == (1, 1, "90d")
    problems = Problems()
    assert schema.worker_from_data("w", data, problems) == w and not problems
    never = dataclasses.replace(w, rotate_every=model.NEVER)
    assert schema.worker_to_data(never)["rotate_every"] == "never"
    assert schema.worker_from_data("w", schema.worker_to_data(never), problems) == never and not problems


def test_a_worker_from_before_serials_reads_with_the_defaults() -> None:
    problems = Problems()
    worker = schema.worker_from_data("w", good(), problems)
    assert worker is not None and not problems
    assert (worker.serial, worker.changed, worker.delivered, worker.delivered_at, worker.rotate_every) == (
        0, None, None, None, None)
    assert list(schema.worker_to_data(worker)) == ["swissnum", "password", "created", "rotated"]


@pytest.mark.parametrize(
    "data,expected",
    [
        (good(serial=-1), [("workers.w.serial", "may not be negative")]),
        (good(serial="3"), [("workers.w.serial", "must be an integer, not a string")]),
        (good(serial=True), [("workers.w.serial", "must be an integer, not a boolean")]),
        (good(changed="x"), [("workers.w.changed", "must be a date-time, like 2027-01-01T00:00:00Z")]),
        (good(serial=2, delivered=3, delivered_at=T),
         [("workers.w.delivered", "is 3, above serial 2: no worker can confirm a FURL the registry never "
                                  "issued")]),
        (good(delivered=1, delivered_at=T),
         [("workers.w.delivered", "is 1, above serial 0: no worker can confirm a FURL the registry never "
                                  "issued")]),
        (good(serial=1, delivered=1), [("workers.w.delivered", "set without delivered_at")]),
        (good(serial=1, delivered_at=T), [("workers.w.delivered_at", "set without delivered")]),
        (good(rotate_every="soon"),
         [("workers.w.rotate_every", "duration 'soon' not understood: use a number and a unit, like 90m, "
                                     "24h, 7d or 2w")]),
        (good(rotate_every=90), [("workers.w.rotate_every", 'must be a duration string like "90d", not an '
                                                            "integer")]),
    ],
)
def test_delivery_problems_are_reported_with_their_key(data: Any, expected: list[tuple[str, str]]) -> None:
    problems = Problems()
    assert schema.worker_from_data("w", data, problems) is None
    assert problems.items == expected


def test_master_rotate_every() -> None:
    base = {"identity": "m.pem", "tubid": "a" * 32, "location": ["tcp:h:1"], "listen": "tcp:1"}
    problems = Problems()
    master = schema.master_from_data(base, problems)
    assert master is not None and master.rotate_every is None and not problems
    assert "rotate_every" not in schema.master_to_data(master)
    master = schema.master_from_data({**base, "rotate_every": "2w"}, problems)
    assert master is not None and master.rotate_every == timedelta(days=14) and not problems
    assert schema.master_to_data(master)["rotate_every"] == "14d"
    assert schema.master_from_data({**base, "rotate_every": "never"}, problems) is None
    assert [key for key, _ in problems.items] == ["master.rotate_every"]


def test_a_delivered_above_serial_is_located_on_its_table(tmp_path: Path) -> None:
    from bbenroll.errors import RegistryError
    from bbenroll.registry import store
    from tests.helpers.registry import COMMENTS, on_disk

    text = COMMENTS.text.replace('[workers.beta]\n', '[workers.beta]\nserial = 1\ndelivered = 2\n'
                                 'delivered_at = 2026-12-01T00:00:00Z\n')
    path = on_disk(tmp_path, text)
    line = text.splitlines().index("[workers.beta]") + 1
    with pytest.raises(RegistryError) as e:
        store.load(path)
    assert str(e.value) == (f"{path}:{line}: workers.beta.delivered: is 2, above serial 1: no worker can "
                            "confirm a FURL the registry never issued")


def test_an_old_registry_stays_byte_identical_outside_the_edited_worker(tmp_path: Path) -> None:
    """A registry from before serials: rotating one worker adds the new keys to that
    worker only; every other byte, the other workers' tables included, is kept."""
    from bbenroll.registry import store
    from tests.helpers.registry import COMMENTS, on_disk

    path = on_disk(tmp_path, COMMENTS.text)
    original = path.read_text()
    with store.edit(path, now=T) as editor:
        editor.update(model.rotate(editor.worker("beta"), T))
    text = path.read_text()
    before, _ = COMMENTS.outside("beta")
    head = before.replace("pw5oewkytqcf2pqdvhfhtrcgq2wsftzt", store.load(path).registry.master.tubid)
    assert text.startswith(head)
    beta = text[len(head):].split("# trailing comment of beta")[0]
    assert "serial = 1\n" in beta and "changed = 2026-11-29T06:00:00Z\n" in beta
    assert "delivered" not in beta
    rest = original[original.index("# trailing comment of beta"):]
    assert rest in text  # alpha's, gamma's tables and every comment after beta, unchanged
    assert text.count("serial =") == 1
    # and a load + save that changes nothing writes nothing
    with store.edit(path, now=T):
        pass
    assert path.read_text() == text
