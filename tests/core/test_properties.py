"""Property tests (hypothesis): FURLs, durations and dates, registry edits."""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import tempfile
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from foolscap.connections.tcp import NEW_STYLE_HINT_RE
from foolscap.furl import decode_furl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bbenroll.errors import FurlError, TimeSpecError
from bbenroll.furl import BASE32_ALPHABET, Furl, base32_encode, build_furl, check_hint, parse_furl
from bbenroll.registry import model, store
from bbenroll.registry.model import Previous, Worker
from bbenroll.times import parse_date, parse_duration, parse_when

# --- FURLs -------------------------------------------------------------------

base32 = st.text(alphabet=BASE32_ALPHABET, min_size=1, max_size=80)
tubids = st.text(alphabet=BASE32_ALPHABET, min_size=32, max_size=32)
swissnums = st.text(alphabet=BASE32_ALPHABET, min_size=32, max_size=64)
ports = st.integers(min_value=1, max_value=65535)
dns_labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True)
dns_names = st.builds(
    lambda labels, dot: ".".join(labels) + ("." if dot else ""),
    st.lists(dns_labels, min_size=1, max_size=4),
    st.booleans(),
)
ipv4s = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6s = st.integers(0, 2**128 - 1).map(lambda n: f"[{ipaddress.IPv6Address(n).compressed}]")
tcp_hints = st.builds(lambda host, port: f"tcp:{host}:{port}", st.one_of(dns_names, ipv4s, ipv6s), ports)
other_hints = st.builds(
    lambda kind, host, port: f"{kind}:{host}:{port}", st.sampled_from(["tor", "i2p"]), dns_names, ports
)
hint_lists = st.lists(st.one_of(tcp_hints, tcp_hints, other_hints), min_size=1, max_size=4)


@settings(max_examples=300)
@given(tubids, hint_lists, swissnums)
def test_furl_round_trip(tubid: str, hints: list[str], swissnum: str) -> None:
    text = build_furl(tubid, hints, swissnum)
    furl = parse_furl(text)
    assert furl == Furl(tubid, tuple(hints), swissnum)
    assert str(furl) == text
    assert parse_furl(f"  {text}\n") == furl  # pasted with whitespace around it
    # Foolscap reads the same string the same way
    assert decode_furl(text) == (tubid, hints, swissnum)
    redacted = furl.redacted()
    assert redacted.startswith(f"pb://{tubid}@{','.join(hints)}/")
    assert swissnum not in redacted.rpartition("/")[2]


@settings(max_examples=200)
@given(tcp_hints)
def test_tcp_hints_are_understood_by_foolscap(hint: str) -> None:
    """Every tcp hint bbenroll accepts, Foolscap's TCP handler parses to the same host and port."""
    assert check_hint(hint) == hint
    mo = NEW_STYLE_HINT_RE.search(hint)
    assert mo is not None
    host, _, port = hint[len("tcp:") :].rpartition(":")
    assert (mo.group(1), int(mo.group(2))) == (host, int(port))


def _mutate(text: str, data: st.DataObject) -> str:
    """A FURL with a few random edits: characters inserted, deleted or replaced."""
    chars = st.one_of(
        st.sampled_from(list("\n\r\t ,/@:[].-%\x00" + BASE32_ALPHABET + "ABCZ0189")),
        st.characters(),
    )
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        i = data.draw(st.integers(0, len(text)), label="position")
        kind = data.draw(st.sampled_from(["insert", "delete", "replace"]), label="kind")
        c = data.draw(chars, label="char")
        if kind == "insert":
            text = text[:i] + c + text[i:]
        elif kind == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + c + text[i + 1 :]
    return text


def _check_parse(text: str) -> None:
    """parse_furl either raises FurlError or returns what Foolscap also reads from the text."""
    try:
        furl = parse_furl(text)
    except FurlError:
        return
    assert decode_furl(text.strip()) == (furl.tubid, list(furl.hints), furl.swissnum)
    assert str(furl) == text.strip()


@settings(max_examples=500)
@given(st.text())
@example("pb://")
@example("pb://@/")
@example("pb://" + "a" * 32 + "@tcp:h:1/")
def test_parse_furl_random_text(text: str) -> None:
    _check_parse(text)


@settings(max_examples=300)
@given(tubids, hint_lists, swissnums, st.data())
def test_parse_furl_mutated(tubid: str, hints: list[str], swissnum: str, data: st.DataObject) -> None:
    _check_parse(_mutate(build_furl(tubid, hints, swissnum), data))


NEWLINE_FURLS = [
    # tubid of 31 characters plus a newline: 32 characters that "match" ^[a-z2-7]+$
    "pb://" + "a" * 31 + "\n@tcp:h.example.org:9989/" + "b" * 32,
    # a hint ending in a newline
    "pb://" + "a" * 32 + "@tcp:h.example.org:9989\n,tcp:k.example.org:9989/" + "b" * 32,
    "pb://" + "a" * 32 + "@tor:abc.onion:80\n,tcp:k.example.org:9989/" + "b" * 32,
]


@pytest.mark.parametrize("text", NEWLINE_FURLS, ids=["tubid", "tcp-hint", "tor-hint"])
def test_parse_furl_rejects_embedded_newlines(text: str) -> None:
    """bbenroll must be stricter than Foolscap, never laxer; Foolscap rejects or misreads these."""
    with pytest.raises(FurlError):
        parse_furl(text)


@pytest.mark.parametrize(
    "check,value",
    [
        ("check_tubid", "a" * 31 + "\n"),
        ("check_swissnum", "b" * 32 + "\n"),
        ("check_hint", "tcp:h.example.org:9989\n"),
        ("check_hint", "tor:abc.onion:80\n"),
    ],
)
def test_checks_reject_trailing_newline(check: str, value: str) -> None:
    from bbenroll import furl

    with pytest.raises(FurlError):
        getattr(furl, check)(value)


# --- durations and dates -----------------------------------------------------

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_SECONDS = 100 * 365 * 86400
spaces = st.text(alphabet=" \t", max_size=2)


@settings(max_examples=500)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 100), st.integers(0, 10**12)),
            st.sampled_from("smhdwSMHDW"),
            spaces,
            spaces,
        ),
        min_size=1,
        max_size=5,
    ),
    spaces,
    spaces,
)
def test_parse_duration_sums_its_parts(
    parts: list[tuple[int, str, str, str]], before: str, after: str
) -> None:
    text = before + "".join(f"{n}{gap}{unit}{sep}" for n, unit, gap, sep in parts) + after
    total = sum(n * UNIT_SECONDS[unit.lower()] for n, unit, _, _ in parts)
    if 0 < total <= MAX_SECONDS:
        assert parse_duration(text) == timedelta(seconds=total)
        now = datetime(2026, 1, 1, tzinfo=UTC)
        assert parse_when(text, now) == now + timedelta(seconds=total)
    else:
        with pytest.raises(TimeSpecError):
            parse_duration(text)


@settings(max_examples=300)
@given(st.one_of(st.text(), st.from_regex(r"\s*(\d{1,6}\s*[smhdwSMHDW]\s*){1,3}x?", fullmatch=True)))
def test_parse_duration_random_text(text: str) -> None:
    try:
        value = parse_duration(text)
    except TimeSpecError:
        return
    assert timedelta(0) < value <= timedelta(seconds=MAX_SECONDS)


def test_parse_duration_huge_number_is_a_timespec_error() -> None:
    # more digits than int() converts by default (4300): must still be a user error
    with pytest.raises(TimeSpecError):
        parse_duration("1" * 5000 + "d")


timezones = st.one_of(
    st.just(UTC),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))),
)


@settings(max_examples=300)
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=timezones))
def test_parse_date_reads_iso_datetimes(value: datetime) -> None:
    expected = value.astimezone(UTC).replace(microsecond=0)
    assert parse_date(value.isoformat()) == expected
    assert parse_date(value.isoformat(sep=" ")) == expected
    assert parse_when(value.isoformat(), datetime(2026, 1, 1, tzinfo=UTC)) == expected


@settings(max_examples=300)
@given(st.one_of(st.text(), st.datetimes(timezones=timezones).map(lambda d: d.isoformat())))
@example("0001-01-01T00:00:00+01:00")
@example("9999-12-31T23:59:59-01:00")
def test_parse_date_random_text(text: str) -> None:
    """A date either parses to an aware UTC datetime or is a TimeSpecError (never OverflowError...)."""
    try:
        value = parse_date(text)
    except TimeSpecError:
        return
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    assert value.microsecond == 0


# --- the registry, edited for real -------------------------------------------

NAME_START = st.one_of(
    st.sampled_from(list("abcxyzABCXYZ_-")),
    st.characters(min_codepoint=0xA0, exclude_categories=("Cs",)),
)
NAME_REST = st.one_of(NAME_START, st.sampled_from(list("0123456789")))
worker_names = st.builds(lambda a, b: a + "".join(b), NAME_START, st.lists(NAME_REST, max_size=49))
tricky_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from([*"\"'[]{}#=\\\n\r\t ,.äö€😀", '"""', "'''", "\n[workers.x]\n", "\n# c\n"])).map(
        "".join
    ),
)
times = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)


def test_worker_names_strategy_is_valid() -> None:
    @settings(max_examples=200)
    @given(worker_names)
    def check(name: str) -> None:
        assert model.check_buildbot_name(name) == name  # names a registry may hold, not only new ones

    check()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One registry and identity for the module: minting a key per example would be slow."""
    directory = tmp_path_factory.mktemp("props")
    store.create(
        directory / "workers.toml",
        location=["tcp:buildbot.example.org:9989"],
        listen="tcp:9989",
        pb="tcp:9990:interface=127.0.0.1",
        identity="master.pem",
    )
    return directory


class Secrets:
    """Distinct, valid swissnums (duplicates would be refused, rightly)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        head = base32_encode(hashlib.sha1(f"secret {self.count}".encode()).digest())
        return head + self.data.draw(st.text(alphabet=BASE32_ALPHABET, max_size=8), label="suffix")


def draw_worker(data: st.DataObject, name: str, secret: Secrets) -> Worker:
    created = data.draw(times, label="created")
    revoked = data.draw(st.none() | times, label="revoked")
    previous = data.draw(st.none() | times, label="previous")
    return Worker(
        name=name,
        swissnum=secret(),
        password=data.draw(tricky_text.filter(bool), label="password"),
        created=created,
        rotated=data.draw(times, label="rotated"),
        expires=data.draw(st.none() | times, label="expires"),
        tags=tuple(data.draw(st.lists(tricky_text.filter(bool), max_size=4), label="tags")),
        note=data.draw(st.none() | tricky_text, label="note"),
        previous=Previous(secret(), previous) if previous is not None else None,
        revoked=revoked,
        revoked_reason=data.draw(st.none() | tricky_text, label="reason") if revoked else None,
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_registry_edits_round_trip(template: Path, data: st.DataObject) -> None:
    secret = Secrets(data)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "workers.toml"
        for name in ("workers.toml", "master.pem"):
            shutil.copy2(template / name, Path(tmp) / name)
        original = path.read_text(encoding="utf-8")
        head = original[: original.index("[audit]")]  # [audit] changes with every edit
        expected: dict[str, Worker] = {}
        for _batch in range(data.draw(st.integers(1, 4), label="batches")):
            with store.edit(path) as editor:
                for _ in range(data.draw(st.integers(1, 4), label="ops")):
                    ops = ["add"] + (["update", "rotate", "revoke", "remove"] if expected else [])
                    op = data.draw(st.sampled_from(ops), label="op")
                    if op == "add":
                        name = data.draw(worker_names.filter(lambda n: n not in expected), label="name")
                        worker = draw_worker(data, name, secret)
                        editor.add(worker)
                    else:
                        name = data.draw(st.sampled_from(sorted(expected)), label="target")
                        old = expected[name]
                        if op == "remove":
                            editor.remove(name)
                            del expected[name]
                            continue
                        if op == "update":
                            worker = draw_worker(data, name, secret)
                        elif op == "rotate":
                            if old.revoked is not None:
                                worker = model.restore(old, now)
                            else:
                                grace = data.draw(st.none() | st.just(timedelta(days=7)), label="grace")
                                worker = model.rotate(old, now, grace)
                        else:
                            if old.revoked is not None:
                                worker = replace(old, revoked=None, revoked_reason=None)
                            else:
                                reason = data.draw(st.none() | tricky_text, label="reason")
                                worker = model.revoke(old, now, reason)
                        editor.update(worker)
                    expected[worker.name] = worker
            loaded = store.load(path)
            assert loaded.registry.workers == expected
            text = path.read_text(encoding="utf-8")
            assert text.startswith(head), "the master's part of the file changed"
            # what is on disk is exactly what the model says, key for key
            on_disk = tomllib.loads(text).get("workers", {})
            assert on_disk == {name: model.worker_to_data(w) for name, w in expected.items()}
