"""bbenroll init's default location: this host's name and the port --listen uses (bug 2)."""

from __future__ import annotations

import socket
import tomllib

import pytest

from bbenroll.cli.init import usable_host
from bbenroll.endpoints import listen_port
from bbenroll.furl import parse_furl
from tests.helpers.cli import run_cli


@pytest.fixture
def fqdn(monkeypatch):
    """Set what this machine's FQDN lookup answers."""

    def set_fqdn(name: str) -> None:
        monkeypatch.setattr(socket, "getfqdn", lambda *args: name)

    return set_fqdn


def init(tmp_path, *args):
    return run_cli(["--registry", str(tmp_path / "workers.toml"), "init", *args])


@pytest.mark.parametrize(
    "listen, hint",
    [
        (None, "tcp:buildbot.example.org:9989"),  # the default --listen, tcp:9989
        ("tcp:12345", "tcp:buildbot.example.org:12345"),
        ("tcp:port=12346:interface=0.0.0.0", "tcp:buildbot.example.org:12346"),
        ("tcp6:12347", "tcp:buildbot.example.org:12347"),
        ("12348", "tcp:buildbot.example.org:12348"),
    ],
)
def test_default_location_uses_the_listen_port(tmp_path, fqdn, listen, hint):
    fqdn("buildbot.example.org")
    result = init(tmp_path, *(["--listen", listen] if listen else []))
    assert result.code == 0, result.err
    assert result.err.splitlines()[0] == (
        f"warning: no --location given; FURLs will point at {hint} (change [master].location "
        "in the registry before handing out FURLs if workers cannot resolve that name)"
    )
    registry = tmp_path / "workers.toml"
    assert tomllib.loads(registry.read_text())["master"]["location"] == [hint]
    furl = run_cli(["--registry", str(registry), "add", "w1"]).out.strip()
    assert parse_furl(furl).hints == (hint,)
    assert run_cli(["--registry", str(registry), "check"]).code == 0


@pytest.mark.parametrize("name", ["localhost", "localhost.localdomain", "LOCALHOST.", "127.0.1.1", "::1", ""])
def test_refuses_a_host_name_no_worker_can_use(tmp_path, fqdn, name):
    fqdn(name)
    result = init(tmp_path, "--listen", "tcp:12345")
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        f"error: this machine's name is {name!r}, which other machines cannot use to reach it; "
        "give --location tcp:HOST:12345 with a name or address workers can reach\n"
    )
    assert list(tmp_path.iterdir()) == []
    # with --location it works, whatever the machine is called
    assert init(tmp_path, "--listen", "tcp:12345", "--location", "tcp:10.0.0.5:12345").code == 0


@pytest.mark.parametrize("listen", ["unix:/run/bbenroll.sock", "garbage", "tcp:0", "tcp:99999"])
def test_refuses_without_location_when_listen_has_no_tcp_port(tmp_path, fqdn, listen):
    fqdn("buildbot.example.org")
    result = init(tmp_path, "--listen", listen)
    assert result.code == 1
    assert result.err == (
        f"error: --listen {listen!r} has no TCP port to put in FURLs; give --location tcp:HOST:PORT\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "listen, port",
    [("tcp:9989", 9989), ("tcp:port=80", 80), ("ssl:8443:privateKey=k.pem", None), ("65535", 65535),
     ("unix:/x", None), ("tcp:", None), ("tcp:65536", None), ("systemd:domain=INET:index=0", None)],
)
def test_listen_port(listen, port):
    assert listen_port(listen) == port


@pytest.mark.parametrize(
    "name, usable",
    [("buildbot.example.org", True), ("buildbox", True), ("10.0.0.5", True), ("localhost", False),
     ("localhost.example", False), ("::", False), ("127.0.0.1", False), ("ip6-localhost", False)],
)
def test_usable_host(name, usable):
    assert usable_host(name) is usable
