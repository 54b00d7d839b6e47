"""The identity and FURLs that bbenroll mints work with real Foolscap, on 127.0.0.1."""

from __future__ import annotations

import socket
import tomllib

import pytest
import pytest_twisted
from foolscap.api import Referenceable, Tub

from bbenroll.registry import store

pytestmark = pytest.mark.network


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Echo(Referenceable):
    def remote_hello(self, who: str) -> str:
        return f"hello {who}"


@pytest_twisted.inlineCallbacks
def test_real_tub_from_identity_serves_furl_made_by_add(tmp_path, cli, reg_path):
    port = free_port()
    text = reg_path.read_text().replace(
        'location = ["tcp:buildbot.example.org:9989"]', f'location = ["tcp:127.0.0.1:{port}"]'
    )
    reg_path.write_text(text)
    furl = cli("add", "worker1").out.strip()
    loaded = store.load(reg_path)
    pem = loaded.identity_path.read_bytes()

    server = Tub(certData=pem)
    assert server.getTubID() == loaded.registry.master.tubid == tomllib.loads(text)["master"]["tubid"]
    server.listenOn(f"tcp:{port}:interface=127.0.0.1")
    server.setLocation(f"tcp:127.0.0.1:{port}")
    server.startService()
    swissnum = loaded.registry.workers["worker1"].swissnum
    assert server.registerReference(Echo(), name=swissnum) == furl
    client = Tub()
    client.startService()
    try:
        ref = yield client.getReference(furl)
        answer = yield ref.callRemote("hello", "worker1")
        assert answer == "hello worker1"
    finally:
        yield client.stopService()
        yield server.stopService()


def test_tubid_computed_like_foolscap(reg_path):
    loaded = store.load(reg_path)
    assert Tub(certData=loaded.identity_path.read_bytes()).getTubID() == loaded.registry.master.tubid
