"""What the worker's key costs at each tunnel start (docs/performance.md, "The worker's key").

Run from the root of a checkout::

    .venv/bin/python bench/bench_worker_key.py [--n 30]

Both ways a worker process starts its client Tub, ``--n`` times each, interleaved, in one run,
CPU time of this process (``time.process_time``):

- baseline, a random key: ``start_client_tub()`` (Foolscap mints an RSA-2048 key and
  certificate), as a tunnel without a key file did at every start;
- the persistent key: ``persistent_worker_key`` (read and checked: mode, key, certificate)
  then ``start_client_tub(pem)``, as every tunnel start does now.

Prints the medians and their ratio; each Tub is stopped again.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bbenroll.tunnel.wire import start_client_tub
from bbenroll.worker.setup import KEY_FILE, persistent_worker_key


def cpu_of(start: Callable[[], object]) -> float:
    began = time.process_time()
    tub = start()
    spent = time.process_time() - began
    tub.stopService()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30)
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / KEY_FILE
        persistent_worker_key(key_file)  # made once, as the first start of a basedir does
        random_key, persistent = [], []
        for _ in range(n):
            random_key.append(cpu_of(start_client_tub))
            persistent.append(cpu_of(lambda: start_client_tub(persistent_worker_key(key_file))))
    base, ours = statistics.median(random_key), statistics.median(persistent)
    print("| client Tub start | median CPU |")
    print("|:---|---:|")
    print(f"| random key (baseline) | {base * 1000:.1f} ms |")
    print(f"| persistent key, read and checked | {ours * 1000:.1f} ms |")
    print(f"| ratio (persistent / random) | {ours / base:.3f} |")


if __name__ == "__main__":
    main()
