"""The worker admin's side: turn a FURL into a ready buildbot-worker basedir.

``bbenroll worker create BASEDIR FURL`` connects once over the FURL (checking
the master's identity and the worker's secret), fetches the worker's name and
PB password over the encrypted link, and writes a normal buildbot-worker
basedir whose ``connection_string`` goes through bbenroll's tunnel. The stock
``buildbot-worker start BASEDIR`` then runs it; no port is opened locally.

The basedir keeps one key, ``bbenroll.pem`` (0600): every Foolscap connection
of this worker (``worker create``, the tunnel, a pushed update's test) is made
with it, so the worker has one TubID, and ``worker create`` asks the master to
bind the FURL to it (``bind_key``, docs/security.md).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bbenroll.errors import BBEnrollError
from bbenroll.fileio import atomic_write
from bbenroll.furl import parse_furl
from bbenroll.tunnel.furlfile import furl_file_text

FURL_FILE = "bbenroll.furl"
KEY_FILE = "bbenroll.pem"  # the worker's key and certificate: its TubID, to which the FURL is bound
DEFAULT_TIMEOUT = 30.0  # seconds to reach the master and fetch the settings
MIN_TIMEOUT, MAX_TIMEOUT = 1.0, 600.0  # what ``worker create --timeout`` accepts


class WorkerSetupError(BBEnrollError):
    transient = False  # the connection was lost before the answer: trying again may work


def escape_endpoint_value(value: str) -> str:
    """Escape a value for a Twisted endpoint string (``:``, ``=`` and ``\\``)."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def connection_string(furl_file: Path, resume: int, key_file: Path | None = None) -> str:
    text = f"bbenroll:furlfile={escape_endpoint_value(str(furl_file))}:resume={resume}"
    if key_file is not None:  # without it: bbenroll.pem beside the FURL file, made at first start
        text += f":keyfile={escape_endpoint_value(str(key_file))}"
    return text


def worker_key(basedir: Path) -> bytes:
    """The worker's key (PEM, key and certificate): ``BASEDIR/bbenroll.pem`` if it exists, else a
    new one, not written yet (:func:`create_worker_dir` writes it with the rest).

    An existing key is always kept, ``--force`` or not: the master may have bound the
    worker's FURL to it, and a new key would lock the worker out.
    """
    from bbenroll.identity import make_identity_pem

    pem = read_worker_key(Path(basedir) / KEY_FILE)
    return pem if pem is not None else make_identity_pem("bbenroll worker")


def read_worker_key(path: Path) -> bytes | None:
    """The worker's key file at ``path`` (PEM), checked; None if there is none.

    The one reader of ``bbenroll.pem``, for ``worker create`` and the tunnel alike: a
    symlink, a file others may read, or one that is not a matching key and certificate
    is a WorkerSetupError (one line), and the file is left as it is, never replaced,
    since the master may have bound the worker's FURL to the key inside it.
    """
    from bbenroll.fileio import permission_problem

    path = Path(path)
    if path.is_symlink():
        raise WorkerSetupError(f"{path} is a symbolic link; refusing to use it as the worker's key")
    try:
        pem = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no key yet (the write says what is wrong)
        return None
    except OSError as e:
        raise WorkerSetupError(f"{path}: cannot read the worker's key: {e.strerror}") from None
    problem = permission_problem(path)
    if problem is not None:  # a key others could read may have leaked: the admin decides
        raise WorkerSetupError(f"the worker's key {problem}")
    check_key(pem, str(path))
    return pem


def persistent_worker_key(path: Path) -> bytes:
    """The worker's key at ``path``, made and written there (0600, atomically) if missing.

    For a basedir whose tac names no ``keyfile=`` (made before binding): its tunnel gets a
    key of its own once, instead of minting a new one (80 ms of CPU) at every start. Two
    processes racing to make it both end up with the one that was written first.
    """
    from bbenroll.identity import make_identity_pem

    pem = read_worker_key(path)
    if pem is not None:
        return pem
    try:
        atomic_write(Path(path), make_identity_pem("bbenroll worker"), exclusive=True)
    except FileExistsError:
        pass  # another process wrote it first: that one is the worker's key
    except OSError as e:
        raise WorkerSetupError(f"cannot write the worker's key {path}: {e.strerror}") from None
    pem = read_worker_key(path)
    if pem is None:
        raise WorkerSetupError(f"{path}: the worker's key vanished right after it was written")
    return pem


def check_key(pem: bytes, where: str) -> str:
    """The TubID of a worker key file's content; WorkerSetupError unless it holds a private key
    and the certificate of that key (what Foolscap's Tub needs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from bbenroll.errors import IdentityError
    from bbenroll.identity import tubid_from_pem

    again = "move it away to make a new key"
    if b"PRIVATE KEY-----" not in pem:
        raise WorkerSetupError(f"{where}: no PEM private key found; {again}")
    try:
        tubid = tubid_from_pem(pem, where)
    except IdentityError as e:
        raise WorkerSetupError(f"{e}; {again}") from None
    try:
        # the key's own checks are skipped: Foolscap made or loads it; a corrupt one fails to parse
        key = load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
        certificate = x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError):
        raise WorkerSetupError(f"{where}: the key or certificate is corrupt; {again}") from None
    if key.public_key() != certificate.public_key():
        raise WorkerSetupError(f"{where}: the certificate is not the key's own; {again}")
    return tubid


def fetch_worker_config(
    furl: str,
    *,
    reactor: Any,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Callable[[str], None] | None = None,
    key: bytes | None = None,
) -> Any:
    """Connect once over ``furl`` and ask for this worker's configuration.

    Returns a Deferred that fires with the configuration dict, or fails with
    :class:`WorkerSetupError` (one line for the user). ``progress`` is told
    each step, for a terminal that wants to show it. The reactor is the
    caller's: the CLI runs this with ``task.react``. ``key``: the worker's key
    (PEM) to connect with; None: a random one.
    """
    tell = progress or (lambda text: None)

    def call(ref: Any) -> Any:
        tell("connected; the master's identity matches the FURL; fetching this worker's settings")
        return ref.callRemote("get_worker_config").addCallback(checked)

    def checked(config: Any) -> dict[str, Any]:
        if (
            not isinstance(config, dict)
            or not isinstance(config.get("name"), str)
            or not config.get("password")
        ):
            raise WorkerSetupError("the master sent an incomplete worker configuration")
        return config

    return _over_furl(furl, call, reactor=reactor, timeout=timeout, tell=tell, key=key)


def bind_worker_key(
    furl: str,
    *,
    reactor: Any,
    key: bytes,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """Connect over ``furl`` with the worker's ``key`` and ask the master to bind the FURL to it.

    Called once the basedir (and so the key) is written: a failed write binds nothing, so a
    rerun with a new key is never locked out. Fires with the master's answer
    (``{"status": "bound"|"already", "fingerprint": TUBID}``), or None from a master that
    does not bind FURLs; fails with :class:`WorkerSetupError` when the master refuses.
    """
    from bbenroll.tunnel.failures import FailureKind, classify

    tell = progress or (lambda text: None)

    def call(ref: Any) -> Any:
        tell("binding this FURL to this worker's key")
        d = ref.callRemote("bind_key")
        d.addCallbacks(lambda answer: answer if isinstance(answer, dict) else None, old_master)
        return d

    def old_master(failure: Any) -> Any:
        if classify(failure).kind is FailureKind.REFUSED:
            return failure  # one line for the user (_over_furl)
        return None  # a master before binding: nothing is bound

    return _over_furl(furl, call, reactor=reactor, timeout=timeout, tell=tell, key=key, announce=False)


def _over_furl(
    furl: str, call: Callable[[Any], Any], *, reactor: Any, timeout: float, tell: Callable[[str], None],
    key: bytes | None, announce: bool = True,
) -> Any:
    """One Foolscap connection over ``furl``: ``call(reference)``, bounded by ``timeout``, its
    failures as one :class:`WorkerSetupError` line, the client Tub stopped afterwards.
    ``announce``: tell where it connects (the first connection of a command does)."""
    from foolscap.api import DeadReferenceError
    from twisted.internet import defer
    from twisted.internet.error import ConnectionDone, ConnectionLost

    from bbenroll.tunnel.failures import classify
    from bbenroll.tunnel.wire import start_client_tub

    # the progress line says where it connects and for how long, never the secret
    hints = f"at {', '.join(parse_furl(furl).hints)}, for up to {timeout:.0f}s"
    tub = start_client_tub(key)
    if announce:
        tell(f"connecting to the master ({hints})")

    def failed(failure: Any) -> Any:
        if failure.check(WorkerSetupError):
            return failure
        if failure.check(defer.TimeoutError, defer.CancelledError):
            raise WorkerSetupError(
                f"cannot reach the master at any of the FURL's addresses (no answer in {timeout:.0f}s)"
            )
        error = WorkerSetupError(classify(failure).message)
        # lost before the answer (the master drops the oldest unauthenticated connections of an
        # address over its cap: many workers behind one NAT at once): worker/enroll.py tries again
        error.transient = failure.check(ConnectionLost, ConnectionDone, DeadReferenceError) is not None
        raise error

    def stopped(result: Any) -> Any:
        d = defer.maybeDeferred(tub.stopService)
        d.addBoth(lambda _: result)
        return d

    d = tub.getReference(furl)
    d.addCallback(call)
    d.addTimeout(timeout, reactor)
    d.addErrback(failed)
    d.addBoth(stopped)
    return d


def check_basedir(basedir: Path, force: bool) -> None:
    """Refuse early (before contacting the master) to overwrite a worker."""
    tac = Path(basedir) / "buildbot.tac"
    if tac.is_symlink():  # buildbot-worker would write the PB password to wherever it points
        raise WorkerSetupError(f"{tac} is a symbolic link; refusing to write the worker's password to it")
    if tac.exists() and not force:
        raise WorkerSetupError(f"{tac} already exists; use --force to replace it")
    if Path(basedir).exists() and not Path(basedir).is_dir():
        raise WorkerSetupError(f"{basedir} exists and is not a directory")


def create_worker_dir(
    basedir: Path,
    furl: str,
    config: dict[str, Any],
    *,
    resume: int,
    force: bool = False,
    key: bytes | None = None,
) -> dict[str, Any]:
    """Write the buildbot-worker basedir. Secrets (tac, FURL, key) are mode 0600.

    ``key``: the worker's key (:func:`worker_key`), written to ``bbenroll.pem``
    (exclusively; an existing file is kept as it is) and named in the tac's
    connection string; None: no key file written now (the tunnel makes one beside the
    FURL file at its first start, :func:`persistent_worker_key`).

    All or nothing: when any step fails, what this call wrote is removed (and
    a basedir it made), and a ``--force``'d old ``buildbot.tac`` is put back,
    so that a rerun starts from where the admin was.
    """
    try:
        from buildbot_worker.scripts.create_worker import createWorker
        from buildbot_worker.scripts.runner import CreateWorkerOptions
    except ImportError:
        raise WorkerSetupError(
            "buildbot-worker is not installed here: pip install 'bbenroll[worker]'"
        ) from None
    master = parse_furl(furl).redacted()  # everything is checked before anything is written
    basedir = Path(basedir).absolute()
    check_basedir(basedir, force)
    tac = basedir / "buildbot.tac"
    furl_file = basedir / FURL_FILE
    key_file = basedir / KEY_FILE if key is not None else None
    undo = _Undo(basedir)
    try:
        basedir.mkdir(parents=True, exist_ok=True)
        if force:
            # buildbot-worker would write buildbot.tac.new beside a different old one,
            # leaving the worker on its old password
            undo.set_aside(tac)
            (basedir / "buildbot.tac.new").unlink(missing_ok=True)
        if os.name == "posix":
            os.chmod(basedir, 0o700)  # builds and secrets live here
        options = CreateWorkerOptions()
        options.parseOptions(
            [
                "--quiet",
                "--force",
                "--connection-string",
                connection_string(furl_file, resume, key_file),
                str(basedir),
                "unused:9989",
                config["name"],
                config["password"],
            ]
        )
        with contextlib.redirect_stdout(io.StringIO()) as said:  # its one-line reason, not on our stdout
            created = createWorker(options)
        if created != 0:
            reason = said.getvalue().strip().splitlines()[:1]
            raise WorkerSetupError(f"buildbot-worker could not create {basedir}: {' '.join(reason)}")
        # the secret, once all else worked: the FURL file's format (furlfile.py) at serial 0,
        # that is the FURL line alone; atomic_write itself, so that an OSError keeps its path
        atomic_write(furl_file, furl_file_text(furl).encode("ascii"))
        if key is not None and key_file is not None and not key_file.exists():
            atomic_write(key_file, key, exclusive=True)  # 0600; never replaces a key
        if os.name == "posix":
            os.chmod(tac, 0o600)  # it holds the PB password
    except BaseException as e:
        undo.roll_back()
        if isinstance(e, OSError):
            raise WorkerSetupError(f"cannot write {e.filename or basedir}: {e.strerror}") from None
        raise
    undo.commit()
    return {
        "basedir": str(basedir),
        "name": config["name"],
        "furl_file": str(furl_file),
        "tac": str(tac),
        "master": master,
        "key_file": str(key_file) if key_file is not None else None,
    }


class _Undo:
    """What :func:`create_worker_dir` must take back if it fails: the entries
    it added to ``basedir`` (or the directories it made for it), and a replaced tac."""

    ASIDE = ".buildbot.tac.bbenroll-old"

    def __init__(self, basedir: Path) -> None:
        self.basedir = basedir
        self.made: Path | None = None  # the topmost directory this call makes
        if not basedir.exists():
            self.made = basedir
            while not self.made.parent.exists():
                self.made = self.made.parent
        self.before = set() if self.made else set(os.listdir(basedir))
        self.aside: tuple[Path, Path] | None = None

    def set_aside(self, path: Path) -> None:
        if path.exists() or path.is_symlink():
            self.aside = (path, path.with_name(self.ASIDE))
            os.replace(*self.aside)
            self.before.discard(path.name)

    def roll_back(self) -> None:
        with contextlib.suppress(OSError):
            if self.made is not None:
                shutil.rmtree(self.made)
                return
            for name in set(os.listdir(self.basedir)) - self.before:
                entry = self.basedir / name
                if self.aside is not None and entry == self.aside[1]:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            if self.aside is not None:
                os.replace(self.aside[1], self.aside[0])

    def commit(self) -> None:
        if self.aside is not None:
            self.aside[1].unlink(missing_ok=True)
