"""A compromised rotation drops the live connection within 2 s of clock time; a normal one does not."""

from __future__ import annotations

import tomllib

from bbenroll.master import gate
from bbenroll.master.reloader import POLL_INTERVAL
from bbenroll.registry import model, store

WITHIN = 2.0  # seconds of clock time the issue allows


def rotate(world, name: str, *, compromised: bool) -> None:
    """What 'bbenroll rotate' writes, through the same lock and edit path, at the world's time."""
    with store.edit(world.path) as editor:
        grace = None if compromised else model.DEFAULT_GRACE
        editor.update(model.rotate(editor.worker(name), world.now(), grace, compromised=compromised))


def test_a_compromised_rotation_drops_the_connection_within_two_seconds(world):
    old = world.add("w1")
    bystander = world.add("w2")
    world.start()
    link, _ref = world.accepted(old)
    other, _ = world.accepted(bystander)
    world.advance(POLL_INTERVAL)
    assert link.connected
    rotate(world, "w1", compromised=True)
    assert POLL_INTERVAL <= WITHIN
    world.advance(WITHIN)
    assert not link.connected
    assert other.connected
    assert world.connect().refusal(old) == gate.UNKNOWN  # no previous: the old secret is simply gone
    new = tomllib.loads(world.path.read_text())["workers"]["w1"]["swissnum"]
    assert world.call(world.connect().reference(new), "get_worker_config")["name"] == "w1"
    (dropped,) = world.logged("dropping worker {worker!r}")
    assert (dropped["worker"], dropped["why"]) == ("w1", gate.UNKNOWN)
    world.finish()


def test_a_normal_rotation_keeps_the_connection(world):
    old = world.add("w1")
    world.start()
    link, ref = world.accepted(old)
    password = tomllib.loads(world.path.read_text())["workers"]["w1"]["password"]
    rotate(world, "w1", compromised=False)
    world.advance(10 * POLL_INTERVAL)
    assert link.connected
    assert world.call(ref, "get_worker_config")["password"] == password  # unchanged: no worker create
    assert world.logged("dropping worker {worker!r}") == []
    new = tomllib.loads(world.path.read_text())["workers"]["w1"]["swissnum"]
    assert world.call(world.connect().reference(new), "get_worker_config")["name"] == "w1"
    world.finish()
