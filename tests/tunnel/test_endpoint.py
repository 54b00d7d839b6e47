"""The endpoint buildbot-worker uses and the process's tunnel table, deterministically.

A MemoryReactorClock stands in for the reactor (time, shutdown triggers); the
tunnels are fakes that record what the endpoint asks of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import defer, error
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from bbenroll.tunnel import core, endpoint, worker_side
from bbenroll.tunnel.endpoint import TunnelEndpoint, TunnelTable, endpoint_from_string
from bbenroll.tunnel.furlfile import FurlFile

FURL = "pb://" + "a" * 32 + "@tcp:127.0.0.1:9/" + "b" * 32
OTHER_FURL = "pb://" + "c" * 32 + "@tcp:127.0.0.1:10/" + "d" * 32
PATH = Path("/worker/bbenroll.furl")
CURRENT = FurlFile(FURL)


class FakeTunnel:
    """What TunnelTable makes and TunnelEndpoint uses of a WorkerTunnel."""

    def __init__(self, furl, *, reactor, resume_deadline, on_stopped, furlfile, serial, key=None):
        self.furl, self.reactor, self.resume_deadline = furl, reactor, resume_deadline
        self.key = key
        self.furlfile, self.serial = furlfile, serial
        self.on_stopped = on_stopped
        self.stopped = False
        self.started = False
        self.address = "tunnel-address"
        self.ready: defer.Deferred = defer.Deferred()
        self.streams = []

    def start(self):
        self.started = True

    def shutdown(self):
        return defer.succeed(None)

    def stop(self):
        self.stopped = True
        self.on_stopped(self)

    def holds(self, furl):
        return furl == self.furl

    def when_ready(self, timeout):
        self.timeout = timeout
        return self.ready

    def open_stream(self, protocol, factory):
        self.streams.append((protocol, factory))


class CountingFactory(Factory):
    protocol = Protocol

    def __init__(self):
        self.starts = self.stops = 0

    def doStart(self):
        self.starts += 1

    def doStop(self):
        self.stops += 1


@pytest.fixture
def furl_file(tmp_path):
    path = tmp_path / "bbenroll.furl"
    path.write_text(FURL + "\n")
    return path


def test_one_tunnel_per_furl_file_and_deadline_until_it_stops():
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=FakeTunnel)
    first = table.get(PATH, CURRENT, reactor, 600)
    assert table.get(PATH, CURRENT, reactor, 600) is first and first.started
    assert table.get(PATH, CURRENT, reactor, 60) is not first  # another deadline: another session
    assert len(table) == 2
    # one trigger for the whole table (tunnels that come and go add none)
    before_shutdown = [trigger[0] for trigger in reactor.triggers["before"]["shutdown"]]
    assert before_shutdown == [table.shutdown]
    first.stop()
    assert len(table) == 1
    assert table.get(PATH, CURRENT, reactor, 600) is not first  # a later connect starts afresh
    assert [trigger[0] for trigger in reactor.triggers["before"]["shutdown"]] == [table.shutdown]
    assert reactor.getDelayedCalls() == []


def test_a_tunnel_that_moved_to_a_pushed_furl_keeps_serving_its_file():
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=FakeTunnel)
    first = table.get(PATH, CURRENT, reactor, 600)
    assert (first.furlfile, first.serial) == (PATH, 0)
    first.furl = OTHER_FURL  # what an update does: the file and the tunnel now hold the new FURL
    assert table.get(PATH, FurlFile(OTHER_FURL, 3), reactor, 600) is first and not first.stopped
    assert len(table) == 1


def test_a_furl_replaced_from_outside_restarts_an_idle_tunnel_only():
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=FakeTunnel)
    busy = table.get(PATH, CURRENT, reactor, 600)
    busy.streams.append(("protocol", "factory"))
    # `worker create --force` wrote another FURL: buildbot-worker's live connection stays on the tunnel
    assert table.get(PATH, FurlFile(OTHER_FURL), reactor, 600) is busy and not busy.stopped
    busy.streams.clear()
    fresh = table.get(PATH, FurlFile(OTHER_FURL, 2), reactor, 600)
    assert busy.stopped and fresh is not busy
    assert (fresh.furl, fresh.serial, fresh.started) == (OTHER_FURL, 2, True)
    assert len(table) == 1


def test_shutdown_closes_every_tunnel_and_starts_no_new_one():
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=FakeTunnel)
    tunnels = [table.get(PATH, CURRENT, reactor, 600), table.get(PATH, CURRENT, reactor, 60)]
    closed = []
    for tunnel in tunnels:
        tunnel.shutdown = lambda tunnel=tunnel: closed.append(tunnel) or defer.succeed(None)
    d = table.shutdown()
    assert closed == tunnels and d.called
    with pytest.raises(error.ConnectError, match="shutting down"):
        table.get(PATH, CURRENT, reactor, 30)
    assert reactor.getDelayedCalls() == []


def test_connect_opens_a_stream_once_the_tunnel_is_ready(furl_file):
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=FakeTunnel)
    ep = endpoint_from_string(table, reactor, furlfile=str(furl_file), resume="42", timeout="7")
    assert (ep.furlfile, ep.resume, ep.timeout) == (furl_file, 42.0, 7.0)
    factory = CountingFactory()
    d = ep.connect(factory)
    (tunnel,) = [table.get(furl_file, CURRENT, reactor, 42.0)]
    assert tunnel.timeout == 7.0 and not d.called
    tunnel.ready.callback(tunnel)
    protocol = d.result
    assert tunnel.streams == [(protocol, factory)]
    assert (factory.starts, factory.stops) == (1, 0)  # doStop comes when the stream ends
    assert reactor.getDelayedCalls() == []


def test_connect_without_a_readable_furl_fails_and_stops_the_factory(tmp_path):
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=FakeTunnel)
    factory = CountingFactory()
    failures = []
    ep = TunnelEndpoint(reactor, str(tmp_path / "missing.furl"), tunnels=table)
    ep.connect(factory).addErrback(failures.append)
    (failure,) = failures
    assert failure.check(error.ConnectError)
    assert "cannot read FURL file" in failure.getErrorMessage()
    (tmp_path / "bad.furl").write_text("pb://not-a-furl\n")
    bad = TunnelEndpoint(reactor, str(tmp_path / "bad.furl"), tunnels=table)
    bad.connect(factory).addErrback(failures.append)
    assert failures[1].check(error.ConnectError)
    assert str(tmp_path / "bad.furl") in failures[1].getErrorMessage()
    assert (factory.starts, factory.stops) == (2, 2) and len(table) == 0
    assert reactor.getDelayedCalls() == []


def test_a_failed_wait_fails_the_connect(furl_file):
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=FakeTunnel)
    factory = CountingFactory()
    failures = []
    endpoint_from_string(table, reactor, str(furl_file)).connect(factory).addErrback(failures.append)
    table.get(furl_file, CURRENT, reactor, core.RESUME_DEADLINE_DEFAULT).ready.errback(
        error.ConnectError(string="the master did not answer in time")
    )
    assert failures[0].check(error.ConnectError) and (factory.starts, factory.stops) == (1, 1)
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        ((), {}, "needs furlfile=PATH"),
        ((), {"furlfile": "x", "colour": "red"}, "unknown bbenroll endpoint options: colour"),
    ],
)
def test_bad_endpoint_strings(args, kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        endpoint_from_string(TunnelTable(), MemoryReactorClock(), *args, **kwargs)


def test_the_plugin_parser_owns_one_table_and_the_historical_target_shares_it(furl_file):
    from twisted.plugins.bbenroll_endpoints import bbenroll_endpoint_parser

    reactor = MemoryReactorClock()
    new = bbenroll_endpoint_parser.parseStreamClient(reactor, furlfile=str(furl_file))
    old = worker_side.endpoint_from_string(reactor, furlfile=str(furl_file))
    assert isinstance(old, endpoint.TunnelEndpoint)
    assert isinstance(bbenroll_endpoint_parser.tunnels, TunnelTable)
    assert new.tunnels is old.tunnels is bbenroll_endpoint_parser.tunnels


def test_connect_reads_the_serial_and_skips_comments(tmp_path):
    path = tmp_path / "bbenroll.furl"
    path.write_text(f"# pushed by the master\n# serial 4\n{FURL}\n")
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=FakeTunnel)
    TunnelEndpoint(reactor, str(path), tunnels=table).connect(CountingFactory())
    (tunnel,) = table._tunnels.values()
    assert (tunnel.furl, tunnel.serial, tunnel.furlfile) == (FURL, 4, path)
    path.write_text(f"# serial x\n{FURL}\n")
    failures = []
    TunnelEndpoint(reactor, str(path), tunnels=table).connect(CountingFactory()).addErrback(failures.append)
    assert failures[0].check(error.ConnectError) and "malformed serial line" in failures[0].getErrorMessage()
    assert reactor.getDelayedCalls() == []
