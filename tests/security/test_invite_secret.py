"""The invite's secret is shown once and never written anywhere (issue 9 test 3): not in
workers.toml, the audit log, the master's log, the worker's output or basedir, nor on the wire
in clear (a recording proxy between `worker create` and the master)."""

from __future__ import annotations

import pytest

from bbenroll.furl import parse_furl
from bbenroll.registry import store
from tests.cli.test_worker_invite import create, master  # noqa: F401 - the fixture
from tests.helpers.invites_master import make_invite, secret_of
from tests.helpers.netproxy import FaultyProxy

pytestmark = pytest.mark.network


def test_the_invite_secret_is_nowhere_but_in_the_invite(master, tmp_path):  # noqa: F811
    invite_id, invite = make_invite(master, prefix="sec", uses=2)
    secret = secret_of(invite)
    host, port = parse_furl(invite).hints[0].split(":")[1:3]
    with FaultyProxy(host, int(port), record=True) as proxy:
        through_proxy = invite.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
        proc = create(tmp_path / "w1", "-v", "-", input_text=through_proxy)
        wire = proxy.recorded()
    assert proc.returncode == 0, proc.stderr
    assert len(wire) > 1000  # the whole redemption went through the proxy
    refused = create(tmp_path / "w2", "-", input_text=invite.replace(secret, "x" * len(secret)))
    assert refused.returncode == 1
    registry = store.load(master).registry
    (name,) = registry.workers
    master_log = (master.parent / "master.log").read_text()
    assert invite_id in master_log and name in master_log  # the log names the invite by its ID
    places = {
        "workers.toml": master.read_text(),
        "audit log": (master.parent / "workers.audit.jsonl").read_text(),
        "master log": master_log,
        "worker output": proc.stdout + proc.stderr + refused.stdout + refused.stderr,
        **{f"basedir {p.name}": p.read_bytes().decode("latin-1")
           for p in (tmp_path / "w1").rglob("*") if p.is_file()},
    }
    for where, text in places.items():
        assert secret not in text, where
        assert secret[:16] not in text, where  # not even a prefix of it
    assert secret.encode() not in wire and secret[:16].encode() not in wire
    assert registry.invites[invite_id].hash.startswith("sha256:")
