"""The master's Foolscap service alone (no Buildbot), in a process of its own, for tests that
run the real `bbenroll worker ...` commands against it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

SERVE = textwrap.dedent("""
    import sys
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from bbenroll.master.service import EnrollmentService
    if len(sys.argv) > 2:  # its log, for tests that look for (or for the absence of) secrets in it
        globalLogBeginner.beginLoggingTo([textFileLogObserver(open(sys.argv[2], "a"))],
                                         redirectStandardIO=False)
    service = EnrollmentService(sys.argv[1], reactor=reactor, poll_interval=0.2)
    service.startService()
    print("ready", flush=True)
    reactor.run()
""")


@contextlib.contextmanager
def serving(registry: Path, log: Path | None = None) -> Iterator[Path]:
    """The service over ``registry`` until the block ends; yields ``registry``."""
    argv = [sys.executable, "-c", SERVE, str(registry)] + ([str(log)] if log is not None else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        yield registry
    finally:
        proc.terminate()
        proc.wait(timeout=30)
