#!/usr/bin/env python
"""Does a flush commit get slower as the table ages? Many small flush rounds (each: one event in each of
`--tenants` tenants, then `Flusher.flush()` with one kept Flusher, as the server's background flush), timed one by
one, in two variants run in the same process one after the other, each on a fresh data dir:

  ours      the flusher as it is: it expires the snapshots its appends superseded (server/lake/snapshots.py) and
            appends merge small manifests (commit.manifest-merge.enabled);
  before    the same flusher with neither: expire_at too large to be reached, and the table's
            commit.manifest-merge.enabled set to false after its first commit (pyiceberg's fast append).

For each, the median time of a round over the first and over the last `--window` rounds, and their ratio (1.0x:
a commit costs what it cost on the first day), plus, at the end, the snapshots kept, the size of the current
metadata file and the manifests of the current snapshot. `--grace` stands in for the server's one minute: the
server flushes every 5 s, so a minute is 12 rounds; here a round takes ~0.1-0.2 s, so the default 2 s is about
as many rounds.

Run:  flock /tmp/headlessly-bench.lock .venv/bin/python bench/lake_growth.py               (~6 minutes)
      .venv/bin/python bench/lake_growth.py --quick                                      (smoke run, seconds)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import FINGERPRINT, log, warn_if_sources_changed


def isolate_pyiceberg(home: Path) -> None:
    """No .pyiceberg.yaml ($PYICEBERG_HOME, ~, cwd) and no PYICEBERG_* variable may reach this run."""
    assert "pyiceberg" not in sys.modules, "pyiceberg was imported before it was isolated"
    for name in list(os.environ):
        if name.upper().startswith("PYICEBERG_"):
            del os.environ[name]
    os.environ["HOME"] = str(home)
    os.chdir(home)


def run(base: Path, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    from server.lake import catalog as cat
    from server.lake.flusher import Flusher
    from server.store import Store

    store = Store(base / variant)
    tenants = [f"t{i}" for i in range(args.tenants)]

    def write(n: int) -> None:
        for tenant in tenants:
            store.do(
                tenant, "agent_bench", {"action": "create", "type": "Deal", "data": {"name": f"Deal {n}", "value": n}}
            )

    ours = variant == "ours"
    flusher = Flusher(store, expire_at=20 if ours else 10**9, grace=timedelta(seconds=args.grace))
    write(0)
    flusher.flush()
    if not ours:  # fast appends: the property off, and not set back by the next flush
        with flusher.table.transaction() as tx:
            tx.set_properties({"commit.manifest-merge.enabled": "false"})
        flusher._table = None  # reloaded, with the property
        cat.WRITE_PROPERTIES = {k: v for k, v in cat.WRITE_PROPERTIES.items() if k != "commit.manifest-merge.enabled"}
    times: list[float] = []
    for n in range(1, args.rounds + 1):
        write(n)
        start = time.perf_counter()
        flusher.flush()
        times.append(time.perf_counter() - start)
        if n % max(1, args.rounds // 10) == 0:
            log(f"{variant}: {n}/{args.rounds} rounds, last {times[-1] * 1000:.0f} ms")
    table = flusher.table.refresh()
    metadata_kib = os.path.getsize(table.metadata_location.removeprefix("file://")) / 1024
    store.close()
    return {
        "first": statistics.median(times[: args.window]),
        "last": statistics.median(times[-args.window :]),
        "snapshots": len(table.metadata.snapshots),
        "metadata_kib": metadata_kib,
        "manifests": len(table.current_snapshot().manifests(table.io)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=600)
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--window", type=int, default=50, help="rounds in each median (first and last)")
    parser.add_argument("--grace", type=float, default=2.0, help="seconds (the server: 60 s, 12 of its rounds)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.window, args.grace = 60, 10, 0.2
    with tempfile.TemporaryDirectory(prefix="lake-growth-") as tmp:
        base = Path(tmp)
        isolate_pyiceberg(base)
        print(
            f"lake_growth: server sources {FINGERPRINT}, {args.rounds} rounds of {args.tenants} tenant(s) x 1 "
            f"event, medians over the first and last {args.window} rounds, grace {args.grace} s, {os.cpu_count()} cpus"
        )
        results = {variant: run(base, variant, args) for variant in ("ours", "before")}
    print()
    print("variant  first (ms)  last (ms)  last / first  snapshots  metadata (KiB)  manifests")
    print("-------  ----------  ---------  ------------  ---------  --------------  ---------")
    for variant, r in results.items():
        print(
            f"{variant:<7}  {r['first'] * 1000:10.1f}  {r['last'] * 1000:9.1f}  {r['last'] / r['first']:11.2f}x"
            f"  {r['snapshots']:9d}  {r['metadata_kib']:14.1f}  {r['manifests']:9d}"
        )
    ours, before = results["ours"], results["before"]
    print(f"\nlast {args.window} rounds, ours / before: {ours['last'] / before['last']:.2f}x")
    warn_if_sources_changed()


if __name__ == "__main__":
    main()
