"""master.cfg hook pieces that need no running master."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
from twisted.internet import defer, reactor
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    serverFromString,
)
from twisted.internet.testing import MemoryReactor

from bbenroll.endpoints import (
    DEFAULT_BACKLOG,
    check_listen_endpoint,
    check_loopback_endpoint,
    endpoint_parts,
    tcp_server,
    with_backlog,
)
from bbenroll.errors import BBEnrollError
from bbenroll.master.hook import check_port_free, pb_server_factory, when_buildbot_ready
from bbenroll.master.tub import ListenError
from bbenroll.tunnel.master_side import pb_client_endpoint


@pytest.mark.parametrize("text", [
    "tcp:9990:interface=127.0.0.1",
    "tcp:port=9990:interface=127.0.0.2",
    r"tcp6:9990:interface=\:\:1",
    "tcp:9990:interface=localhost",
    "tcp:interface=127.0.0.1:port=9990",
    "unix:/var/run/buildbot-pb.sock",
])
def test_loopback_pb_ports_are_accepted(text):
    assert check_loopback_endpoint(text) == text


@pytest.mark.parametrize("text, message", [
    ("9990", "listens on every interface"),
    ("tcp:9990", "listens on every interface"),
    ("tcp:9990:interface=0.0.0.0", "listens on 0.0.0.0, which is not a loopback address"),
    (r"tcp6:9990:interface=\:\:", "listens on ::, which is not a loopback address"),
    ("tcp:9990:interface=buildbot.example.org", "not a loopback address"),
    ("ssl:9990:interface=127.0.0.1", "TLS on the loopback PB port is not needed"),
    ("systemd:domain=INET:index=0", "use 'tcp:PORT:interface=127.0.0.1'"),
    ("tcp:interface=127.0.0.1", "has no port 1-65535"),
    ("tcp:99999:interface=127.0.0.1", "has no port 1-65535"),
])
def test_other_pb_ports_are_refused(text, message):
    with pytest.raises(BBEnrollError, match=message):
        check_loopback_endpoint(text)


def test_endpoint_parts_unescape():
    assert endpoint_parts(r"tcp6:9990:interface=\:\:1") == ["tcp6", "9990", "interface=::1"]
    assert endpoint_parts(r"unix:/a\\b") == ["unix", r"/a\b"]


def test_pb_client_endpoint_matches_the_server_endpoint():
    reactor = MemoryReactor()
    e = pb_client_endpoint(reactor, "tcp:9990:interface=127.0.0.1")
    assert isinstance(e, TCP4ClientEndpoint) and (e._host, e._port) == ("127.0.0.1", 9990)
    e = pb_client_endpoint(reactor, r"tcp6:port=9991:interface=\:\:1")
    assert isinstance(e, TCP6ClientEndpoint) and (e._host, e._port) == ("::1", 9991)
    e = pb_client_endpoint(reactor, "unix:/tmp/pb.sock")
    assert isinstance(e, UNIXClientEndpoint) and e._path == "/tmp/pb.sock"


def run_as_master_cfg(code: str, namespace: dict) -> dict:
    """Execute ``code`` the way Buildbot executes master.cfg: with ``namespace`` as its globals."""
    exec(code, namespace)  # noqa: S102 - exactly what Buildbot's config loader does
    return namespace


class TestRegistryLocation:
    """Enrollment("workers.toml"): explicit basedir, then master.cfg's `basedir` global, then the cwd."""

    def test_an_explicit_basedir_wins(self, reg_path, tmp_path, monkeypatch):
        from bbenroll.master import Enrollment

        monkeypatch.chdir(tmp_path.parent)
        namespace = {"Enrollment": Enrollment, "basedir": "/nonexistent", "where": str(reg_path.parent)}
        run_as_master_cfg("e = Enrollment('workers.toml', basedir=where)", namespace)
        assert namespace["e"].path == reg_path

    def test_master_cfg_globals_are_the_fallback(self, reg_path, tmp_path, monkeypatch):
        from bbenroll.master import Enrollment

        monkeypatch.chdir(tmp_path.parent)  # checkconfig may run from anywhere
        namespace = {"Enrollment": Enrollment, "basedir": str(reg_path.parent)}
        assert run_as_master_cfg("e = Enrollment('workers.toml')", namespace)["e"].path == reg_path

    def test_without_either_the_cwd(self, reg_path, monkeypatch):
        from bbenroll.master import Enrollment

        monkeypatch.chdir(reg_path.parent)
        namespace = {"Enrollment": Enrollment, "basedir": 42}  # not a path: ignored
        assert run_as_master_cfg("e = Enrollment('workers.toml')", namespace)["e"].path == reg_path

    def test_an_absolute_path_is_taken_as_is(self, reg_path):
        from bbenroll.master import Enrollment

        assert Enrollment(str(reg_path), basedir="/nonexistent").path == reg_path

    def test_a_wrong_basedir_is_a_config_error_naming_the_file(self, tmp_path):
        from buildbot.config.errors import ConfigErrors

        from bbenroll.master import Enrollment

        with pytest.raises(ConfigErrors) as info:
            Enrollment("workers.toml", basedir=str(tmp_path / "elsewhere"))
        assert str(tmp_path / "elsewhere" / "workers.toml") in info.value.errors[0]


@pytest.mark.parametrize(
    "listen", ["tcp:9989", "tcp:port=9989:interface=0.0.0.0", "9989", "unix:/run/bb.sock"]
)
def test_listen_endpoints_are_accepted(listen):
    assert check_listen_endpoint(listen) == listen


@pytest.mark.parametrize(
    "listen, message",
    [
        ("ssl:9989:privateKey=k.pem", "Foolscap makes its own TLS connection"),
        ("tcp:65536", "is not a Twisted server endpoint"),
        ("tcp:", "is not a Twisted server endpoint"),
    ],
)
def test_other_listen_endpoints_are_refused(listen, message):
    with pytest.raises(BBEnrollError, match=message):
        check_listen_endpoint(listen)


@pytest.mark.parametrize(
    "text, server",
    [
        ("tcp:9989", ("tcp", 9989, None)),
        ("9989", ("tcp", 9989, None)),
        ("tcp:interface=0.0.0.0:port=9989", ("tcp", 9989, "0.0.0.0")),  # noqa: S104
        ("tcp:9989:interface=127.0.0.1:backlog=50", ("tcp", 9989, "127.0.0.1")),
        ("tcp6:port=9990:interface=\\:\\:1", ("tcp6", 9990, "::1")),
        ("tcp:\u0661\u0669\u0669\u0668\u0669", ("tcp", None, None)),  # Arabic-Indic digits: no port
        ("tcp:70000", ("tcp", None, None)),
        ("unix:/run/pb.sock", None),
        ("", None),
    ],
)
def test_tcp_server_reads_the_port_as_twisted_does(text, server):
    assert tcp_server(text) == server


@pytest.mark.parametrize(
    "text, with_it",
    [
        ("tcp:9989", "tcp:9989:backlog=1024"),
        ("9989", "tcp:9989:backlog=1024"),
        ("tcp:9990:interface=127.0.0.1", "tcp:9990:interface=127.0.0.1:backlog=1024"),
        ("tcp:9989:backlog=50", "tcp:9989:backlog=50"),  # an explicit backlog is the admin's choice
        ("tcp6:port=9990:interface=\\:\\:1", "tcp6:port=9990:interface=\\:\\:1:backlog=1024"),
        ("unix:/run/pb.sock", "unix:/run/pb.sock"),
        ("tcp:garbage", "tcp:garbage"),  # not valid: left for the checks to name as written
    ],
)
def test_a_tcp_endpoint_without_a_backlog_gets_the_default(text, with_it):
    assert with_backlog(text) == with_it
    assert with_it == text or f"backlog={DEFAULT_BACKLOG}" in with_it
    if with_it.startswith("tcp") and tcp_server(with_it)[1] is not None:  # Twisted reads it
        assert serverFromString(reactor, with_it)._backlog == (50 if "backlog=50" in with_it else 1024)


def test_a_taken_foolscap_port_is_found_before_listening():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen = f"tcp:{port}:interface=127.0.0.1"
        with pytest.raises(ListenError, match=f"cannot listen on {listen}: Address already in use"):
            check_port_free(listen)
    check_port_free(f"tcp:{port}:interface=127.0.0.1")  # free again
    check_port_free("unix:/nonexistent/dir/sock")  # other kinds are checked when listening


def test_the_pb_factory_is_the_dispatchers_for_the_configured_port():
    factory = object()
    listening = SimpleNamespace(port=object(), serverFactory=factory)
    master = SimpleNamespace(
        pbmanager=SimpleNamespace(dispatchers={"tcp:9990:interface=127.0.0.1:backlog=1024": listening}),
        config=SimpleNamespace(protocols={"pb": {"port": "tcp:9990:interface=127.0.0.1:backlog=1024"}}),
    )
    assert pb_server_factory(master) is factory
    listening.port = None  # registered but not listening (stopping): the TCP fallback
    assert pb_server_factory(master) is None
    assert pb_server_factory(SimpleNamespace()) is None  # no pbmanager: a stand-in master
    master.pbmanager.dispatchers = {}
    assert pb_server_factory(master) is None


def test_the_service_starts_once_buildbots_init_lock_is_free():
    lock = defer.DeferredLock()
    lock.acquire()  # Buildbot's startup holds it
    ready = []
    when_buildbot_ready(SimpleNamespace(initLock=lock)).addCallback(ready.append)
    assert ready == []
    lock.release()
    assert ready == [None] and not lock.locked
    when_buildbot_ready(SimpleNamespace()).addCallback(ready.append)  # a stand-in: now
    assert ready == [None, None]
