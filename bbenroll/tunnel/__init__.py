"""The resumable tunnel: byte streams between buildbot-worker and the master's PB port.

``core`` is the protocol (pure, no I/O, time passed in) over the values of
``frames`` and the per-stream lifecycle of ``stream``; ``wire`` maps frames onto
Foolscap calls; ``adapter`` drives a core from a clock and a Foolscap peer for
``master_side`` and ``worker_side``; ``transport`` is what buildbot-worker's
protocol takes for its TCP connection; ``endpoint`` is what buildbot-worker connects
through; ``failures`` classifies connect failures by type; ``furlfile`` reads and
writes the worker's ``bbenroll.furl``; ``updater`` moves the worker's tunnel to a
FURL the master pushed (docs/rotation.md).
"""
