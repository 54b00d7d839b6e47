"""bbenroll rotate: names, --tag, --all, the default grace, --compromised; real registries."""

from __future__ import annotations

import json
import tomllib
from datetime import timedelta

import pytest


def workers(reg_path):
    return tomllib.loads(reg_path.read_text())["workers"]


@pytest.fixture
def fleet(cli, reg_path):
    for name, tags in (("a", ["linux"]), ("b", ["linux", "arm"]), ("c", ["mac"]), ("d", ["linux"])):
        assert cli("add", name, *(f"--tag={t}" for t in tags)).code == 0
    assert cli("revoke", "d").code == 0
    return workers(reg_path)


def test_default_grace_is_seven_days_and_the_password_stays(cli, reg_path, fleet):
    result = cli("rotate", "a")
    assert result.code == 0, result.err
    after = workers(reg_path)["a"]
    assert result.out == f"pb://{result.out.split('//')[1].split('/')[0]}/{after['swissnum']}\n"
    assert after["swissnum"] != fleet["a"]["swissnum"]
    assert after["password"] == fleet["a"]["password"]
    assert after["previous"]["swissnum"] == fleet["a"]["swissnum"]
    assert after["previous"]["until"] - after["rotated"] == timedelta(days=7)
    assert result.err == (
        "a running master pushes each connected worker its new FURL within seconds and retires the "
        "old one when the worker confirms; workers offline now are updated when they next connect, "
        "until 2026-12-06T06:00:00Z. Nothing to do on the workers ('bbenroll list' shows who has "
        "confirmed)\n"
    )
    assert "worker create" not in result.err  # a routine rotation needs no hands on the workers
    assert json.loads(cli("show", "a", "--json").out)["state"] == "rotating"


def test_tag_rotates_the_tagged_workers_that_are_not_revoked(cli, reg_path, fleet):
    result = cli("rotate", "--tag", "linux", "--grace", "1h")
    assert result.code == 0, result.err
    after = workers(reg_path)
    assert [line.split()[0] for line in result.out.splitlines()] == ["a", "b"]
    assert [line.split()[1].rsplit("/", 1)[1] for line in result.out.splitlines()] == [
        after["a"]["swissnum"], after["b"]["swissnum"]]
    assert after["c"] == fleet["c"] and after["d"] == fleet["d"]
    assert after["a"]["previous"]["until"] - after["a"]["rotated"] == timedelta(hours=1)
    result = cli("rotate", "--tag", "nobody-has-it")
    assert (result.code, result.out, result.err) == (0, "", "no workers to rotate\n")


def test_json_is_a_list_of_details(cli, fleet):
    result = cli("rotate", "--all", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert [d["name"] for d in document] == ["a", "b", "c"]
    assert all(d["furl"].startswith("pb://") and d["state"] == "rotating" for d in document)


def test_compromised_refuses_the_old_secret_and_changes_the_password(cli, reg_path, fleet):
    result = cli("rotate", "a", "b", "--compromised")
    assert result.code == 0, result.err
    after = workers(reg_path)
    for name in ("a", "b"):
        assert "previous" not in after[name]
        assert after[name]["password"] != fleet[name]["password"]
        assert after[name]["swissnum"] != fleet[name]["swissnum"]
    assert after["c"] == fleet["c"]
    assert "bbenroll worker create --force BASEDIR NEWFURL" in result.err
    assert "PB password changed" in result.err
    assert json.loads(cli("show", "a", "--json").out)["state"] == "active"


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "give worker names, --tag T or --all: exactly one of them"),
        (("a", "--all"), "give worker names, --tag T or --all: exactly one of them"),
        (("a", "--tag", "linux"), "give worker names, --tag T or --all: exactly one of them"),
        (("--tag", "linux", "--all"), "give worker names, --tag T or --all: exactly one of them"),
        (("--all", "--compromised"), "--compromised takes worker names, not --tag or --all"),
        (("--tag", "linux", "--compromised"), "--compromised takes worker names, not --tag or --all"),
        (("a", "--compromised", "--grace", "1h"), "--compromised refuses the old secret at once: no --grace"),
    ],
)
def test_usage_errors_leave_the_registry_alone(cli, reg_path, fleet, args, message):
    before = reg_path.read_bytes()
    result = cli("rotate", *args)
    assert result.code == 2
    assert result.err == f"error: {message} (see 'bbenroll rotate --help')\n"
    assert result.out == ""
    assert reg_path.read_bytes() == before


def test_a_revoked_worker_named_is_an_error(cli, reg_path, fleet):
    before = reg_path.read_bytes()
    for extra in ((), ("--compromised",)):
        result = cli("rotate", "a", "d", *extra)
        assert result.code == 1
        assert result.err == "error: worker 'd' is revoked; use 'bbenroll restore' instead\n"
        assert reg_path.read_bytes() == before  # all or nothing: 'a' is not rotated either
