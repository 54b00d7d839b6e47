"""Hostile input to every parser: ASCII-only grammar, a reason for each refusal, nothing else raised.

Finding 5 of the hardening issue: ``str.isdigit()``, ``\\d`` and ``int()`` all
take other scripts' digits (``١٩٩٨٩``, Arabic-Indic), which Foolscap and
Twisted then cannot use; hints of other kinds were refused with an empty
reason; non-UTF-8 input was an internal error.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bbenroll.cli.worker import ARGV_WARNING, MAX_FURL_BYTES
from bbenroll.endpoints import check_listen_endpoint, check_loopback_endpoint, listen_port
from bbenroll.errors import BBEnrollError
from bbenroll.furl import check_hint, check_swissnum, check_tubid, is_ascii_decimal, parse_furl
from bbenroll.registry import store
from bbenroll.registry.model import check_worker_name
from bbenroll.times import parse_date, parse_duration, parse_when
from tests.helpers.buildbot import BIN, run
from tests.helpers.cli import run_cli

NOW = datetime(2026, 11, 29, 6, 0, 0, tzinfo=UTC)
TUBID, SWISSNUM = "a" * 32, "b" * 32
ARABIC_PORT = "\u0661\u0669\u0669\u0668\u0669"  # 19989 in Arabic-Indic digits: int() reads it
OTHER_DIGITS = ["\u0661", "\u06f1", "\u0967", "\uff11", "\U0001d7cf", "\u00b9"]  # what isdigit() takes


def furl_with(hint: str) -> str:
    return f"pb://{TUBID}@{hint}/{SWISSNUM}"


# --- ASCII digits only --------------------------------------------------------


@pytest.mark.parametrize("digit", OTHER_DIGITS)
def test_is_ascii_decimal_takes_0_to_9_only(digit: str) -> None:
    assert is_ascii_decimal("0123456789")
    assert not is_ascii_decimal(digit) and not is_ascii_decimal(f"99{digit}")
    assert not is_ascii_decimal("") and not is_ascii_decimal("9 ") and not is_ascii_decimal("9_9")


@pytest.mark.parametrize(
    "hint",
    [f"tcp:127.0.0.1:{ARABIC_PORT}", "tcp:\u0661\u0662\u0667.0.0.1:80", "tor:abc.onion:\u0668\u0660",
     "i2p:\u0430bc.i2p", "tcp:h\u200b.example.org:80"],
)
def test_hints_are_ascii_only(hint: str) -> None:
    with pytest.raises(BBEnrollError, match="printable ASCII only"):
        check_hint(hint)
    with pytest.raises(BBEnrollError, match="printable ASCII only"):
        parse_furl(furl_with(hint))


@pytest.mark.parametrize("endpoint", [f"tcp:{ARABIC_PORT}", ARABIC_PORT, f"tcp:port={ARABIC_PORT}"])
def test_listen_ports_are_ascii_only(endpoint: str) -> None:
    assert listen_port(endpoint) is None
    with pytest.raises(BBEnrollError, match="not a Twisted server endpoint"):
        check_listen_endpoint(endpoint)


def test_the_loopback_pb_port_is_ascii_only() -> None:
    assert check_loopback_endpoint("tcp:9990:interface=127.0.0.1")
    with pytest.raises(BBEnrollError, match=r"has no port 1-65535 \(digits 0-9\)"):
        check_loopback_endpoint(f"tcp:{ARABIC_PORT}:interface=127.0.0.1")


def test_a_huge_port_is_a_refusal_not_a_value_error() -> None:
    assert listen_port("tcp:" + "9" * 5000) is None  # int() of > 4300 digits raises ValueError


@pytest.mark.parametrize("text", ["\u0661\u0662h", "1\u0662h", "1\u2003h", "\u20031h"])
def test_durations_are_ascii_only(text: str) -> None:
    with pytest.raises(BBEnrollError, match="not understood"):
        parse_duration(text)
    with pytest.raises(BBEnrollError, match="not understood"):
        parse_when(text, NOW)


def test_init_refuses_a_location_with_other_digits(tmp_path) -> None:
    registry = tmp_path / "workers.toml"
    result = run_cli(["--registry", str(registry), "init", "--location", f"tcp:127.0.0.1:{ARABIC_PORT}"])
    assert result.code == 1
    assert result.err.startswith("error: --location: connection hint 'tcp:127.0.0.1:")
    assert "printable ASCII only" in result.err and result.err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# --- a reason for every refusal -------------------------------------------------

REFUSED_HINTS = ["tor:", "i2p:", "tor", ":", "tcp:", "tcp:h", "tcp:h:0", "tcp:h:65536", "tcp:h:x",
                 "host:9989", "tor:a b", "tor:a/b", "-:x", "tcp:[zz]:80", "tcp:h:1\n", "\n"]


@pytest.mark.parametrize("hint", REFUSED_HINTS)
def test_every_refused_hint_says_which_and_why(hint: str) -> None:
    with pytest.raises(BBEnrollError) as refused:
        check_hint(hint)
    message = str(refused.value)
    assert repr(hint) in message and len(message) > len(repr(hint)) + 20
    assert "\n" not in message


# --- random text to every parser: only the project's own errors ----------------

# text near the grammar: digits of several scripts, separators, prefixes
NEAR_GRAMMAR = st.lists(
    st.sampled_from([
        *"0123456789:.,/@[]%=- \t\n", *OTHER_DIGITS, "\u200b", "\u202e", "\u0430", "tcp:", "tor:",
        "pb://", TUBID, SWISSNUM, "127.0.0.1", "interface=", "port=", "smhdw", "T", "Z",
    ]),
    max_size=12,
).map("".join)
HOSTILE_TEXT = st.one_of(st.text(), NEAR_GRAMMAR)

PARSERS = {
    "parse_furl": parse_furl,
    "check_hint": check_hint,
    "check_tubid": check_tubid,
    "check_swissnum": check_swissnum,
    "parse_duration": parse_duration,
    "parse_date": parse_date,
    "parse_when": lambda text: parse_when(text, NOW),
    "check_worker_name": check_worker_name,
    "check_listen_endpoint": check_listen_endpoint,
    "check_loopback_endpoint": check_loopback_endpoint,
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_random_text_is_accepted_or_refused_with_a_project_error(name: str) -> None:
    parse = PARSERS[name]

    @settings(max_examples=400, deadline=None)
    @given(HOSTILE_TEXT)
    @example(f"tcp:127.0.0.1:{ARABIC_PORT}")
    @example("9" * 5000)
    @example("tcp:" + "9" * 5000)
    def check(text: str) -> None:
        try:
            parse(text)
        except BBEnrollError as e:
            assert str(e) and "\n" not in str(e).strip()

    check()


@settings(max_examples=500)
@example("tcp:1:\x80")  # found by this test: an option with a non-ASCII byte was taken
@example("1\xa0")  # and a trailing no-break space
@given(HOSTILE_TEXT)
def test_what_the_hint_and_port_parsers_accept_is_ascii(text: str) -> None:
    try:
        check_hint(text)
    except BBEnrollError:
        pass
    else:
        assert text.isascii()
    port = listen_port(text)
    assert port is None or (1 <= port <= 65535 and text.isascii())
    try:
        parse_duration(text)
    except BBEnrollError:
        pass
    else:
        assert text.strip(" \t\r\n").isascii()


# --- worker create: what it reads ------------------------------------------------


def test_non_utf8_on_stdin_is_a_one_line_error(tmp_path) -> None:
    result = run_cli(["worker", "create", str(tmp_path / "w"), "-"], input=b"pb://\xff\xfe\n")  # type: ignore[arg-type]
    message = "error: standard input: not UTF-8 text (byte 6); a FURL is ASCII text\n"
    assert (result.code, result.err) == (1, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("source", ["stdin", "file"])
def test_an_endless_furl_source_is_refused_after_a_bounded_read(tmp_path, source: str) -> None:
    endless = "pb://" + "a" * (MAX_FURL_BYTES + 10)  # as if /dev/zero or a log were given
    args = ["worker", "create", str(tmp_path / "w")]
    if source == "file":
        (tmp_path / "big").write_text(endless)
        result = run_cli([*args, "--furl-file", str(tmp_path / "big")])
    else:
        result = run_cli([*args, "-"], input=endless)
    assert result.code == 1 and f"more than {MAX_FURL_BYTES} bytes, which is not a FURL" in result.err
    assert not (tmp_path / "w").exists()


def test_a_furl_without_usable_hints_says_why(tmp_path) -> None:
    """Foolscap's NoLocationHintsError has no message: this was ``connection to the master failed: ``."""
    furl = furl_with("tor:abcdefghijklmnop.onion:9989,i2p:abc.i2p")
    proc = run(BIN / "bbenroll", "worker", "create", "--timeout", "5", tmp_path / "w", "-", check=False,
               input_text=furl, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == (
        "error: none of the FURL's connection hints can be used here: "
        "bbenroll connects over tcp:HOST:PORT hints only\n"
    )
    assert not (tmp_path / "w").exists()


def test_the_tunnel_says_why_too():
    """The same classification serves the tunnel's log line (it used to end in an empty reason)."""
    from foolscap.tokens import NoLocationHintsError
    from twisted.python.failure import Failure

    from bbenroll.tunnel.failures import FailureKind, classify

    why = classify(Failure(NoLocationHintsError()))
    assert why.kind is FailureKind.UNREACHABLE
    assert why.message.startswith("none of the FURL's connection hints can be used here")


def test_a_furl_on_the_command_line_is_warned_about(tmp_path) -> None:
    result = run_cli(["--json", "worker", "create", str(tmp_path / "w"), furl_with("tcp:h:1\u0661")])
    assert result.code == 1 and json.loads(result.out)["exit"] == 1  # stdout stays one JSON document
    warning, error = result.err.splitlines()
    assert warning == f"warning: {ARGV_WARNING}"
    assert "/proc/PID/cmdline" in warning and "'-'" in warning and "--furl-file" in warning
    assert error.startswith("error: connection hint")
    result = run_cli(["worker", "create", str(tmp_path / "w"), "-"], input=furl_with("tcp:h:1\u0661"))
    assert "warning" not in result.err


@pytest.mark.parametrize("args", [["-"], []])
def test_a_closed_stdin_is_a_one_line_error(tmp_path, args: list[str]) -> None:
    script = f'exec "$0" worker create "$1" {" ".join(args)} <&-'  # the shell closes stdin
    proc = subprocess.run(["/bin/sh", "-c", script, BIN / "bbenroll", tmp_path / "w"],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (
        1, "error: no FURL given (standard input is closed): use --furl-file\n"
    )
    assert not (tmp_path / "w").exists()


def test_a_registry_location_with_other_digits_is_a_problem(reg_path) -> None:
    text = reg_path.read_text().replace("tcp:buildbot.example.org:9989", f"tcp:127.0.0.1:{ARABIC_PORT}")
    reg_path.write_text(text)
    result = run_cli(["--registry", str(reg_path), "check"])
    assert result.code == 1
    assert "master.location[0]: connection hint 'tcp:127.0.0.1:" in result.err
    assert "printable ASCII only" in result.err


# --- random registry files ----------------------------------------------------------

TOML_PIECES = st.lists(
    st.sampled_from([
        "version = 2\n", "[master]\n", "[workers.w1]\n", '[workers."wа"]\n', "identity = 'master.pem'\n",
        f"tubid = '{TUBID}'\n", f"location = ['tcp:h:{ARABIC_PORT}']\n", "location = ['tor:']\n",
        "listen = 'tcp:9989'\n", f"swissnum = '{SWISSNUM}'\n", "password = 'p'\n",
        "created = 2026-01-01T00:00:00Z\n", "rotated = 1979-05-27\n", "expires = 'soon'\n", "tags = [1]\n",
        "[workers.w1.previous]\n", "until = 9999-12-31T23:59:59-23:59\n", "= \n", '"""', "\xff", "\n",
    ]),
    max_size=14,
).map("".join)


def test_random_registry_files_are_problems_not_crashes(tmp_path_factory) -> None:
    directory = tmp_path_factory.mktemp("random-registry")
    path = directory / "workers.toml"

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(TOML_PIECES, st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
    def check(text: str) -> None:
        path.write_bytes(text.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
        problems = store.check(path)
        assert all(isinstance(p, str) and p for p in problems)
        try:
            store.load(path)
        except BBEnrollError as e:
            assert str(e) and "\n" not in str(e)

    check()
