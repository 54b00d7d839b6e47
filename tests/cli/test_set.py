"""bbenroll set: expiry, tags and note change; secrets never do."""

from __future__ import annotations

import json
import tomllib

import pytest

SECRETS = ("swissnum", "password", "rotated", "created")


def workers(reg_path):
    return tomllib.loads(reg_path.read_text())["workers"]


@pytest.fixture
def two(cli, reg_path):
    assert cli("add", "a", "--tag", "linux", "--tag", "old", "--note", "rack 1", "--expires", "30d").code == 0
    assert cli("add", "b").code == 0
    assert cli("rotate", "b").code == 0  # with a previous secret, which must stay too
    return workers(reg_path)


def test_set_changes_settings_and_keeps_the_secrets(cli, reg_path, two):
    result = cli("set", "a", "b", "--expires", "2027-06-30", "--tag", "arm", "--untag", "old",
                 "--note", "moved")
    assert result.code == 0, result.err
    assert result.out == ""
    assert result.err == "changed 'a', 'b'; FURLs unchanged\n"
    after = workers(reg_path)
    for name in ("a", "b"):
        assert {k: after[name][k] for k in SECRETS} == {k: two[name][k] for k in SECRETS}
        assert after[name]["expires"].isoformat() == "2027-06-30T00:00:00+00:00"
        assert after[name]["note"] == "moved"
    assert after["b"]["previous"] == two["b"]["previous"]
    assert after["a"]["tags"] == ["linux", "arm"]
    assert after["b"]["tags"] == ["arm"]


def test_never_and_empty_note_clear(cli, reg_path, two):
    assert cli("set", "a", "--expires", "never", "--note", "").code == 0
    after = workers(reg_path)["a"]
    assert "expires" not in after and "note" not in after
    assert after["tags"] == ["linux", "old"]  # not named: untouched
    assert {k: after[k] for k in SECRETS} == {k: two["a"][k] for k in SECRETS}


def test_json_is_the_summaries(cli, two):
    result = cli("set", "a", "--untag", "linux", "--json")
    assert result.code == 0, result.err
    (summary,) = json.loads(result.out)
    assert summary["name"] == "a" and summary["tags"] == ["old"]
    assert "swissnum" not in result.out and two["a"]["swissnum"] not in result.out


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("a",), 2, "error: nothing to change: give --expires, --tag, --untag, --note or --rotate-every "
                    "(see 'bbenroll set --help')"),
        (("a", "--rotate-every", "0s"), 2, "error: Invalid value for '--rotate-every': duration '0s' "
                                            "must be longer than zero (see 'bbenroll set --help')"),
        (("a", "--rotate-every", "soon"), 2, None),
        (("a", "--expires", "2020-01-01"), 1, "error: expiry 2020-01-01T00:00:00Z is in the past"),
        (("a", "nope", "--note", "x"), 1, "error: {p}: no worker named 'nope'"),
        (("a", "--tag", "x", "--untag", "x"), 2,
         "error: --tag and --untag both name 'x' (see 'bbenroll set --help')"),
    ],
)
def test_errors_leave_the_file_untouched(cli, reg_path, two, args, code, message):
    before = reg_path.read_bytes()
    result = cli("set", *args)
    assert result.code == code
    if message is not None:
        assert result.err == message.format(p=reg_path) + "\n"
    else:
        assert result.err.startswith("error: Invalid value for '--rotate-every'")
        assert result.err.count("\n") == 1
    assert reg_path.read_bytes() == before


def test_an_empty_tag_is_a_usage_error(cli, reg_path, two):
    before = reg_path.read_bytes()
    result = cli("set", "a", "--tag", "")
    assert result.code == 2 and result.err.count("\n") == 1 and "a tag may not be empty" in result.err
    assert reg_path.read_bytes() == before


def test_rotate_every_sets_never_and_default_without_touching_secrets(cli, reg_path, two):
    assert cli("set", "a", "--rotate-every", "30d").code == 0
    assert workers(reg_path)["a"]["rotate_every"] == "30d"
    assert cli("set", "a", "--rotate-every", "never").code == 0
    assert workers(reg_path)["a"]["rotate_every"] == "never"
    assert cli("set", "a", "--rotate-every", "default").code == 0  # follow [master] rotate_every again
    after = workers(reg_path)["a"]
    assert "rotate_every" not in after
    assert {k: after[k] for k in SECRETS} == {k: two["a"][k] for k in SECRETS}
