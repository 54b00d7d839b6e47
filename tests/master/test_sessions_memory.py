"""Tunnel session placement on the master, deterministically (in-memory links, one clock)."""

from __future__ import annotations

import pytest

from bbenroll.master import sessions
from bbenroll.master.sessions import MASTER_MAX_RESUME_DEADLINE, MAX_SESSIONS_PER_WORKER
from bbenroll.tunnel.core import RESUME_DEADLINE_DEFAULT, RESUME_DEADLINE_MAX, Settings, clamp_resume_deadline
from bbenroll.tunnel.master_side import MAX_STREAMS_PER_SESSION
from tests.helpers.master import Receiver


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
    assert answer == {"status": "new", "received": {}, "deadline": RESUME_DEADLINE_DEFAULT}
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
    idle_dead_after = Settings().idle_dead_after  # the worker's pings never came
    world.advance(idle_dead_after - 1)
    assert link.connected and receiver.frames == []  # the master does not ping on its own
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


def test_the_master_grants_no_longer_a_resume_deadline_than_its_own_maximum(world):
    w1 = world.add("w1")
    world.start()
    assert RESUME_DEADLINE_MAX > MASTER_MAX_RESUME_DEADLINE  # what a worker may ask is more
    link, _, _, answer = attach(world, w1, "s1", deadline=RESUME_DEADLINE_MAX)
    assert answer["deadline"] == MASTER_MAX_RESUME_DEADLINE  # the worker is told what it got
    session = table(world).sessions[("w1", "s1")]
    link.close()
    world.advance(MASTER_MAX_RESUME_DEADLINE - 1)
    assert ("w1", "s1") in table(world).sessions
    world.advance(1)
    assert table(world).sessions == {} and session.closed  # its PB connections with it
    resumed = attach(world, w1, "s1", resume=True)[3]
    assert resumed["status"] == "unknown"
    world.finish()


def test_a_resume_answers_the_deadline_the_session_was_granted(world):
    w1 = world.add("w1")
    world.start()
    attach(world, w1, "s1", deadline=60)
    answer = attach(world, w1, "s1", resume=True, deadline=RESUME_DEADLINE_MAX)[3]
    assert answer["status"] == "resumed" and answer["deadline"] == 60  # a resume does not extend it
    world.finish()


def test_no_path_gives_a_worker_more_sessions_than_the_cap(world):
    w1 = world.add("w1")
    world.start()
    ref = world.accepted(w1)[1]
    for i in range(3 * MAX_SESSIONS_PER_WORKER):  # new sessions, one after another, on one connection
        world.call(ref, "open_session", f"one-{i}", Receiver(), {}, False, 600)
        assert len(table(world).sessions) <= MAX_SESSIONS_PER_WORKER
    for i in range(3 * MAX_SESSIONS_PER_WORKER):  # resumes of sessions that do not exist
        assert attach(world, w1, f"ghost-{i}", resume=True)[3]["status"] == "unknown"
    for _ in range(3):  # take-overs of the sessions that do
        for _, session_id in list(table(world).sessions):
            assert attach(world, w1, session_id, resume=True)[3]["status"] == "resumed"
    assert len(table(world).sessions) == MAX_SESSIONS_PER_WORKER
    world.finish()


def test_a_worker_opens_at_most_sessions_times_streams_pb_connections(world):
    w1 = world.add("w1")
    world.start()
    for i in range(MAX_SESSIONS_PER_WORKER + 2):
        link, ref = world.accepted(w1)
        world.call(ref, "open_session", f"s{i}", Receiver(), {}, False, 600)
        for stream in range(1, 201):
            ref.callRemoteOnly("frame_open", stream)
        world.advance(0)
        link.close()  # idle: the next new session may replace it
    pb_connections = len(world.clock.tcpClients)
    assert pb_connections == (MAX_SESSIONS_PER_WORKER + 2) * MAX_STREAMS_PER_SESSION  # not 200 each
    live = sum(len(s.legs) + len(s.pending) for s in table(world).sessions.values())
    assert live <= MAX_SESSIONS_PER_WORKER * MAX_STREAMS_PER_SESSION
    assert len(world.logged("more than {cap} streams")) == MAX_SESSIONS_PER_WORKER + 2  # once each
    world.finish()
