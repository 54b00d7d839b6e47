"""The one exception tree of bbenroll.

Every error a user can cause is a :class:`BBEnrollError` whose ``str()`` is the
complete one-line message the user reads. The CLI turns these into exit status 1
in a single place (``bbenroll.cli.run``); anything else is a bug.
"""

from __future__ import annotations


class BBEnrollError(Exception):
    """Base class: the message is what the user reads."""

    exit_code = 1


class FurlError(BBEnrollError):
    """A FURL, connection hint or swissnum is malformed."""


class TimeSpecError(BBEnrollError):
    """A duration or date given by the user cannot be understood."""


class InvalidName(BBEnrollError):
    """A worker name breaks Buildbot's rules."""


class RegistryError(BBEnrollError):
    """The registry file is missing, unreadable, malformed or inconsistent.

    ``where`` is the file, optionally with ``:line[:column]`` and/or a key path,
    and is put in front of the message so the user knows where to look.
    """

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")


class IdentityError(BBEnrollError):
    """The master's TLS identity file is missing, unreadable or malformed."""


class WorkerNotFound(BBEnrollError):
    """The named worker is not in the registry."""


class WorkerExists(BBEnrollError):
    """A worker of that name already exists."""


class WrongState(BBEnrollError):
    """The operation does not apply to the worker in its current state."""


class LockTimeout(BBEnrollError):
    """Another process held the registry lock for too long."""
