"""Two master identities (TubIDs) on one listening port: the overlap of a key rollover.

``bbenroll master roll-identity`` (docs/rotation.md, "Master key rollover")
gives the master a new key; during the overlap the running master serves the
old and the new identity on the same port, and :class:`ServedIdentities` is
how. :class:`~bbenroll.master.service.EnrollmentService` owns one, always
(a master that never rolled serves one identity through it).

How it works
------------
A Foolscap client names the TubID it wants in its first request (``GET
/id/TUBID``); the server's negotiation asks its Listener
(``Listener.lookupTubID``) which Tub that is, and then does TLS with *that*
Tub's certificate. Foolscap 24.9's Listener belongs to exactly one Tub (the
older ``Listener.addTub`` is gone), so :class:`SharedListener` is a Listener
that holds several Tubs by TubID; a TubID it does not serve gets Foolscap's own
"unknown TubID" refusal, before TLS. :class:`ServedIdentities` owns that one
Listener and one :class:`~bbenroll.master.tub.EnrollmentTub` per identity, all
made by :func:`~bbenroll.master.tub.make_tub` (so :data:`TUB_OPTIONS`, the
:class:`EnrollmentBroker` bounds and timeouts are the same for each), all
resolving names through the same service, and all counted by ONE
:class:`~bbenroll.master.tub.Doorkeeper` (``make_tub(doorkeeper=)``; one Guard):
an address's caps on unauthenticated connections hold across both identities,
not twice over. Retiring an identity stops its Tub (its connections end) but not
the port, and not the other identity's connections still negotiating (a Tub
that does not own its Doorkeeper does not ``drop_all`` when it stops). A
negotiation that picked a Tub just before it retired and finishes after is
aborted as its Broker starts (``EnrollmentTub.retired``).

The registry during an overlap
------------------------------
``[master] identity``/``tubid`` always name the identity that NEW FURLs carry
(``add``, ``show``, pushed offers): every reader of ``master.tubid`` stays
right without knowing about rollovers. The identity being replaced is
``[master] previous = {identity, tubid, until}`` (:class:`~bbenroll.registry.model.PreviousIdentity`).
The service serves it while :func:`~bbenroll.registry.model.identity_retirement`
has no reason to retire it: its ``until`` has not passed, and some usable
worker has not confirmed a FURL minted since the roll. Then it retires the Tub
at once (by its clock) and removes ``previous`` through its RegistryWriter.
The old PEM file is never deleted by the master.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from foolscap.negotiate import NegotiationError
from foolscap.pb import Listener
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime

from bbenroll.endpoints import with_backlog
from bbenroll.master import guard as guardmod
from bbenroll.master.tub import (
    Doorkeeper,
    EnrollmentNegotiation,
    EnrollmentTub,
    ListenError,
    ReportingEndpoint,
    make_tub,
)

if TYPE_CHECKING:
    from bbenroll.master.service import EnrollmentService

__all__ = ["RETIRED", "ServedIdentities", "SharedListener"]

RETIRED = "this master identity was retired; ask the master admin for a new FURL"
MAX_RETIRED_REMEMBERED = 8  # retired TubIDs whose refusal says so (a roll at a time: plenty)


class SharedListener(Listener):
    """A Foolscap Listener for several Tubs: negotiation picks the one whose TubID the client names.

    ``_tub`` (Foolscap's single Tub of a Listener) is kept pointing at one of the
    served Tubs: :class:`~bbenroll.master.tub.EnrollmentNegotiation` finds the
    Doorkeeper through it before the client has named any TubID. All served
    Tubs share that Doorkeeper, so which one it is does not matter.
    """

    def __init__(self, tub: EnrollmentTub, endpoint: Any) -> None:
        super().__init__(tub, endpoint, negotiationClass=EnrollmentNegotiation)
        self._tubs: dict[str, EnrollmentTub] = {tub.tubID: tub}
        self._retired: dict[str, None] = {}  # TubIDs retired by this process, oldest first

    def serve(self, tub: EnrollmentTub) -> None:
        self._tubs[tub.tubID] = tub

    def stop_serving(self, tubid: str) -> None:
        """Refuse ``tubid`` from the next negotiation on (connections already made are the Tub's)."""
        self._tubs.pop(tubid, None)
        self._retired[tubid] = None
        while len(self._retired) > MAX_RETIRED_REMEMBERED:
            del self._retired[next(iter(self._retired))]
        if self._tub.tubID == tubid and self._tubs:
            self._tub = next(iter(self._tubs.values()))

    def tubids(self) -> list[str]:
        return list(self._tubs)

    def lookupTubID(self, tubID: str) -> tuple[EnrollmentTub | None, None]:
        # No redirects: a TubID we do not serve gets Foolscap's "unknown TubID", before TLS;
        # one we retired says so (raised where Foolscap raises its own: the client sees the text)
        tub = self._tubs.get(str(tubID))
        if tub is None or not tub.running:
            if str(tubID) in self._retired:
                raise NegotiationError(f"unknown TubID {tubID}: {RETIRED}")
            return (None, None)
        return (tub, None)

    def __repr__(self) -> str:
        return f"<SharedListener on {self._ep} with tubs {','.join(self._tubs)}>"


class ServedIdentities(service.MultiService):
    """The master's identities, one Tub each, on one listening port.

    ``enrollment`` resolves every Tub's names (its ``lookup(name, broker)``);
    ``clock`` and ``guard`` are those of :func:`~bbenroll.master.tub.make_tub`,
    shared by all identities through one Doorkeeper.
    """

    def __init__(self, enrollment: EnrollmentService, clock: IReactorTime,
                 guard: guardmod.Guard | None = None) -> None:
        super().__init__()
        self.enrollment = enrollment
        self.clock = clock
        self.guard = guard if guard is not None else guardmod.Guard()
        self.doorkeeper = Doorkeeper(self.guard, clock)
        self.tubs: dict[str, EnrollmentTub] = {}  # TubID -> Tub, in the order added
        self.listener: SharedListener | None = None

    def add(self, cert_pem: bytes, location: Sequence[str]) -> EnrollmentTub:
        """Serve another identity (a PEM key + certificate); at once if the port is listening."""
        tub = make_tub(cert_pem, self.enrollment, self.clock, doorkeeper=self.doorkeeper)
        if tub.tubID in self.tubs:
            raise ValueError(f"identity {tub.tubID} is already served")
        tub.setLocation(*location)
        self.tubs[tub.tubID] = tub
        tub.setServiceParent(self)  # started now if we run: before the listener offers it
        if self.listener is not None:
            self.listener.serve(tub)
        return tub

    def listen(self, reactor: Any, description: str) -> defer.Deferred[Any]:
        """Listen on ``description`` for every identity added, before or after.

        Like :func:`~bbenroll.master.tub.listen`: fires with the port once bound,
        or fails with :class:`ListenError` naming ``description``.
        """
        if self.listener is not None:
            raise RuntimeError("already listening")
        if not self.tubs:
            raise RuntimeError("add an identity before listening")
        try:
            # a registry written before init gave the port a backlog: Twisted's 50 overflows under
            # an attach storm, so a TCP port without one gets endpoints.DEFAULT_BACKLOG
            endpoint = serverFromString(reactor, with_backlog(description))
        except (ValueError, KeyError, TypeError) as e:
            return defer.fail(ListenError(description, f"not a server endpoint ({e})"))
        reporting = ReportingEndpoint(endpoint, description)
        tubs = iter(self.tubs.values())
        listener = SharedListener(next(tubs), reporting)
        for tub in tubs:
            listener.serve(tub)
        self.listener = listener
        listener.setServiceParent(self)  # not the first Tub's child: retiring it keeps the port
        return reporting.listening

    def tubids(self) -> list[str]:
        return list(self.tubs)

    def retire(self, tubid: str) -> defer.Deferred[Any]:
        """Stop serving ``tubid``: refused from now on, its connections end; the port stays."""
        if tubid not in self.tubs:
            return defer.succeed(None)
        if len(self.tubs) == 1:
            raise ValueError("cannot retire the last identity")
        tub = self.tubs.pop(tubid)
        if self.listener is not None:
            self.listener.stop_serving(tubid)
        tub.retired = True  # a late negotiation's Broker is aborted (EnrollmentBroker.connectionMade)
        return defer.maybeDeferred(tub.disownServiceParent)

    def stopService(self) -> Any:
        # the connections no Tub owns yet (negotiating) and those not authenticated
        self.doorkeeper.drop_all()
        return super().stopService()
