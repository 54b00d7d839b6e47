"""What the master's and the worker's tunnel adapters share: the flush loop and the timer.

:class:`TunnelAdapter` drives a :class:`TunnelCore`: it sends the core's frames
to the peer, dispatches its events to ``on_*`` methods by type, turns protocol
errors into a dropped link, and keeps one :class:`WakeupTimer` for the core's
:meth:`TunnelCore.next_wakeup`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from foolscap.api import DeadReferenceError

from bbenroll.tunnel.core import Settings, TunnelCore
from bbenroll.tunnel.frames import (
    Closed,
    Deliver,
    Event,
    Expired,
    Frame,
    LinkDead,
    Opened,
    Pause,
    ProtocolError,
    Resume,
    Role,
)
from bbenroll.tunnel.wire import send_frame


class WakeupTimer:
    """Calls ``callback`` at an absolute time on ``clock``; moving it reuses the DelayedCall.

    ``flush()`` runs once per frame, so rescheduling must not cancel and create a
    DelayedCall each time when the wake-up time has not moved.
    """

    def __init__(self, clock: Any, callback: Callable[[], None]) -> None:
        self.clock = clock
        self.callback = callback
        self._call: Any = None

    def schedule(self, when: float | None) -> None:
        """Fire at ``when`` (absolute seconds on the clock), or never if None."""
        if when is None:
            self.cancel()
            return
        delay = max(0.0, when - self.clock.seconds())
        call = self._call
        if call is not None and call.active():
            if call.getTime() != when:
                call.reset(delay)
            return
        self._call = self.clock.callLater(delay, self._fire)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        self.callback()


# the adapter method for each event type: a dispatch table, because a Deliver
# follows every data frame
EVENT_METHODS: Mapping[type, str] = MappingProxyType(
    {
        Deliver: "on_deliver",
        Opened: "on_opened",
        Closed: "on_closed",
        Pause: "on_pause",
        Resume: "on_resume",
        LinkDead: "on_link_dead",
        Expired: "on_expired",
    }
)


class TunnelAdapter:
    """What both ends share: driving a :class:`TunnelCore` from a clock and a Foolscap peer.

    The base makes ``core`` (:meth:`new_core`) on the injected ``clock``; a subclass
    sets ``peer`` (the remote ``RITunnelPeer``, None while the link is down) and
    implements ``on_protocol_error`` and the ``on_*`` methods of the events it cares
    about (:data:`EVENT_METHODS`); the others are ignored. ``flush()`` runs after every
    input: it sends the core's frames, dispatches its events and moves the wake-up timer.
    """

    core: TunnelCore
    peer: Any = None

    def __init__(self, clock: Any, role: Role, settings: Settings) -> None:
        self.clock = clock
        self.role = role
        self.settings = settings
        self.core = self.new_core()
        self._timer = WakeupTimer(clock, self._tick)
        self._event_handlers: dict[type, Callable[[Any], None]] = {
            kind: getattr(self, name, self._ignore) for kind, name in EVENT_METHODS.items()
        }

    def new_core(self) -> TunnelCore:
        """A fresh core, its link down since now (a new session)."""
        return TunnelCore(role=self.role, now=self.clock.seconds(), settings=self.settings)

    @property
    def link_up(self) -> bool:
        """A peer is attached and the core's link is up."""
        return self.peer is not None and self.core.link

    @property
    def ticking(self) -> bool:
        """Whether the core's timers still matter (False once the adapter is done)."""
        return True

    # -- inputs ----------------------------------------------------------------------

    def receive(self, frame: Frame) -> None:
        """A frame from the peer."""
        try:
            self.core.receive(frame, self.clock.seconds())
        except ProtocolError as e:
            self.core.link_down(self.clock.seconds())
            self.on_protocol_error(e)
        self.flush()

    def write(self, stream: int, data: bytes) -> None:
        """Bytes from the application's end of ``stream``."""
        self.core.write(stream, data, self.clock.seconds())
        self.flush()

    def close(self, stream: int) -> None:
        """The application closed its end of ``stream``."""
        self.core.close(stream, self.clock.seconds())
        self.flush()

    def reset(self, stream: int, reason: str = "reset") -> None:
        """Drop ``stream`` at once (the peer is told)."""
        self.core.reset(stream, self.clock.seconds(), reason)
        self.flush()

    def on_protocol_error(self, error: ProtocolError) -> None:
        """The peer broke the protocol; the core's link is already down. Drop the connection."""
        raise NotImplementedError

    # -- driving the core -------------------------------------------------------------

    def flush(self) -> None:
        frames, events = self.core.take()
        peer = self.peer
        if peer is not None and frames:
            try:
                for frame in frames:
                    send_frame(peer, frame)
            except DeadReferenceError:
                pass  # the disconnect notification is on its way; the core resends on resume
        for event in events:
            self._handle(event)
        self._reschedule()

    def _handle(self, event: Event) -> None:
        self._event_handlers[type(event)](event)

    def _ignore(self, event: Event) -> None:
        pass

    def _reschedule(self) -> None:
        self._timer.schedule(self.core.next_wakeup() if self.ticking else None)

    def _tick(self) -> None:
        self.core.tick(self.clock.seconds())
        self.flush()
