"""The worker's side of invites (docs/fleets.md): turn an invite into the worker's own FURL.

An invite FURL looks like a worker's FURL (``pb://TUBID@HINTS/SECRET``: it pins the
master's identity), but what it names on the master is an RIInvite, which only
enrolls: ``enroll(host)`` consumes one use, adds the worker and answers with the
worker's own FURL over the encrypted link. Which of the two a FURL is, the worker
learns from the interface name of the reference it gets (``ref.tracker.interfaceName``),
never from the text.

:func:`create_worker` is everything ``bbenroll worker create`` does, for the commands
that create a basedir (``worker create``, ``worker run``): every local check first,
then the invite (if it is one) is redeemed, then the normal create with the worker's FURL.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer

from bbenroll.furl import parse_furl
from bbenroll.worker.setup import (
    DEFAULT_TIMEOUT,
    WorkerSetupError,
    bind_worker_key,
    check_basedir,
    create_worker_dir,
    fetch_worker_config,
    worker_key,
)

__all__ = ["create_worker", "host_name", "redeem_invite", "resolve_credential"]

Progress = Callable[[str], None]

RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # seconds between attempts after a connection lost mid-way
NOT_BBENROLL = "this FURL names neither a bbenroll worker nor an invite on that master"


def host_name() -> str:
    """The machine's short host name (up to the first dot): what ``--prefix`` invites name workers by."""
    return socket.gethostname().split(".")[0] or "worker"


def _quiet(text: str) -> None:
    pass


def resolve_credential(
    text: str,
    *,
    reactor: Any,
    timeout: float = DEFAULT_TIMEOUT,
    key: bytes | None = None,
    progress: Progress | None = None,
    host: str | None = None,
    announce: bool = True,
    invite_key: bytes | None = None,
) -> defer.Deferred[dict[str, Any]]:
    """The worker's own FURL for ``text``, a worker FURL (returned as is) or an invite (redeemed).

    Fires with ``{"furl": FURL, "invite": bool, "name": NAME or None, "enrolled_by": ID or None}``;
    fails with :class:`WorkerSetupError` (one line). A connection lost before the master's
    answer is tried again until ``timeout``; a refusal (used up, expired, revoked, unknown)
    is not: no retry changes it. ``announce``: tell where it connects (create_worker does not:
    for a worker FURL, fetching its settings says it).

    ``key`` is what the first connection is made with (a bound worker FURL is refused from any
    other key); an invite is then redeemed over a second connection made with ``invite_key``
    (None: a throwaway key), so that the master's invite connection, which it holds until the
    answer has left, never shares a TubID with the worker's next connection.
    """
    tell = progress or _quiet
    furl = text.strip()
    parse_furl(furl)  # a malformed FURL is one line before any connection
    hints = f"at {', '.join(parse_furl(furl).hints)}, for up to {timeout:.0f}s"
    if announce:
        tell(f"connecting to the master ({hints})")
    deadline = reactor.seconds() + timeout
    return _attempt(furl, reactor=reactor, deadline=deadline, timeout=timeout, key=key, tell=tell,
                    host=host or host_name(), wait=RETRY_FIRST, invite_key=invite_key)


class _RedeemWithInviteKey:
    """What a first connection made with the worker's key found: an invite, to redeem anew."""


def _attempt(furl: str, *, reactor: Any, deadline: float, timeout: float, key: bytes | None,
             tell: Progress, host: str, wait: float, invite_key: bytes | None
             ) -> defer.Deferred[dict[str, Any]]:
    from foolscap.api import DeadReferenceError
    from foolscap.tokens import NoLocationHintsError
    from twisted.internet import error, task

    from bbenroll.tunnel.failures import FailureKind, classify
    from bbenroll.tunnel.wire import INVITE_INTERFACE, WORKER_INTERFACE, start_client_tub

    tub = start_client_tub(key)
    left = max(0.1, deadline - reactor.seconds())

    def resolved(ref: Any) -> Any:
        interface = getattr(getattr(ref, "tracker", None), "interfaceName", None)
        if interface == WORKER_INTERFACE:
            return {"furl": furl, "invite": False, "name": None, "enrolled_by": None}
        if interface != INVITE_INTERFACE:
            raise WorkerSetupError(NOT_BBENROLL)
        if key is not invite_key:
            return _RedeemWithInviteKey()  # after this connection's Tub has stopped
        tell(f"the master's identity matches the invite; enrolling as host {host!r}")
        return ref.callRemote("enroll", host).addCallback(answered)

    def answered(answer: Any) -> dict[str, Any]:
        if (
            not isinstance(answer, dict)
            or not isinstance(answer.get("name"), str)
            or not isinstance(answer.get("furl"), str)
        ):
            raise WorkerSetupError("the master sent an incomplete answer to the invite")
        own = answer["furl"]
        try:
            parse_furl(own)
        except Exception:
            raise WorkerSetupError("the master answered the invite with a malformed FURL") from None
        if parse_furl(own).tubid != parse_furl(furl).tubid:
            # the invite pinned this master: the worker's FURL must name the same one
            raise WorkerSetupError("the master answered the invite with a FURL for another master")
        tell(f"enrolled as worker {answer['name']!r}")
        return {"furl": own, "invite": True, "name": answer["name"],
                "enrolled_by": answer.get("enrolled_by")}

    def stopped(result: Any) -> Any:
        d = defer.maybeDeferred(tub.stopService)
        d.addBoth(lambda _: result)
        return d

    def again_for_invite(result: Any) -> Any:
        if isinstance(result, _RedeemWithInviteKey):
            return _attempt(furl, reactor=reactor, deadline=deadline, timeout=timeout, key=invite_key,
                            tell=tell, host=host, wait=wait, invite_key=invite_key)
        return result

    def failed(failure: Any) -> Any:
        if failure.check(WorkerSetupError):
            return failure
        timed_out = failure.check(defer.TimeoutError, defer.CancelledError)
        kind = classify(failure)
        # lost before the answer (the master closes invite connections over its cap, or
        # restarted): nothing was consumed unless the answer itself was lost; try again
        lost = failure.check(DeadReferenceError, error.ConnectionLost, error.ConnectionDone)
        usable_hints = not failure.check(NoLocationHintsError)  # (no retry makes tor: hints usable)
        retry = not timed_out and usable_hints and (
            lost or kind.kind is FailureKind.UNREACHABLE
            or (kind.kind is FailureKind.REFUSED and not kind.permanent))
        if retry and reactor.seconds() + wait < deadline:
            return task.deferLater(reactor, wait, _attempt, furl, reactor=reactor, deadline=deadline,
                                   timeout=timeout, key=key, tell=tell, host=host,
                                   wait=min(RETRY_MAX, wait * 2), invite_key=invite_key)
        if timed_out:
            raise WorkerSetupError(
                f"cannot reach the master at any of the FURL's addresses (no answer in {timeout:.0f}s)"
            )
        raise WorkerSetupError(kind.message)

    d = tub.getReference(furl)
    d.addCallback(resolved)
    d.addTimeout(left, reactor)
    d.addBoth(stopped)
    d.addErrback(failed)
    d.addCallback(again_for_invite)
    return d


def _retrying(call: Callable[[], Any], reactor: Any, deadline: float, wait: float = RETRY_FIRST) -> Any:
    """``call()``, again after a connection lost before its answer (fetching the settings and
    binding the key are both safe to repeat), until ``deadline``."""
    from twisted.internet import task

    def failed(failure: Any) -> Any:
        if (failure.check(WorkerSetupError) and failure.value.transient
                and reactor.seconds() + wait < deadline):
            later = min(RETRY_MAX, wait * 2)
            return task.deferLater(reactor, wait, _retrying, call, reactor, deadline, later)
        return failure

    return defer.maybeDeferred(call).addErrback(failed)


def redeem_invite(
    invite_furl: str,
    *,
    reactor: Any,
    timeout: float = DEFAULT_TIMEOUT,
    key: bytes | None = None,
    progress: Progress | None = None,
) -> defer.Deferred[str]:
    """Redeem ``invite_furl``: fires with the worker's own FURL (the invite is used up by one)."""

    def own(result: dict[str, Any]) -> str:
        if not result["invite"]:
            raise WorkerSetupError("this is a worker's FURL, not an invite")
        return str(result["furl"])

    d = resolve_credential(invite_furl, reactor=reactor, timeout=timeout, key=key, progress=progress,
                           invite_key=key)
    d.addCallback(own)
    return d


def check_writable(basedir: Path) -> None:
    """The basedir (or the directory that would hold it) must be writable by us: checked before an
    invite is consumed, so a worker admin's typo does not cost a use."""
    target = Path(basedir).absolute()
    while not target.exists():
        if target.parent == target:
            break
        target = target.parent
    if not target.is_dir():
        raise WorkerSetupError(f"cannot write {basedir}: {target} is not a directory")
    if not os.access(target, os.W_OK | os.X_OK):
        raise WorkerSetupError(f"cannot write {basedir}: {target}: permission denied")


def create_worker(
    basedir: Path,
    credential_text: str,
    *,
    reactor: Any,
    resume: int,
    timeout: float = DEFAULT_TIMEOUT,
    force: bool = False,
    progress: Progress | None = None,
) -> defer.Deferred[dict[str, Any]]:
    """Everything ``bbenroll worker create`` does; fires with its result (what ``--json`` shows).

    Every local check (the FURL's form, the basedir, an existing tac without ``force``, the
    key) happens before the master is contacted, so an invite is consumed only when the
    basedir can then be written. The worker's FURL is bound to the basedir's key at once.
    """
    tell = progress or _quiet
    try:
        parse_furl(credential_text.strip())
        check_basedir(basedir, force)
        check_writable(basedir)
        key = worker_key(basedir)  # the basedir's own, or a new one written with the rest
    except Exception:
        return defer.fail()
    written: dict[str, Any] = {}
    credential: dict[str, Any] = {}

    deadline = reactor.seconds() + timeout

    def fetch(resolved: dict[str, Any]) -> Any:
        credential.update(resolved)
        return _retrying(lambda: fetch_worker_config(
            resolved["furl"], reactor=reactor, timeout=timeout, progress=tell, key=key
        ), reactor, deadline)

    def write(config: dict[str, Any]) -> Any:
        tell(f"writing {basedir}")
        written.update(create_worker_dir(basedir, credential["furl"], config, resume=resume, force=force,
                                         key=key))
        # bound only once the key is on disk: a basedir that could not be written binds nothing
        return _retrying(lambda: bind_worker_key(
            credential["furl"], reactor=reactor, timeout=timeout, progress=tell, key=key
        ), reactor, deadline)

    def done(bound: Any) -> dict[str, Any]:
        result = {**written, "bound": bound}
        if credential["invite"]:  # (a worker FURL's result keeps its keys as before invites)
            result["enrolled_by"] = credential["enrolled_by"]
        return result

    def failed(failure: Any) -> Any:
        if written and failure.check(WorkerSetupError):
            raise WorkerSetupError(
                f"{basedir} is written, but the FURL could not be bound to this worker's key: {failure.value}"
            )
        if credential.get("invite") and not written and failure.check(WorkerSetupError):
            # the invite is spent: say what the master made of it, or the worker is lost
            raise WorkerSetupError(
                f"enrolled as worker {credential['name']!r}, but {failure.value}; "
                "ask the master admin for its FURL (bbenroll show NAME)"
            )
        return failure

    # first with the worker's key: a worker FURL may be bound to it. An invite's enroll goes over
    # a second connection with a throwaway key: the master holds the invite connection until its
    # answer has left, and Foolscap drops one of two connections with the same TubID, which the
    # next connection (the worker's key, fetching its settings) would be
    d = resolve_credential(credential_text, reactor=reactor, timeout=timeout, key=key, progress=tell,
                           announce=False, invite_key=None)
    d.addCallback(fetch)
    d.addCallback(write)
    d.addCallbacks(done, failed)
    return d
