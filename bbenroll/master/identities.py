"""Two master identities (TubIDs) on one listening port: the overlap of a key rollover.

PROTOTYPE for issue 8's ``bbenroll master roll-identity`` (not wired into the
service yet; see "Wiring" below).

How it works
------------
A Foolscap client names the TubID it wants in its first request (``GET
/id/TUBID``); the server's negotiation asks its Listener
(``Listener.lookupTubID``) which Tub that is, and then does TLS with *that*
Tub's certificate. Foolscap 24.9's Listener belongs to exactly one Tub (the
older ``Listener.addTub`` is gone), so :class:`SharedListener` is a Listener
that holds several Tubs by TubID; a TubID it does not serve gets Foolscap's own
"unknown TubID" refusal, as today. :class:`ServedIdentities` owns that one
Listener and one :class:`~bbenroll.master.tub.EnrollmentTub` per identity, all
made by :func:`~bbenroll.master.tub.make_tub` (so :data:`TUB_OPTIONS`, the
:class:`EnrollmentBroker` bounds and timeouts are the same for each), all
resolving names through the same service, and all counted by ONE
:class:`~bbenroll.master.tub.Doorkeeper` (one Guard): an address's caps on
unauthenticated connections hold across both identities, not twice over.
Retiring an identity stops its Tub (its connections end) but not the port, and
not the other identity's connections still negotiating.

Design: the registry during an overlap
--------------------------------------
``[master] identity``/``tubid`` always name the identity that NEW FURLs carry
(``add``, ``show``, pushed offers): every reader of ``master.tubid`` stays
right without knowing about rollovers. The identity being replaced is kept as
an inline table, like a worker's ``previous`` secret::

    [master]
    identity = "master-20261203T124800Z.pem"   # new key, minted by roll-identity
    tubid = "<new tubid>"
    previous = {identity = "master.pem", tubid = "<old tubid>", until = 2026-12-10T12:48:00Z}

- ``previous.identity``: path of the old PEM (same rules as ``identity``: 0600,
  relative to the registry's directory); ``previous.tubid`` is checked against
  it on every load, like ``tubid``; ``previous.until``: the end of the overlap.
  Only one previous identity is kept (a second roll during an overlap is refused
  unless ``--force``, which drops the older one at once).

``roll-identity [--grace D]`` (default 7d, like ``rotate``), under the
registry lock: mint a key into a NEW file (exclusive create, 0600; never
rename or overwrite the old one, so a crash leaves at worst an unused file),
then one registry edit: ``previous = {old identity, old tubid, until = now +
grace}``, ``identity``/``tubid`` = the new one, and every worker's ``serial``
+1 / ``changed = now`` (its FURL changed: new TubID, same swissnum), one audit
record per worker (action ``roll-identity``). ``--grace 0`` (or
``--compromised``): no ``previous`` at all; the old TubID is refused from the
next reload on and every worker admin needs ``worker create --force``.

The old identity retires (the master drops ``previous`` through ``store.edit``,
actor ``master``, and stops serving that Tub) at the first of:

- ``previous.until`` has passed (the master enforces it by its clock at once,
  even before the registry write lands, as it does for a worker's old secret);
- every usable worker has ``delivered == serial`` (it confirmed a FURL minted
  after the roll; all those carry the new TubID; a worker added after the roll
  has serial 0 and holds a new-TubID FURL). Revoked/expired workers don't count.

The old PEM file is not deleted by the master (it never deletes key material on
its own); ``bbenroll check`` should warn "FILE is no longer used (a retired
master identity); delete it". ``list --json`` gives each worker
``identity: "previous"`` while ``previous`` exists and ``delivered < serial``;
``workers.status.json`` should carry each live connection's TubID (its
``broker.tub.tubID``) so ``bbenroll status`` can show who is still connected
over the old one.

Wiring (files owned by others; nothing here edits them)
-------------------------------------------------------
- ``registry/schema.py`` + ``registry/model.py``: ``MasterSettings.previous``
  (an inline table kind like the worker's ``PREVIOUS``: identity, tubid, until);
  ``store.inspect`` checks ``previous.identity`` loads, its mode, and its TubID
  equals ``previous.tubid`` and differs from ``tubid``; docs/registry.md table.
- ``master/tub.py``: two small hooks would let this module drop its workarounds:
  (1) ``make_tub(..., doorkeeper=None)``: a Tub given a shared Doorkeeper does
  not own it, and its ``stopService`` does not ``drop_all`` (here: the
  :class:`_SharedDoorkeeper` view); (2) ``listen(..., listener=None)`` or a
  public ``ReportingEndpoint``, so :meth:`ServedIdentities.listen` need not
  import the private ``_ReportingEndpoint``; (3) an ``EnrollmentTub.retired``
  flag that ``EnrollmentBroker.connectionMade`` checks (abort) and that makes
  ``brokerAttached`` keep nothing: a negotiation that picked a Tub just before it
  retired finishes after it (tested), and Foolscap would then assert a running
  Tub. Here the Doorkeeper view and an instance attribute do it.
- Unknown TubIDs are refused by Foolscap before TLS and are not counted by the
  Guard (as today for the single identity); a retired TubID could be given the
  clearer "retired" line only by a Listener redirect or a negotiation subclass.
- ``master/service.py``: (a) ``startService`` builds a :class:`ServedIdentities`
  instead of ``make_tub``+``listen``: ``add`` the current identity and, if the
  registry has one whose ``until`` has not passed, ``previous``; then
  ``identities.listen(reactor, master.listen)``; ``identities.setServiceParent(self)``
  (exactly :meth:`OverlapService.startService`). (b) ``lookup``: ``self.tub
  .referenceToName[obj] = swissnum`` must be ``broker.tub.referenceToName[obj]``:
  with two Tubs the answer is sent by the connection's own Tub, and the other
  would register the object under a fresh random name (:meth:`OverlapService.lookup`).
  (c) ``_reload``/``tick``: a registry whose ``tubid`` changed and whose
  ``previous.tubid`` is the one being served is a roll: ``identities.add(new
  pem)``; a served TubID that is neither ``tubid`` nor an unexpired
  ``previous.tubid`` is ``identities.retire(tubid)``; the tick also checks the
  retirement rule above and writes the registry when it fires. (d)
  ``self.tub`` (used for the Doorkeeper count in ``_log_guard``) becomes
  ``identities.doorkeeper``. (e) Pushed rotation: a subscribed connection whose
  ``broker.tub.tubID != master.tubid`` is offered the newest FURL (it is on the
  old identity), whatever serial it reports.
- ``master/reloader.py``: today a changed ``master.tubid`` is refused ("restart
  the master"); accept it when the new registry's ``previous.tubid`` equals the
  running ``tubid`` (a roll), refuse any other change as today.
- ``cli/master.py`` (new, ``master roll-identity``) with ``COMMANDS`` entry;
  docs/rotation.md and docs/cli.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from foolscap.pb import Listener
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime

from bbenroll.identity import load_identity
from bbenroll.master import guard as guardmod
from bbenroll.master.service import EnrolledWorker, EnrollmentService
from bbenroll.master.tub import (
    Doorkeeper,
    EnrollmentBroker,
    EnrollmentNegotiation,
    EnrollmentTub,
    ListenError,
    _ReportingEndpoint,
    make_tub,
)
from bbenroll.tunnel.wire import Refused

__all__ = ["RETIRED", "OverlapService", "ServedIdentities", "SharedListener"]

RETIRED = "this master identity was retired; ask the master admin for a new FURL"


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

    def serve(self, tub: EnrollmentTub) -> None:
        self._tubs[tub.tubID] = tub

    def stop_serving(self, tubid: str) -> None:
        """Refuse ``tubid`` from the next negotiation on (connections already made are the Tub's)."""
        self._tubs.pop(tubid, None)
        if self._tub.tubID == tubid and self._tubs:
            self._tub = next(iter(self._tubs.values()))

    def tubids(self) -> list[str]:
        return list(self._tubs)

    def lookupTubID(self, tubID: str) -> tuple[EnrollmentTub | None, None]:
        # No redirects: a TubID we do not serve gets Foolscap's "unknown TubID".
        tub = self._tubs.get(str(tubID))
        if tub is None or not tub.running:
            return (None, None)
        return (tub, None)

    def __repr__(self) -> str:
        return f"<SharedListener on {self._ep} with tubs {','.join(self._tubs)}>"


class _SharedDoorkeeper:
    """One Tub's view of the Doorkeeper its identities share: all of it but ``drop_all``.

    ``EnrollmentTub.stopService`` aborts every connection its Doorkeeper waits on;
    retiring one identity must not abort the other's, nor those still negotiating
    (they belong to the port, not to a Tub). :meth:`ServedIdentities.stopService`
    drops them all once, when the whole port stops.

    Once its Tub is retired, a connection whose negotiation picked that Tub before
    and finishes after is aborted as its Broker starts (``EnrollmentBroker.connectionMade``
    tells the Tub's Doorkeeper): it would otherwise be served by a stopped Tub.
    """

    retired = False

    def __init__(self, keeper: Doorkeeper) -> None:
        self._keeper = keeper

    def __getattr__(self, name: str) -> Any:
        return getattr(self._keeper, name)

    def arrived(self, transport: Any, timeout: float,
                progress: guardmod.Progress = guardmod.Progress.SILENT) -> None:
        if self.retired:
            with contextlib.suppress(Exception):  # already gone
                transport.abortConnection()
            return  # its Broker's connectionLost settles it in the shared Doorkeeper
        self._keeper.arrived(transport, timeout, progress)

    def drop_all(self) -> None:
        return None


def _late_broker(tubref: Any, broker: Any, isClient: bool) -> None:
    """``brokerAttached`` of a retired Tub: its late connection is being aborted; keep nothing."""
    return None


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
        tub = make_tub(cert_pem, self.enrollment, self.clock, self.guard)
        if tub.tubID in self.tubs:
            raise ValueError(f"identity {tub.tubID} is already served")
        tub.doorkeeper = _SharedDoorkeeper(self.doorkeeper)  # type: ignore[assignment]
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
            endpoint = serverFromString(reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            return defer.fail(ListenError(description, f"not a server endpoint ({e})"))
        reporting = _ReportingEndpoint(endpoint, description)
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
        tub.doorkeeper.retired = True  # type: ignore[union-attr]
        # Foolscap asserts a running Tub there; a late negotiation's Broker is aborted instead
        tub.brokerAttached = _late_broker  # type: ignore[method-assign]
        return defer.maybeDeferred(tub.disownServiceParent)

    def stopService(self) -> Any:
        # the connections no Tub owns yet (negotiating) and those not authenticated
        self.doorkeeper.drop_all()
        return super().stopService()


class OverlapService(EnrollmentService):
    """An :class:`EnrollmentService` serving several identities on its one port.

    The prototype of what service.py should do (see the module's "Wiring"):
    it starts with the registry's identity and takes more with :meth:`serve_also`.
    """

    identities: ServedIdentities | None = None

    def __init__(self, *args: Any, also: Sequence[bytes] = (), **kwargs: Any) -> None:
        """``also``: identities (PEM) served from the start besides the registry's own:
        the stand-in for ``[master] previous`` until the registry has it."""
        super().__init__(*args, **kwargs)
        self.also = list(also)

    def startService(self) -> None:
        self._reload()
        self.reloader.started()
        self._raise_open_files_limit()
        master = self.loaded.registry.master
        identities = ServedIdentities(self, self.clock, self.guard)
        tub = identities.add(load_identity(self.loaded.identity_path).pem, master.location)
        for pem in self.also:
            identities.add(pem, master.location)
        listening = identities.listen(self.reactor, master.listen)
        identities.setServiceParent(self)
        self.identities = identities
        self.tub = tub
        service.MultiService.startService(self)  # EnrollmentService's would make its own Tub
        listening.addCallbacks(self._listening, self._cannot_listen)

    def serve_also(self, cert_pem: bytes) -> str:
        """Serve another identity on the same port; its TubID."""
        assert self.identities is not None, "not started"
        return self.identities.add(cert_pem, self.loaded.registry.master.location).tubID

    def retire(self, tubid: str) -> defer.Deferred[Any]:
        """Stop serving ``tubid`` (its connections end)."""
        assert self.identities is not None, "not started"
        d = self.identities.retire(tubid)
        if self.tub is not None and self.tub.tubID == tubid:
            self.tub = next(iter(self.identities.tubs.values()))
        return d

    def lookup(self, swissnum: str, broker: EnrollmentBroker) -> Any:
        if self.identities is None or broker.tub.tubID not in self.identities.tubs:
            # a late connection of a retired identity (it is being aborted): nothing to find
            return defer.fail(Refused(RETIRED))
        result = super().lookup(swissnum, broker)
        # The answer is sent by the connection's own Tub: the object's name must be there.
        if isinstance(result, EnrolledWorker) and self.tub is not None and broker.tub is not self.tub:
            self.tub.referenceToName.pop(result, None)
            broker.tub.referenceToName[result] = swissnum
        return result

    def stopService(self, *, write_status: bool = True) -> Any:
        d = super().stopService(write_status=write_status)
        self.identities = None
        return d
