#!/usr/bin/env python3
"""How a revert's cost grows with the number of entities the actor touched, against writing those entities.

For each N: one actor creates N Contacts in batches of 1,000 (the baseline: the same number of events, written
as the batches a client would send), then another actor reverts that actor with dryRun (one transaction and one
savepoint over N deletes, rolled back). Prints seconds and the ratio revert / batches: flat in N means linear.

Run:  .venv/bin/python bench/revert_scaling.py [--sizes 3000,6000,12000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from server.schema import load_schemas
from server.store import Store


def measure(n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d, Store(Path(d), load_schemas()) as store:
        start = time.perf_counter()
        for b in range(n // 1000):
            ops = [{"action": "create", "type": "Contact", "data": {"name": f"c{b}-{i}"}} for i in range(1000)]
            store.do("acme", "agent_bulk", {"operations": ops})
        batches = time.perf_counter() - start
        start = time.perf_counter()
        request = {"action": "revert", "actor": "agent_bulk", "since": "2000-01-01", "dryRun": True}
        result = store.do("acme", "user_admin", request)
        revert = time.perf_counter() - start
        assert len(result["events"]) == n, len(result["events"])
    return batches, revert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="3000,6000,12000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    print(f"{'N':>7}  {'batches s':>9}  {'revert dryRun s':>15}  {'revert / batches':>16}")
    for n in sizes:
        batches, revert = measure(n)
        print(f"{n:>7,}  {batches:>9.2f}  {revert:>15.2f}  {revert / batches:>15.2f}x")


if __name__ == "__main__":
    main()
