"""Backpressure on the worker, deterministically (task.Clock, fake Foolscap references): the
core's Pause and Resume reach the producer registered on the stream's transport, as on a TCP
transport, and the buildbot-worker commands whose updates go over the stream."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet import task

from bbenroll.tunnel.core import Settings
from bbenroll.tunnel.frames import Ack
from bbenroll.tunnel.transport import command_stream, reactor_processes
from bbenroll.tunnel.worker_side import WorkerTunnel
from tests.tunnel.test_worker_side import FURL, FakeRef, FakeTub, Recorder

# small numbers, so that a few writes cross them
SETTINGS = Settings(window=100, chunk=50, high_water=300, low_water=100, max_buffer=10_000)


class Producer:
    def __init__(self):
        self.calls: list[str] = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


class ProtocolCommand:
    """buildbot-worker's ProtocolCommandPb, as far as command_stream reads it."""

    def __init__(self, transport):
        self.command_ref = SimpleNamespace(broker=SimpleNamespace(transport=transport))

    def send_update(self, updates):
        pass


class FakeProcess:
    """A Twisted process transport as buildbot-worker's RunProcess sees it: its protocol
    (RunProcessPP) -> command (RunProcess) -> send_update, a bound method of the step's
    ProtocolCommandPb, whose command_ref lives on the broker of one connection."""

    def __init__(self, transport):
        command = SimpleNamespace(send_update=ProtocolCommand(transport).send_update)
        self.proto = SimpleNamespace(command=command)
        self.reading = True

    def pauseProducing(self):
        self.reading = False

    def resumeProducing(self):
        self.reading = True


class Reactor:
    """The readers a reactor has: one per pipe of each process that is reading."""

    def __init__(self):
        self.processes: list[FakeProcess] = []

    def getReaders(self):
        # two pipes (stdout, stderr) per process, each a ProcessReader with .proc
        return [SimpleNamespace(proc=p) for p in self.processes if p.reading for _ in range(2)]


def tunnel_up(clock, reactor=None):
    tunnel = WorkerTunnel(FURL, reactor=reactor or clock, clock=clock, settings=SETTINGS)
    ref = FakeRef([{"status": "new", "received": {}}])
    tunnel.tub = FakeTub([ref])
    tunnel._connect()
    assert tunnel.link_up
    return tunnel, ref


def sent_end(ref, stream=1) -> int:
    ends = [offset + len(payload) for name, *args in ref.frames if name == "frame_data"
            for s, offset, payload in [args] if s == stream]
    return max(ends, default=0)


def test_pause_and_resume_reach_a_push_producer_as_on_tcp():
    clock = task.Clock()
    tunnel, ref = tunnel_up(clock)
    app = Recorder()
    transport = tunnel.open_stream(app)
    producer = Producer()
    transport.registerProducer(producer, True)
    for _ in range(4):  # 400 bytes: the window (100) is in flight, 300 wait: past high_water
        transport.write(b"x" * 100)
    assert producer.calls == ["pause"] and transport.paused
    transport.write(b"y" * 100)  # a write after the pause is kept, not refused (as TCP does)
    assert producer.calls == ["pause"]
    # the master acks: what the core holds drains below low_water, and the producer goes on
    offset = 0
    while transport.paused:
        offset = sent_end(ref)
        tunnel.receive(Ack(1, offset))
    assert producer.calls == ["pause", "resume"] and offset >= 400 - SETTINGS.low_water
    transport.unregisterProducer()
    app.transport.loseConnection()
    tunnel.stop()
    assert clock.getDelayedCalls() == []


def test_a_pull_producer_is_asked_for_more_only_while_there_is_room():
    clock = task.Clock()
    tunnel, ref = tunnel_up(clock)
    transport = tunnel.open_stream(Recorder())
    producer = Producer()
    transport.registerProducer(producer, False)
    assert producer.calls == []  # later, never from inside registerProducer or write
    clock.advance(0)
    assert producer.calls == ["resume"]
    transport.write(b"x" * 400)  # past high_water: paused, and not asked again
    clock.advance(0)
    assert producer.calls == ["resume"] and transport.paused
    tunnel.receive(Ack(1, sent_end(ref)))
    while transport.paused:
        tunnel.receive(Ack(1, sent_end(ref)))
    clock.advance(0)
    assert producer.calls == ["resume", "resume"]
    tunnel.stop()
    assert producer.calls[-1] == "stop"
    assert clock.getDelayedCalls() == []


def test_producer_registration_is_as_strict_as_twisted():
    clock = task.Clock()
    tunnel, _ = tunnel_up(clock)
    transport = tunnel.open_stream(Recorder())
    transport.write(b"x" * 400)
    assert transport.paused
    late = Producer()
    transport.registerProducer(late, True)  # registered while paused: paused at once
    assert late.calls == ["pause"]
    with pytest.raises(RuntimeError, match="never unregistered"):
        transport.registerProducer(Producer(), True)
    tunnel.stop()
    after = Producer()
    transport.unregisterProducer()
    transport.registerProducer(after, True)  # on a lost transport: stopped, as Twisted does
    assert after.calls == ["stop"] and transport.producer is None
    assert clock.getDelayedCalls() == []


def test_the_commands_of_a_paused_stream_are_held_and_only_theirs():
    clock, reactor = task.Clock(), Reactor()
    tunnel, ref = tunnel_up(clock, reactor)
    mine, other_stream = tunnel.open_stream(Recorder()), tunnel.open_stream(Recorder())
    ours, theirs = FakeProcess(mine), FakeProcess(other_stream)
    stranger = SimpleNamespace(proto=None, pauseProducing=None, reading=True)  # not a process transport
    reactor.processes += [ours, theirs, stranger]
    assert [command_stream(p) for p in reactor_processes(reactor.getReaders())][:2] == [mine, other_stream]
    mine.write(b"x" * 400)
    assert not ours.reading and theirs.reading and list(mine.held.values()) == [ours]
    # a command started since the pause is held at its first write
    late = FakeProcess(mine)
    reactor.processes.append(late)
    mine.write(b"z")
    assert not late.reading
    while mine.paused:
        tunnel.receive(Ack(1, sent_end(ref)))
    assert ours.reading and late.reading and mine.held == {}
    # a stream lost while paused lets its commands read again (buildbot-worker then kills them,
    # and a command whose pipe is never read would never be seen to end)
    mine.write(b"x" * 400)
    assert not ours.reading
    tunnel.stop()
    assert ours.reading and late.reading
    assert clock.getDelayedCalls() == []


def test_without_a_producer_or_command_the_output_is_buffered_up_to_the_safety_net():
    clock = task.Clock()
    tunnel, _ = tunnel_up(clock)
    app = Recorder()
    transport = tunnel.open_stream(app)
    transport.write(b"x" * 400)
    assert transport.paused and app.lost is None  # nothing to pause: kept in memory
    transport.write(b"x" * SETTINGS.max_buffer)
    assert app.lost is not None and "waiting for the link" in str(app.lost.value)
    tunnel.stop()
    assert clock.getDelayedCalls() == []
