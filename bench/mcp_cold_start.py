#!/usr/bin/env python
"""Cold start: from spawning the server to the answer of tools/list, `headlessly serve` against a bare MCPServer.

    headlessly   headlessly serve --data-dir <fresh empty dir>      (stdio)
    bare         python bench/bare_server.py stdio                   (the baseline: MCPServer + one echo tool)

Each run: t0, `async with Client(stdio_client(StdioServerParameters(...)))` (spawns the process and connects:
server/discover), `await client.list_tools()`, t1. The connect and the tools/list parts are also shown apart, and
the shutdown (leaving the client: stdin closed, process awaited) is timed for context. One untimed run of each
first (file cache), then `--runs` runs of each, alternating which goes first. Medians, min-max, and the ratio of
the medians; goal: headlessly <= 1.3x bare.

Then, what is heavy at start:
  * every import of the real server process up to the answer of tools/list (PYTHONPROFILEIMPORTTIME=1 on a
    real `headlessly serve` over stdio, its stderr cut at the moment tools/list was answered): the top
    `--top` top-level imports by cumulative time, the total per package (self time), and whether pyarrow,
    pyiceberg (or anything else of the lakehouse) was imported by then;
  * the in-process phases of `serve` (imports, load_schemas, Store, build_server), median of `--phase-runs`
    fresh interpreters, against the bare server's import + construction.

Run:  .venv/bin/python bench/mcp_cold_start.py            (defaults: about a minute)
      .venv/bin/python bench/mcp_cold_start.py --quick    (smoke run, seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from _common import ROOT, source_fingerprint
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

HEADLESSLY = str(Path(sys.executable).parent / "headlessly")
BARE = str(ROOT / "bench" / "bare_server.py")
GOAL = 1.3
FORBIDDEN = ("pyarrow", "pyiceberg", "pyiceberg_core")  # must not be imported at start
NOTABLE = ("sqlalchemy", "server.lake", "uvicorn", "starlette", "httpx2", "click", "rich")  # shown for context

# What `headlessly serve` (stdio) does before it serves, step by step, timed in one fresh interpreter.
PHASES_HEADLESSLY = r"""
import json, sys, tempfile, time
t = [time.perf_counter()]
import server.cli, click, logging; t.append(time.perf_counter())
from server.errors import SchemaError
from server.schema import load_schemas
from server.store import Hooks, Store; t.append(time.perf_counter())
from server.auth.identity import LocalIdentity
from server.tools.app import build_server; t.append(time.perf_counter())
from server.lake.background import BackgroundFlush; t.append(time.perf_counter())
schemas = load_schemas([]); t.append(time.perf_counter())
with tempfile.TemporaryDirectory() as d:
    store = Store(d, schemas, durability="normal", hooks=Hooks()); t.append(time.perf_counter())
    server = build_server(store, LocalIdentity("default", None)); t.append(time.perf_counter())
    store.close()
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("pyarrow", "pyiceberg", "pyiceberg_core", "sqlalchemy"))
print(json.dumps({"steps": [b - a for a, b in zip(t, t[1:])], "heavy": mods[:5], "modules": len(sys.modules)}))
"""
PHASES_HEADLESSLY_NAMES = [
    "import server.cli (click)",
    "import server.schema, server.store",
    "import server.tools.app (mcp SDK)",
    "import server.lake.background",
    "load_schemas()",
    "Store(data_dir)",
    "build_server()",
]
PHASES_BARE = r"""
import json, sys, time
t = [time.perf_counter()]
from mcp.server.mcpserver import MCPServer; t.append(time.perf_counter())
server = MCPServer(name="bare")
@server.tool()
def echo(text: str) -> str:
    return text
t.append(time.perf_counter())
print(json.dumps({"steps": [b - a for a, b in zip(t, t[1:])], "heavy": [], "modules": len(sys.modules)}))
"""
PHASES_BARE_NAMES = ["import mcp.server.mcpserver", "MCPServer() + echo tool"]


def server_params(which: str, data_dir: Path, env: dict[str, str] | None = None) -> StdioServerParameters:
    if which == "bare":
        return StdioServerParameters(command=sys.executable, args=[BARE, "stdio"], env=env)
    return StdioServerParameters(command=HEADLESSLY, args=["serve", "--data-dir", str(data_dir)], env=env)


async def one_start(which: str, data_dir: Path, log_path: Path) -> dict[str, float]:
    with log_path.open("a") as log:
        t0 = time.perf_counter()
        async with Client(stdio_client(server_params(which, data_dir), errlog=log)) as client:
            t1 = time.perf_counter()
            tools = await client.list_tools()
            t2 = time.perf_counter()
        t3 = time.perf_counter()
    if not tools.tools:
        raise RuntimeError(f"{which}: tools/list answered no tools")
    return {"total": t2 - t0, "connect": t1 - t0, "list": t2 - t1, "shutdown": t3 - t2, "tools": len(tools.tools)}


async def startups(args: argparse.Namespace, tmp: Path) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "headlessly": []}
    log = tmp / "servers.log"
    for which in ("bare", "headlessly"):  # untimed: the file cache
        await one_start(which, tmp / f"warm-{which}", log)
    for i in range(args.runs):
        order = ("bare", "headlessly") if i % 2 == 0 else ("headlessly", "bare")
        for which in order:
            runs[which].append(await one_start(which, tmp / f"run-{i}-{which}", log))
        print(
            f"  run {i + 1}/{args.runs}: bare {runs['bare'][-1]['total'] * 1e3:.0f} ms, "
            f"headlessly {runs['headlessly'][-1]['total'] * 1e3:.0f} ms",
            file=sys.stderr,
        )
    return runs


async def import_log(which: str, tmp: Path) -> str:
    """stderr of a real server run with PYTHONPROFILEIMPORTTIME=1, up to the moment tools/list was answered."""
    path = tmp / f"importtime-{which}.log"
    params = server_params(which, tmp / f"imports-{which}", env={"PYTHONPROFILEIMPORTTIME": "1"})
    with path.open("w") as log:
        async with Client(stdio_client(params, errlog=log)) as client:
            await client.list_tools()
            await anyio.sleep(0.2)  # stderr is unbuffered, but let the pipe drain
            cut = path.stat().st_size
    return path.read_bytes()[:cut].decode("utf-8", "replace")


IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def parse_imports(text: str) -> list[tuple[int, int, int, str]]:
    """(self µs, cumulative µs, depth, module) per import line."""
    out = []
    for line in text.splitlines():
        m = IMPORT_LINE.match(line)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
    return out


def pkg_of(module: str) -> str:
    top = module.split(".")[0]
    return "server." + module.split(".")[1] if top == "server" and "." in module else top


def report_imports(which: str, rows: list[tuple[int, int, int, str]], top: int) -> None:
    level0 = sorted((r for r in rows if r[2] == 0), key=lambda r: -r[1])
    total = sum(r[1] for r in rows if r[2] == 0)
    print(
        f"\n{which}: {len(rows)} modules imported by the time tools/list was answered, {total / 1e3:.0f} ms of imports"
    )
    print(f"  top {top} top-level imports by cumulative time:")
    for _self, cum_us, _d, mod in level0[:top]:
        print(f"    {cum_us / 1e3:>7.1f} ms  {mod}")
    by_pkg: dict[str, int] = {}
    for self_us, _c, _d, mod in rows:
        by_pkg[pkg_of(mod)] = by_pkg.get(pkg_of(mod), 0) + self_us
    print(f"  top {top} packages by own import time (self, summed over their modules):")
    for pkg, us in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {us / 1e3:>7.1f} ms  {pkg}")

    def imported(pkg: str) -> list[str]:
        return [mod for _s, _c, _d, mod in rows if mod == pkg or mod.startswith(pkg + ".")]

    for pkg in FORBIDDEN:
        print(
            f"  {pkg} imported at start: {'YES (' + str(len(imported(pkg))) + ' modules)' if imported(pkg) else 'no'}"
        )
    seen = [f"{pkg} ({len(imported(pkg))})" for pkg in NOTABLE if imported(pkg)]
    print(f"  also imported at start (modules): {', '.join(seen) or 'none of ' + ', '.join(NOTABLE)}")


def phases(args: argparse.Namespace) -> None:
    kinds = (("headlessly serve", PHASES_HEADLESSLY, PHASES_HEADLESSLY_NAMES), ("bare", PHASES_BARE, PHASES_BARE_NAMES))
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _c, _n in kinds}
    for i in range(args.phase_runs):  # alternating, like the starts
        for label, code, _names in kinds if i % 2 == 0 else kinds[::-1]:
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True, timeout=120
            )
            results[label].append(json.loads(done.stdout))
    for label, _code, names in kinds:
        runs = results[label]
        steps = [statistics.median(r["steps"][i] for r in runs) for i in range(len(names))]
        totals = sorted(sum(r["steps"]) for r in runs)
        print(f"\n{label}: in-process start-up phases, median of {args.phase_runs} fresh interpreters (alternating), "
              f"{runs[0]['modules']} modules in sys.modules at the end")  # fmt: skip
        for name, sec in zip(names, steps, strict=True):
            print(f"    {sec * 1e3:>7.1f} ms  {name}")
        print(
            f"    {statistics.median(totals) * 1e3:>7.1f} ms  total (median of totals; {totals[0] * 1e3:.0f}-{totals[-1] * 1e3:.0f})"
        )
        if runs[0]["heavy"]:
            print(f"  !! lakehouse modules in sys.modules: {runs[0]['heavy']}")


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]) -> None:
    print(
        f"\nCold start over stdio, spawn -> tools/list answered; {args.runs} runs each, alternating; median [min-max] ms"
    )
    header = (
        f"{'server':<11} {'total':>6} {'min-max':>11} {'connect':>8} {'tools/list':>10} {'shutdown':>9} {'tools':>5}"
    )
    print(header)
    print("-" * len(header))
    med: dict[str, float] = {}
    for which in ("bare", "headlessly"):
        r = runs[which]
        totals = [x["total"] * 1e3 for x in r]
        med[which] = statistics.median(totals)
        print(
            f"{which:<11} {med[which]:>6.0f} {min(totals):>5.0f}-{max(totals):<5.0f} "
            f"{statistics.median(x['connect'] for x in r) * 1e3:>8.0f} {statistics.median(x['list'] for x in r) * 1e3:>10.1f} "
            f"{statistics.median(x['shutdown'] for x in r) * 1e3:>9.0f} {int(r[0]['tools']):>5}"
        )
    ratio = med["headlessly"] / med["bare"]
    pair = sorted(h["total"] / b["total"] for h, b in zip(runs["headlessly"], runs["bare"], strict=True))
    print(f"ratio headlessly/bare (medians): {ratio:.2f}x  (per run pair: {pair[0]:.2f}-{pair[-1]:.2f}x)")
    print(f"goal: <= {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'}")


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    runs = await startups(args, tmp)
    report(args, runs)
    for which in ("headlessly", "bare"):
        report_imports(which, parse_imports(await import_log(which, tmp)), args.top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="timed starts of each server (10)")
    p.add_argument("--top", type=int, default=10, help="rows in the import tables (10)")
    p.add_argument("--phase-runs", type=int, default=5, help="fresh interpreters for the phase breakdown (5)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 runs each, 1 phase run")
    args = p.parse_args()
    if args.quick:
        args.runs, args.phase_runs = 2, 1
    print(f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f} at start; server sources {source_fingerprint()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hly-mcp-cold-") as tmp:
        anyio.run(main_async, args, Path(tmp))
    phases(args)


if __name__ == "__main__":
    main()
