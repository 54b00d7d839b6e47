"""The PB login check on the master's side of a tunnel, on bytes made by Twisted's real PB client.

The client is Twisted's own ``PBClientFactory`` (what buildbot-worker's
``AutoLoginPBFactory`` builds on) on a StringTransport: what it writes is what a
worker sends through its tunnel, byte for byte.
"""

from __future__ import annotations

import pytest
from twisted.spread import banana

from bbenroll.tunnel.pblogin import MAX_LOGIN_BYTES, LoginCheck, Verdict
from tests.helpers.pb import login_bytes


@pytest.mark.parametrize("name", ["w1", b"w1"])
def test_a_login_as_the_tunnels_worker_is_allowed(name):
    check = LoginCheck("w1")
    assert check.feed(login_bytes(name)).verdict is Verdict.ALLOWED
    # and from then on nothing more is read
    assert check.feed(b"\xff" * 100).verdict is Verdict.ALLOWED


def test_a_login_for_another_worker_is_refused_with_its_name():
    outcome = LoginCheck("w1").feed(login_bytes("w2"))
    assert outcome.verdict is Verdict.REFUSED
    assert outcome.name == "w2"
    assert "another worker" in outcome.reason


def test_a_non_ascii_name_is_compared_exactly():
    assert LoginCheck("wörker").feed(login_bytes("wörker")).verdict is Verdict.ALLOWED
    assert LoginCheck("worker").feed(login_bytes("wörker")).name == "wörker"


def test_the_login_may_arrive_one_byte_at_a_time():
    check = LoginCheck("w1")
    data = login_bytes("w1")
    verdicts = [check.feed(data[i : i + 1]).verdict for i in range(len(data))]
    assert verdicts[:-1] == [Verdict.PENDING] * (len(data) - 1)
    assert verdicts[-1] is Verdict.ALLOWED


def test_the_check_stops_at_the_login_even_if_more_follows_in_the_same_chunk():
    assert LoginCheck("w1").feed(login_bytes("w1") + b"\x00garbage").verdict is Verdict.ALLOWED


def encode_pb(*expressions) -> bytes:
    """Banana in the pb dialect, as a client would send it after choosing it."""
    encoder = banana.Banana(isClient=1)
    encoder.connectionMade()
    encoder._selectDialect(b"pb")
    out = []
    for expression in expressions:
        encoder._encode(expression, out.append)
    return banana.encode(b"pb") + b"".join(out)


@pytest.mark.parametrize(
    "expressions",
    [
        ([b"message", 1, b"root", b"loginAnonymous", 1, [b"tuple"], [b"dictionary"]],),
        ([b"message", 1, 7, b"login", 1, [b"tuple", b"w1"], [b"dictionary"]],),
        ([b"message", 1, b"root", b"login", 1, [b"tuple", 5], [b"dictionary"]],),
        ([b"message", 1, b"root", b"login", 1, [b"tuple", b"w1", b"x"], [b"dictionary"]],),
        ([b"message", 1, b"root", b"login", 1, [b"tuple", b"\xff"], [b"dictionary"]],),
        ([b"version", 6], [b"version", 6]),
        ([b"decref", 1],),
        (b"hello",),
    ],
)
def test_anything_but_a_login_first_is_refused(expressions):
    outcome = LoginCheck("w1").feed(encode_pb(*expressions))
    assert outcome.verdict is Verdict.REFUSED
    assert outcome.reason


def test_an_unknown_dialect_is_refused():
    assert LoginCheck("w1").feed(banana.encode(b"json")).verdict is Verdict.REFUSED


def test_bytes_that_are_not_banana_are_refused():
    # text is all bytes below 0x80: to Banana one long number prefix, past its limit
    request = b"GET / HTTP/1.1\r\nHost: master\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n"
    assert LoginCheck("w1").feed(request).verdict is Verdict.REFUSED
    assert LoginCheck("w1").feed(b"\x01\x8f").verdict is Verdict.REFUSED  # no such type byte


def test_a_long_prefix_is_refused():
    assert LoginCheck("w1").feed(b"\x01" * 100 + b"\x80").verdict is Verdict.REFUSED


def test_no_login_within_the_bound_is_refused():
    # a string announced as 1 MB long: Banana would wait for all of it
    check = LoginCheck("w1")
    data = banana.encode(b"pb") + banana.encode([b"version", 6])
    header = b"\x00\x00\x04\x82"  # a 1 MiB string's length prefix (base 128), type STRING
    assert check.feed(data + header).verdict is Verdict.PENDING
    outcome = check.feed(b"x" * MAX_LOGIN_BYTES)
    assert outcome.verdict is Verdict.REFUSED
    assert str(MAX_LOGIN_BYTES) in outcome.reason
