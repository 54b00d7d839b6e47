"""Invites with a real Buildbot master (docs/performance.md, "Invites").

Run from the root of a checkout (everything on 127.0.0.1, throwaway directories)::

    .venv/bin/python bench/bench_invites.py [--n 5] [--fleet 50] [--no-debounce]

1. redemption to attached: ``--n`` times one after the other, a fresh single-use invite,
   ``bbenroll worker create BASEDIR INVITE``, ``buildbot-worker start``, until Buildbot's
   REST API shows the worker connected; median and maximum;
2. a fleet: ``--fleet`` concurrent ``worker create`` processes with ONE reusable invite
   (all from 127.0.0.1, so the guard's per-address bounds apply to all of them), then every
   worker started: wall time to all enrolled and to all attached, and how many Buildbot
   reconfigs (its "configuration update complete" lines) the enrollments caused.

``--no-debounce`` turns the hook's reconfig debounce off (RECONFIG_QUIET = 0), to see what it saves.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.buildbot import wait_for
from tests.helpers.invites_master import InviteFarm, make_invite


def redemption_to_attached(farm: InviteFarm, tmp: Path, n: int) -> list[float]:
    times = []
    for i in range(n):
        _, invite = make_invite(farm.registry, name=f"single{i}", ttl=timedelta(minutes=10))
        started = time.monotonic()
        proc = farm.create(tmp / f"single{i}", invite)
        assert proc.returncode == 0, proc.stderr
        farm.start_worker(tmp / f"single{i}")
        wait_for(lambda i=i: f"single{i}" in farm.connected(), timeout=120, interval=0.1,
                 what=f"single{i} attached")
        times.append(time.monotonic() - started)
    return times


def fleet(farm: InviteFarm, tmp: Path, count: int) -> dict[str, float]:
    _, invite = make_invite(farm.registry, prefix="fleet", reusable=True, ttl=timedelta(minutes=30))
    time.sleep(3)  # the reconfigs of part 1 are over
    before = farm.reconfigs()
    bases = [tmp / f"fleet{i}" for i in range(count)]
    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        procs = list(pool.map(lambda b: farm.create(b, invite), bases))
    enrolled = time.monotonic() - started
    failed = [p.stderr for p in procs if p.returncode != 0]
    assert not failed, failed[:3]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(farm.start_worker, bases))
    names = {p.stdout.strip() for p in procs}
    assert len(names) == count
    wait_for(lambda: sum(n.startswith("fleet-") for n in farm.connected()) == count, timeout=600,
             interval=0.5, what="every fleet worker attached")
    attached = time.monotonic() - started
    time.sleep(3)  # a debounced reconfig still to come would show now
    return {"enrolled": enrolled, "attached": attached, "reconfigs": farm.reconfigs() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--fleet", type=int, default=50)
    parser.add_argument("--no-debounce", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-invites-") as directory:
        tmp = Path(directory)
        farm = InviteFarm(tmp, debounce=not args.no_debounce)
        try:
            single = redemption_to_attached(farm, tmp, args.n) if args.n else []
            result = fleet(farm, tmp, args.fleet) if args.fleet else {}
        finally:
            farm.stop()
    print(f"debounce: {'off' if args.no_debounce else 'on'}")
    if single:
        print(f"redemption to attached, {len(single)} one after the other: median "
              f"{statistics.median(single):.2f} s, max {max(single):.2f} s")
    if result:
        print(f"{args.fleet} concurrent enrollments from one reusable invite: all enrolled in "
              f"{result['enrolled']:.1f} s, all attached in {result['attached']:.1f} s, "
              f"{result['reconfigs']} Buildbot reconfigs")


if __name__ == "__main__":
    main()
