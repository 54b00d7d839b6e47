"""Tunnel session placement on the master, deterministically (in-memory links, one clock)."""

from __future__ import annotations

import pytest

from bbenroll.master import sessions
from bbenroll.master.sessions import MAX_SESSIONS_PER_WORKER
from bbenroll.tunnel.core import Settings, clamp_resume_deadline
from tests.master.memory import Receiver


def attach(world, swissnum, session_id, *, resume=False, deadline=600):
    """A new connection that opens (or resumes) ``session_id``: (link, receiver, answer)."""
    link, ref = world.accepted(swissnum)
    receiver = Receiver()
    answer = world.call(ref, "open_session", session_id, receiver, {}, resume, deadline)
    return link, ref, receiver, answer


def table(world):
    return world.service.sessions


def test_new_resume_and_unknown(world):
    w1 = world.add("w1")
    world.start()
    first, _, _, answer = attach(world, w1, "s1")
    assert answer == {"status": "new", "received": {}}
    assert attach(world, w1, "s2", resume=True)[3] == {"status": "unknown", "received": {}}
    session = table(world).sessions[("w1", "s1")]
    first.close()
    assert session.peer is None  # the link is down; the session waits for a resume
    answer = attach(world, w1, "s1", resume=True)[3]
    assert answer["status"] == "resumed" and session.peer is not None
    assert set(table(world).sessions) == {("w1", "s1")}  # "s2" was never created
    world.finish()


def test_a_session_belongs_to_the_worker_that_opened_it(world):
    w1, w2 = world.add("w1"), world.add("w2")
    world.start()
    attach(world, w1, "s1")
    assert attach(world, w2, "s1", resume=True)[3]["status"] == "unknown"
    assert attach(world, w2, "s1")[3]["status"] == "new"
    assert set(table(world).sessions) == {("w1", "s1"), ("w2", "s1")}
    world.finish()


def test_take_over_moves_the_session_and_drops_the_old_watcher(world):
    w1 = world.add("w1")
    world.start()
    first, _, _, _ = attach(world, w1, "s1")
    assert len(first.server.disconnectWatchers) == 2  # the connection's, and the session's
    second, _, _, answer = attach(world, w1, "s1", resume=True)  # the old link is still up
    assert answer["status"] == "resumed"
    old, new = (world.service.connections[(id(link.server), w1)] for link in (first, second))
    session = table(world).sessions[("w1", "s1")]
    assert (old.session, new.session) == (None, session)
    assert len(first.server.disconnectWatchers) == 1  # the session no longer watches the old link
    first.close()
    assert session.peer is not None  # losing the old link does not detach the new one
    world.finish()


def test_a_connection_that_opens_another_session_leaves_the_first(world):
    w1 = world.add("w1")
    world.start()
    link, ref = world.accepted(w1)
    world.call(ref, "open_session", "s1", Receiver(), {}, False, 600)
    world.call(ref, "open_session", "s2", Receiver(), {}, False, 600)
    first, second = table(world).sessions[("w1", "s1")], table(world).sessions[("w1", "s2")]
    assert first.peer is None and second.peer is not None
    assert len(link.server.disconnectWatchers) == 2  # not one per session ever opened
    world.finish()


def test_the_cap_ends_the_oldest_idle_session_first(world):
    w1 = world.add("w1")
    world.start()
    links = [attach(world, w1, f"s{i}")[0] for i in range(MAX_SESSIONS_PER_WORKER)]
    links[2].close()
    world.advance(1)
    links[1].close()  # idle since later: s2 is the oldest idle session
    assert attach(world, w1, "new")[3]["status"] == "new"
    assert ("w1", "s2") not in table(world).sessions
    assert {("w1", "s1"), ("w1", "new")} <= set(table(world).sessions)
    world.finish()


def test_the_cap_refuses_when_every_session_is_connected(world):
    w1 = world.add("w1")
    world.start()
    for i in range(MAX_SESSIONS_PER_WORKER):
        attach(world, w1, f"s{i}")
    ref = world.accepted(w1)[1]
    with pytest.raises(Exception) as info:
        world.call(ref, "open_session", "one-too-many", Receiver(), {}, False, 600)
    assert str(info.value.failure.value) == sessions.TOO_MANY_SESSIONS
    assert len(table(world).sessions) == MAX_SESSIONS_PER_WORKER
    world.finish()


def test_a_silent_link_is_dropped_and_the_session_expires_after_its_deadline(world):
    w1 = world.add("w1")
    world.start()
    link, _, receiver, _ = attach(world, w1, "s1", deadline=1)  # clamped up to the minimum
    session = table(world).sessions[("w1", "s1")]
    deadline = clamp_resume_deadline(1)
    assert session.core.settings.resume_deadline == deadline > 1
    dead_after = Settings().dead_after
    world.advance(dead_after - 1)
    assert link.connected and receiver.frames  # pings, never answered
    world.advance(1)
    assert not link.connected and session.peer is None  # link dead: dropped, session kept
    assert link.server.transport.aborted
    assert ("w1", "s1") in table(world).sessions
    world.advance(deadline)
    assert table(world).sessions == {} and session.closed
    world.finish()


def test_revocation_ends_the_workers_sessions(world):
    w1, w2 = world.add("w1"), world.add("w2")
    world.start()
    attach(world, w1, "s1")
    link, _, _, _ = attach(world, w1, "s2")
    link.close()  # an idle session ends too
    attach(world, w2, "s1")
    world.cli("revoke", "w1")
    world.advance(1)
    assert set(table(world).sessions) == {("w2", "s1")}
    world.finish()


def test_stopping_the_service_ends_every_session(world):
    w1 = world.add("w1")
    world.start()
    attach(world, w1, "s1")
    session = table(world).sessions[("w1", "s1")]
    world.finish()
    assert session.closed and table(world).sessions == {}
