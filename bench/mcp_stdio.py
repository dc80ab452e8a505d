#!/usr/bin/env python
"""End-to-end MCP calls over stdio: `headlessly serve` against a bare MCPServer, measured in the same run.

Both servers run as subprocesses, each reached by one SDK client (`Client(stdio_client(StdioServerParameters(...)))`,
what `Client(StdioServerParameters(...))` does, with the server's stderr sent to a file), calls made one at a time:

    echo    bench/bare_server.py stdio: tools/call echo {"text": "hello"}           (the baseline)
    do      headlessly serve --data-dir D: tools/call do {"action": "update", "type": "Deal", "id": X, "data": {"value": i}}
    fetch   headlessly serve --data-dir D: tools/call fetch {"type": "Deal", "id": X}

After a warm-up, each of `--rounds` rounds runs `--calls` calls of each variant in turn (order rotating), so that a
slow spell of the machine hits all of them alike. A variant's figure is its median round; each ratio is taken
within a round (variant calls/s / echo calls/s) and the table shows the median and min-max over rounds.
Diagnostics: p50/p99 latency of the median round's calls, server CPU per call (the server process's utime+stime
from /proc, every thread), client CPU per call (this process), and the size of one call's result as JSON
(CallToolResult: the text copy plus structuredContent).

`--profile N` then runs each variant's server afresh under cProfile (the event-loop thread, and every function the
server sends to a worker thread: the store's work and the stdio transport's reads and writes), warms it up, makes N
calls (headlessly with --no-flush), and prints the servers' own time per call grouped by area (mcp SDK, pydantic, anyio, asyncio, sqlite3,
headlessly's modules...) and the top functions of `do` and `fetch`.

`--sustained S` then makes back-to-back `do` updates for S seconds (then `echo` calls for S seconds) and prints
calls/s and the server's CPU per `--window`: what a long write stream does (e.g. to the background flush).

Goal: do >= 0.7x echo and fetch >= 0.7x echo.

Run:  .venv/bin/python bench/mcp_stdio.py            (defaults: about a minute)
      .venv/bin/python bench/mcp_stdio.py --quick    (smoke run, seconds)
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from _common import ROOT, source_fingerprint
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

HEADLESSLY = str(Path(sys.executable).parent / "headlessly")
BARE = str(ROOT / "bench" / "bare_server.py")
TICK = os.sysconf("SC_CLK_TCK")
GOAL = 0.7

# Runs `headlessly <args>` (or, with `bare <bench dir>`, the bare server over stdio) and profiles it from SIGUSR1 to
# SIGUSR2 (so start-up, warm-up and shutdown are left out): the event
# loop's thread with one cProfile.Profile, and every function the server hands to a worker thread through
# anyio.to_thread.run_sync (the store's work) with a per-thread Profile. Merged into argv[1] at exit.
PROFILE_WRAPPER = r"""
import cProfile, functools, pstats, signal, sys, threading
import anyio.to_thread
out = sys.argv[1]
on = threading.Event()
main_prof = cProfile.Profile()
local, profiles, lock = threading.local(), [main_prof], threading.Lock()
def start(*_):
    if not on.is_set():
        on.set()
        main_prof.enable()
def stop(*_):
    on.clear()
    main_prof.disable()
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
def profiled(fn, *args):
    if not on.is_set():
        return fn(*args)
    prof = getattr(local, "prof", None)
    if prof is None:
        prof = local.prof = cProfile.Profile()
        with lock:
            profiles.append(prof)
    return prof.runcall(fn, *args)
_run_sync = anyio.to_thread.run_sync
async def run_sync(fn, *args, **kwargs):
    return await _run_sync(functools.partial(profiled, fn), *args, **kwargs)
anyio.to_thread.run_sync = run_sync
try:
    if sys.argv[2] == "bare":
        sys.path.insert(0, sys.argv[3])
        import bare_server
        bare_server.main(["stdio"])
    else:
        from server.cli import main
        main(sys.argv[2:], standalone_mode=False)
finally:
    main_prof.disable()
    with lock:
        stats = pstats.Stats(*profiles)
    stats.dump_stats(out)
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def child_pid(marker: str, known: set[int]) -> int:
    """The PID of our child process whose command line contains `marker` (and is not in `known`)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in known:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me and marker in cmdline:
            return int(entry)
    raise RuntimeError(f"no child process running {marker}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Variant:
    name: str
    call: Callable[[int], Awaitable[Any]]
    pid: int
    rounds: list[dict[str, Any]] = field(default_factory=list)


async def measure(v: Variant, calls: int, start: int) -> dict[str, Any]:
    lat: list[float] = []
    cpu0, ccpu0 = cpu_seconds(v.pid), time.process_time()
    t0 = time.perf_counter()
    for i in range(start, start + calls):
        t = time.perf_counter()
        result = await v.call(i)
        lat.append(time.perf_counter() - t)
        if result.is_error:
            raise RuntimeError(f"{v.name}: {result.content[0].text}")
    wall = time.perf_counter() - t0
    size = len(result.model_dump_json(by_alias=True, exclude_none=True))
    return {
        "rate": calls / wall,
        "p50": pct(lat, 0.5) * 1e3,
        "p99": pct(lat, 0.99) * 1e3,
        "server_cpu": (cpu_seconds(v.pid) - cpu0) / calls * 1e6,
        "client_cpu": (time.process_time() - ccpu0) / calls * 1e6,
        "size": size,
    }


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    log = (tmp / "servers.log").open("w")
    h_params = StdioServerParameters(
        command=HEADLESSLY, args=["serve", "--data-dir", str(tmp / "data"), *args.serve_arg]
    )
    b_params = StdioServerParameters(command=sys.executable, args=[BARE, "stdio"])
    async with Client(stdio_client(b_params, errlog=log)) as bare:
        bare_pid = child_pid("bare_server.py", set())
        async with Client(stdio_client(h_params, errlog=log)) as hly:
            hly_pid = child_pid("headlessly", {bare_pid})
            created = await hly.call_tool(
                "do", {"action": "create", "type": "Deal", "data": {"name": "Bench", "value": 0}}
            )
            deal = created.structured_content["entity"]["$id"]

            def echo(i: int) -> Awaitable[Any]:
                return bare.call_tool("echo", {"text": "hello"})

            def do(i: int) -> Awaitable[Any]:
                return hly.call_tool("do", {"action": "update", "type": "Deal", "id": deal, "data": {"value": i}})

            def fetch(i: int) -> Awaitable[Any]:
                return hly.call_tool("fetch", {"type": "Deal", "id": deal})

            variants = [Variant("echo", echo, bare_pid), Variant("do", do, hly_pid), Variant("fetch", fetch, hly_pid)]
            # Warm-up: imports, caches, the tenant's first open, and (with --warmup-seconds past the server's
            # 5 s flush interval) the background flush's first run, which imports pyiceberg and pyarrow.
            counter, t0 = 1, time.perf_counter()
            while counter == 1 or time.perf_counter() - t0 < args.warmup_seconds:
                for v in variants:
                    await measure(v, args.warmup, counter)
                    counter += args.warmup
            for r in range(args.rounds):
                k = r % len(variants)
                for v in variants[k:] + variants[:k]:
                    v.rounds.append(await measure(v, args.calls, counter))
                    counter += args.calls
                print(
                    f"  round {r + 1}/{args.rounds}: "
                    + ", ".join(f"{v.name} {v.rounds[-1]['rate']:.0f}/s" for v in variants),
                    file=sys.stderr,
                )
            windows = await sustained(args, variants, counter) if args.sustained else []
            final = await hly.call_tool("fetch", {"type": "Deal", "id": deal})
            version = final.structured_content["$version"]
    log.close()
    log_text = (tmp / "servers.log").read_text()
    report(args, variants, version, log_text, windows)


async def sustained(args: argparse.Namespace, variants: list[Variant], counter: int) -> list[dict[str, Any]]:
    """Back-to-back `do` updates for `--sustained` seconds, then `echo` calls for as long: calls/s per window."""
    windows = []
    for v in (variants[1], variants[0]):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.sustained:
            w0, cpu0, n = time.perf_counter(), cpu_seconds(v.pid), 0
            while time.perf_counter() - w0 < args.window:
                result = await v.call(counter)
                counter, n = counter + 1, n + 1
                if result.is_error:
                    raise RuntimeError(f"{v.name}: {result.content[0].text}")
            wall = time.perf_counter() - w0
            windows.append(
                {"variant": v.name, "t": w0 - t0, "rate": n / wall, "cpu": (cpu_seconds(v.pid) - cpu0) / wall}
            )
        print(f"  sustained {v.name}: {args.sustained:g} s done", file=sys.stderr)
    return windows


def report(
    args: argparse.Namespace, variants: list[Variant], version: int, log_text: str, windows: list[dict[str, Any]]
) -> None:
    base = variants[0]
    extra = f", serve {' '.join(args.serve_arg)}" if args.serve_arg else ""
    print(f"\nMCP over stdio, one client, sequential calls: {args.rounds} rounds x {args.calls} calls per variant"
          f" (warm-up >= {args.warmup} calls each and >= {args.warmup_seconds:g} s{extra})")  # fmt: skip
    header = f"{'variant':<7} {'calls/s':>8} {'min-max':>11} {'ratio':>6} {'min-max':>11} {'p50 ms':>7} {'p99 ms':>7} {'srv CPU us/call':>15} {'cli CPU us/call':>15} {'result B':>8}"
    print(header)
    print("-" * len(header))
    ok = True
    for v in variants:
        rates = [r["rate"] for r in v.rounds]
        mid = sorted(v.rounds, key=lambda r: r["rate"])[len(v.rounds) // 2]
        ratios = [r["rate"] / b["rate"] for r, b in zip(v.rounds, base.rounds, strict=True)]
        ratio = statistics.median(ratios)
        if v is not base:
            ok = ok and ratio >= GOAL
        print(
            f"{v.name:<7} {statistics.median(rates):>8.0f} {min(rates):>5.0f}-{max(rates):<5.0f} "
            f"{ratio:>5.2f}x {min(ratios):>5.2f}-{max(ratios):<5.2f} {mid['p50']:>7.2f} {mid['p99']:>7.2f} "
            f"{statistics.median(r['server_cpu'] for r in v.rounds):>15.0f} "
            f"{statistics.median(r['client_cpu'] for r in v.rounds):>15.0f} {v.rounds[-1]['size']:>8}"
        )
    base_cpu = statistics.median(r["server_cpu"] for r in base.rounds)
    print("server CPU per call vs echo (no client in it): " + ", ".join(
        f"{v.name} {statistics.median(r['server_cpu'] for r in v.rounds) / base_cpu:.2f}x" for v in variants[1:]))  # fmt: skip
    print(f"goal: do and fetch >= {GOAL}x echo: {'met' if ok else 'NOT met'}")
    flushes = log_text.count("to the lakehouse")
    print(f"check: the Deal ended at $version {version}; servers' stderr: {len(log_text)} bytes, "
          f"{flushes} background flush(es) logged by headlessly")  # fmt: skip
    if windows:
        echo = statistics.median(w["rate"] for w in windows if w["variant"] == "echo")
        print(f"\nSustained: back-to-back do updates for {args.sustained:g} s, then echo for as long; "
              f"per {args.window:g} s window (ratio: do calls/s over the median echo window)")  # fmt: skip
        print(f"{'variant':<7} {'from s':>6} {'calls/s':>8} {'ratio':>6} {'server CPU':>10}")
        for w in windows:
            print(
                f"{w['variant']:<7} {w['t']:>6.0f} {w['rate']:>8.0f} {w['rate'] / echo:>5.2f}x {w['cpu'] * 100:>9.0f}%"
            )


IDLE = ("<method 'poll' of 'select.epoll' objects>", "<method 'readline' of '_io.TextIOWrapper' objects>",
        "<method 'acquire' of '_thread.lock' objects>", "<method 'get' of '_queue.SimpleQueue' objects>")  # fmt: skip
STDLIB = os.path.dirname(os.__file__)


def area(filename: str, function: str) -> str:
    """Which part of the stack a profiled function belongs to."""
    if filename == "~":  # a C function: "{method 'execute' of 'sqlite3.Connection' objects}", "{built-in method ...}"
        if function in IDLE:
            return "(idle: waiting for input)"
        if function == "<method 'release' of '_thread.lock' objects>":
            return "thread hand-offs (lock release)"
        if "of '_io.TextIOWrapper' objects" in function or "of '_io.BufferedWriter' objects" in function:
            return "stdio pipe writes (write/flush)"
        for mod, name in (("sqlite3", "sqlite3"), ("pydantic_core", "pydantic"), ("_json", "json"), ("json", "json")):
            if f"'{mod}." in function or f" {mod}." in function:
                return name
        return "other C builtins"
    if "/site-packages/" in filename:
        pkg = filename.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
        return {"mcp_types": "mcp", "pydantic_core": "pydantic", "sse_starlette": "starlette"}.get(pkg, pkg)
    if "/server/" in filename and str(ROOT) in filename:
        return "headlessly " + "/".join(filename.split(str(ROOT) + "/", 1)[1].split("/")[:2]).removesuffix(".py")
    if filename.startswith(STDLIB):
        sub = filename[len(STDLIB) + 1 :].split("/", 1)[0].removesuffix(".py")
        return {"selectors": "asyncio", "threading": "threading", "json": "json"}.get(sub, sub) if sub in (
            "asyncio", "selectors", "json", "threading", "contextvars", "logging") else "stdlib (other)"  # fmt: skip
    if "bare_server.py" in filename:
        return "bare echo tool"
    return "other"


async def profile_one(args: argparse.Namespace, tmp: Path, variant: str) -> Any:
    """A fresh server under the profiling wrapper: warm-up, then SIGUSR1, then `--profile` calls of `variant`."""
    import pstats

    out = tmp / f"{variant}.prof"
    target = ["bare", str(ROOT / "bench")]
    if variant != "echo":
        # --no-flush: the background flush thread is not per-call work, and its GIL time would be charged to
        # whatever the profiled threads were running at the time.
        target = ["serve", "--data-dir", str(tmp / f"prof-{variant}"), "--no-flush", *args.serve_arg]
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", PROFILE_WRAPPER, str(out), *target],
        cwd=str(ROOT),
        env={"PYTHONDONTWRITEBYTECODE": "1"},  # it imports bench/bare_server.py: leave no __pycache__ in bench/
    )
    with (tmp / "profile.log").open("a") as log:
        async with Client(stdio_client(params, errlog=log)) as client:
            if variant == "echo":

                def call(i: int) -> Awaitable[Any]:
                    return client.call_tool("echo", {"text": "hello"})
            else:
                created = await client.call_tool(
                    "do", {"action": "create", "type": "Deal", "data": {"name": "P", "value": 0}}
                )
                deal = created.structured_content["entity"]["$id"]

                def call(i: int) -> Awaitable[Any]:
                    if variant == "do":
                        return client.call_tool(
                            "do", {"action": "update", "type": "Deal", "id": deal, "data": {"value": i}}
                        )
                    return client.call_tool("fetch", {"type": "Deal", "id": deal})

            for i in range(min(args.warmup, 100)):  # warm-up, not profiled
                await call(i + 1)
            pid = child_pid(str(out), set())
            os.kill(pid, signal.SIGUSR1)
            await anyio.sleep(0.2)
            for i in range(args.profile):
                await call(i + 1000)
            os.kill(pid, signal.SIGUSR2)
            await anyio.sleep(0.2)
    with anyio.fail_after(30):
        while not out.exists():
            await anyio.sleep(0.1)
    await anyio.sleep(0.2)
    return pstats.Stats(str(out))


async def profile(args: argparse.Namespace, tmp: Path) -> None:
    names = ("echo", "do", "fetch")
    stats = {v: await profile_one(args, tmp, v) for v in names}
    n = args.profile
    areas: dict[str, dict[str, float]] = {}
    for v, st in stats.items():
        for (filename, _line, function), (_cc, _nc, tt, _ct, _callers) in st.stats.items():
            areas.setdefault(area(filename, function), dict.fromkeys(names, 0.0))[v] += tt / n * 1e6
    print(f"\nServer under cProfile (event loop + every function sent to a worker thread), {n} calls per variant after "
          "warm-up; own time (tottime) by area, us per call (profiled: about 2x slower than unprofiled)")  # fmt: skip
    print(f"{'area':<34} {'echo':>7} {'do':>7} {'fetch':>7}")
    total = dict.fromkeys(names, 0.0)
    for name, per in sorted(areas.items(), key=lambda kv: -kv[1]["do"]):
        if name.startswith("(idle"):
            continue
        for v in names:
            total[v] += per[v]
        if max(per.values()) >= 10:
            print(f"{name:<34} {per['echo']:>7.0f} {per['do']:>7.0f} {per['fetch']:>7.0f}")
    print(f"{'total (busy)':<34} {total['echo']:>7.0f} {total['do']:>7.0f} {total['fetch']:>7.0f}")
    for v in ("do", "fetch"):
        print(
            f"\n-- {v}: top {args.profile_top} functions by own time, us per call (ncalls counts coroutine resumptions) --"
        )
        print(f"{'own':>6} {'cumul':>6} {'ncalls':>7}  function")
        rows = sorted(stats[v].stats.items(), key=lambda kv: -kv[1][2])
        rows = [(key, val) for key, val in rows if key[2] not in IDLE][: args.profile_top]
        for (filename, line, function), (_cc, nc, tt, ct, _callers) in rows:
            where = function if filename == "~" else f"{short(filename)}:{line}({function})"
            print(f"{tt / n * 1e6:>6.0f} {ct / n * 1e6:>6.0f} {nc:>7}  {where}")


def short(filename: str) -> str:
    for prefix in (f"{ROOT}/", f"{STDLIB}/site-packages/", f"{sys.prefix}/lib/python3.11/site-packages/", f"{STDLIB}/"):
        filename = filename.removeprefix(prefix)
    return filename


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000, help="calls per variant per round (1000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up calls per variant (200)")
    p.add_argument("--sustained", type=float, default=0.0, metavar="S",
                   help="then S seconds of back-to-back do updates (then S of echo), per-window calls/s (0: off)")  # fmt: skip
    p.add_argument("--window", type=float, default=5.0, help="window of --sustained, seconds (5)")
    p.add_argument("--warmup-seconds", type=float, default=6.0, help="warm up for at least this long (6)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `headlessly serve` (repeatable), e.g. --serve-arg=--no-flush")  # fmt: skip
    p.add_argument(
        "--profile", type=int, default=0, metavar="N", help="then profile each server over N calls of each variant"
    )
    p.add_argument("--profile-top", type=int, default=25, help="entries shown per profile table (25)")
    p.add_argument("--quick", action="store_true", help="smoke run: 100 calls x 2 rounds, warm-up 20")
    args = p.parse_args()
    if args.quick:
        args.calls, args.rounds, args.warmup, args.warmup_seconds = 100, 2, 20, 0.0
        args.profile = min(args.profile, 50)
    print(f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f} at start; server sources {source_fingerprint()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hly-mcp-stdio-") as tmp:
        anyio.run(bench, args, Path(tmp))
        if args.profile:
            anyio.run(profile, args, Path(tmp))


if __name__ == "__main__":
    main()
