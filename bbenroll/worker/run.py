"""``bbenroll worker run BASEDIR``: the worker as a foreground service (containers, systemd).

It creates the worker in BASEDIR when there is none yet (from a FURL or an invite;
only then is an invite consumed: a restart reuses the basedir), then runs
buildbot-worker in the foreground as its child and exits with its status.

The child is ``twistd --nodaemon --no_save --pidfile= -y buildbot.tac`` run by this
very interpreter, not ``buildbot-worker start --nodaemon``: that one calls twistd's
``run()`` and then returns 0 whatever happened, and a wrapper process adds nothing
but a layer between our signals and the reactor. ``--pidfile=`` matters in
containers: a stale ``twistd.pid`` from a killed container holds a PID that a fresh
container reuses, and twistd would refuse to start ("Another twistd server is running").

Exit statuses (docs/deploy.md):

- 0: the worker stopped because it was asked to (SIGTERM, SIGINT, SIGHUP), or on its own, cleanly;
- 1: bad input, or the worker could not be created (nothing is started);
- :data:`EXIT_REFUSED` (3): the master refused this worker for good (revoked, removed,
  expired, retired, unknown): a restart cannot help, so a supervisor should not restart it
  (systemd ``RestartPreventExitStatus=3``);
- any other: the child's own status (128 + N when it died of signal N that nobody sent it).

The refusal reaches us through a file: the child runs with ``BBENROLL_EXIT_ON_REFUSAL=1``,
and its tunnel (tunnel/endpoint.py), on a permanent refusal, writes
``BASEDIR/bbenroll.refused`` and stops its reactor.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from bbenroll.errors import BBEnrollError
from bbenroll.fileio import atomic_write
from bbenroll.times import format_time
from bbenroll.worker.setup import FURL_FILE, KEY_FILE

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REFUSED = 3

REFUSED_MARKER = "bbenroll.refused"
ENV_EXIT_ON_REFUSAL = "BBENROLL_EXIT_ON_REFUSAL"
ENV_FURL = "BBENROLL_FURL"
ENV_INVITE = "BBENROLL_INVITE"
ENV_FURL_FILE = "BBENROLL_FURL_FILE"
ENV_INVITE_FILE = "BBENROLL_INVITE_FILE"

FORWARDED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)
MAX_CREDENTIAL_BYTES = 16 * 1024  # far above any FURL; stops reading a log or /dev/zero by mistake
POLL_INTERVAL = 0.2  # s between two looks at the child and its log
STOP_GRACE = 30.0  # s the child gets to stop after we give up on it (an error of ours), before SIGKILL


class RunError(BBEnrollError):
    """``worker run`` ends with a status other than 1 (the refusal, the child's own status)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Credential:
    """What creates the worker: a worker FURL or an invite FURL, and where it was read (for messages)."""

    kind: str  # "furl" or "invite"
    text: str
    source: str


def _read_credential_file(path: Path, kind: str, source: str) -> Credential:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as e:
        raise BBEnrollError(f"{source}: cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_CREDENTIAL_BYTES:
        raise BBEnrollError(f"{source}: {path} holds over {MAX_CREDENTIAL_BYTES} bytes, which is not a FURL")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BBEnrollError(f"{source}: {path} is not UTF-8 text (byte {e.start + 1})") from None
    if kind == "furl":
        from bbenroll.tunnel.furlfile import FurlFileError, parse_furl_text

        try:  # a worker's own bbenroll.furl (with its "# serial N" line) works too
            text = parse_furl_text(text, f"{source} ({path})").furl
        except FurlFileError as e:
            raise BBEnrollError(str(e)) from None
    text = text.strip()
    if not text:
        raise BBEnrollError(f"{source}: {path} is empty")
    return Credential(kind, text, f"{source} ({path})")


def find_credential(
    furl_file: Path | None, invite_file: Path | None, environ: Mapping[str, str]
) -> Credential | None:
    """The credential the options or the environment give; None when there is none.

    Options win over the environment; two sources of the same level are an error, not a
    guess (which one would the admin expect?). The text is checked as a FURL here, so that
    a typo is one line at once rather than a failed connection.
    """
    from bbenroll.furl import parse_furl

    if furl_file is not None and invite_file is not None:
        raise BBEnrollError("give --furl-file or --invite-file, not both")
    if furl_file is not None:
        found = _read_credential_file(furl_file, "furl", "--furl-file")
    elif invite_file is not None:
        found = _read_credential_file(invite_file, "invite", "--invite-file")
    else:
        names = [n for n in (ENV_FURL, ENV_INVITE, ENV_FURL_FILE, ENV_INVITE_FILE) if environ.get(n)]
        if not names:
            return None
        if len(names) > 1:
            raise BBEnrollError(f"{', '.join(names)} are set at once; set only one")
        name = names[0]
        kind = "invite" if "INVITE" in name else "furl"
        if name.endswith("_FILE"):
            found = _read_credential_file(Path(environ[name]), kind, name)
        else:
            text = environ[name].strip()
            if kind == "furl":
                from bbenroll.tunnel.furlfile import FurlFileError, parse_furl_text

                try:
                    text = parse_furl_text(text, name).furl
                except FurlFileError as e:
                    raise BBEnrollError(str(e)) from None
            found = Credential(kind, text, name)
    try:
        parse_furl(found.text)
    except BBEnrollError as e:
        raise BBEnrollError(f"{found.source}: {e}") from None
    return found


def basedir_ready(basedir: Path) -> bool:
    """Whether BASEDIR holds a complete worker (the tac, its FURL file and, if it names one, its key).

    ``worker create`` writes the tac first, then the FURL file, then the key: a crash in
    between leaves a tac whose tunnel can never connect, which a supervisor would restart
    forever. Such a basedir is not ready: it is created again (``force``).
    """
    tac = Path(basedir) / "buildbot.tac"
    if not tac.is_file():
        return False
    if not (Path(basedir) / FURL_FILE).is_file():
        return False
    try:
        names_key = "keyfile=" in tac.read_text(errors="replace")
    except OSError:
        return True  # unreadable here: twistd will say why, in its own words
    return not names_key or (Path(basedir) / KEY_FILE).is_file()


# -- the refusal marker ----------------------------------------------------------------------


def marker_text(when: datetime, message: str) -> str:
    """The marker's one line: when (UTC) and the master's message, never the FURL."""
    flat = " ".join(message.split())  # one line, whatever the master said
    return f"{format_time(when)} {flat}\n"


def write_refused_marker(basedir: Path, when: datetime, message: str) -> Path:
    """Write ``BASEDIR/bbenroll.refused`` (0600, atomic); the path."""
    path = Path(basedir) / REFUSED_MARKER
    atomic_write(path, marker_text(when, message).encode("utf-8"))
    return path


def read_refused_marker(basedir: Path) -> str | None:
    """The marker's line (stripped), or None when there is no marker."""
    path = Path(basedir) / REFUSED_MARKER
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"(cannot read {path}: {e.strerror})"
    return " ".join(text.split())[:2000] or "(no reason given)"


def remove_refused_marker(basedir: Path) -> None:
    """A marker from an earlier run is stale: this run decides afresh."""
    with contextlib.suppress(FileNotFoundError):
        (Path(basedir) / REFUSED_MARKER).unlink()


# -- the child ---------------------------------------------------------------------------------

TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def twistd_command(python: str | None = None) -> list[str]:
    """The child's argv: twistd, in the foreground, by this interpreter (it has bbenroll's plugin)."""
    python = python or sys.executable
    return [python, "-c", TWISTD, "--nodaemon", "--no_save", "--pidfile=", "-y", "buildbot.tac"]


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: ours, with the refusal switch on and the secrets taken out
    (build steps inherit the worker's environment; the FURL or invite has no business there)."""
    secrets = (ENV_FURL, ENV_INVITE, ENV_FURL_FILE, ENV_INVITE_FILE)
    env = {k: v for k, v in environ.items() if k not in secrets}
    env[ENV_EXIT_ON_REFUSAL] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def exit_status(returncode: int, forwarded: set[int], refused: str | None) -> int:
    """``worker run``'s exit status for a child that ended with ``returncode`` (Popen's: -N for signal N).

    A child that died of a signal we passed on to it stopped as asked: 0 (twistd kills
    itself with the signal that stopped its reactor, once it has shut down cleanly). The
    child's own 3 becomes 1, so that 3 always means the refusal a supervisor must not retry.
    """
    if refused is not None:
        return EXIT_REFUSED
    if returncode < 0:
        return EXIT_OK if -returncode in forwarded else 128 - returncode
    if returncode == EXIT_REFUSED:
        return EXIT_ERROR
    return returncode


class LogFollower:
    """Copies what is appended to ``path`` (twistd.log, written by the tac's own log observer) to
    ``out``, following the log's rotation: containers and journald read stdout, not files."""

    def __init__(self, path: Path, out: IO[bytes]) -> None:
        self.path = Path(path)
        self.out = out
        self.file: IO[bytes] | None = None
        self._open(at_end=True)  # what earlier runs wrote was shown then

    def _open(self, at_end: bool) -> None:
        try:
            self.file = open(self.path, "rb")  # kept open between pumps
        except OSError:
            self.file = None
            return
        if at_end:
            self.file.seek(0, os.SEEK_END)

    def _copy(self) -> None:
        assert self.file is not None
        data = self.file.read()
        if data:
            self.out.write(data)
            self.out.flush()

    def pump(self) -> None:
        """Copy what is new; after a rotation, the rest of the old file, then the new one from its start."""
        if self.file is None:
            self._open(at_end=False)
            if self.file is None:
                return
        self._copy()
        try:
            now = os.stat(self.path)
        except OSError:
            return
        if now.st_ino != os.fstat(self.file.fileno()).st_ino or now.st_size < self.file.tell():
            self.file.close()
            self._open(at_end=False)
            if self.file is not None:
                self._copy()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class Outcome:
    returncode: int
    forwarded: set[int]


def supervise(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    follow: LogFollower | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], Any] | None = None,
    stdout: int | None = None,
) -> Outcome:
    """Run ``command`` in the foreground until it exits, passing SIGTERM, SIGINT and SIGHUP on.

    Must run in the main thread (signal handlers). The child gets its own process group: a
    Ctrl-C on the terminal reaches us only, and we pass it on once (twistd stopping twice
    logs errors). Should we fail ourselves, the child is stopped, never left behind.
    ``stdout``: a file descriptor for the child's stdout (None: ours; ``--json`` keeps it off it).
    """
    forwarded: set[int] = set()
    child = subprocess.Popen(list(command), cwd=cwd, env=dict(env), process_group=0, stdout=stdout)

    def forward(signum: int, frame: Any) -> None:
        forwarded.add(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        if on_start is not None:
            on_start(child)
        while True:
            try:
                returncode = child.wait(timeout=POLL_INTERVAL)
                break
            except subprocess.TimeoutExpired:
                pass
            if follow is not None:
                follow.pump()
        if follow is not None:
            follow.pump()  # the child's last words
        return Outcome(returncode, forwarded)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if child.poll() is None:  # we failed, not the child: stop it, then make sure
            child.terminate()
            try:
                child.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if follow is not None:
            follow.close()


# -- creating the worker -------------------------------------------------------------------------


def create_worker(
    basedir: Path,
    credential: Credential,
    *,
    reactor: Any,
    resume: int,
    timeout: float,
    force: bool,
    progress: Callable[[str], None],
) -> Any:
    """Create the worker in BASEDIR from ``credential`` (a worker FURL or an invite), exactly as
    ``bbenroll worker create`` does: a Deferred firing with what was written."""
    from twisted.internet import defer

    from bbenroll.worker import enroll

    return defer.maybeDeferred(
        enroll.create_worker, basedir, credential.text, reactor=reactor, resume=resume,
        timeout=timeout, force=force, progress=progress,
    )
