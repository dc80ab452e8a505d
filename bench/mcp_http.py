#!/usr/bin/env python
"""Streamable HTTP under concurrent load: `headlessly serve --transport http` against a bare MCPServer.

    headlessly   headlessly serve --transport http --port 0 --data-dir D    (bearer token from
                 `headlessly token create --tenant bench --actor agent_bench --data-dir D`)
                 mixed calls: 70% fetch of the client's own Deal, 20% search (Deal, a filter on stage, limit 10),
                 10% do update of the client's own Deal
    bare         python bench/bare_server.py http 0: the echo tool, same load shape (every call an echo)

`--clients` (8) concurrent clients, anyio tasks in this process, each its own SDK client
(`Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers={"Authorization": "Bearer ..."})))`),
each making one call at a time for `--duration` seconds. Both servers run the whole time; each of `--rounds`
rounds runs bare then headlessly (order alternating), after a warm-up (`--warmup-seconds`, past the server's
5 s background-flush interval so that the flush's first import of pyiceberg/pyarrow is not in a round).

Reported per variant: throughput (calls/s, all clients), p50 and p99 latency of every call in the round, the
server's CPU per call (utime+stime of the server process from /proc) and this process's CPU per call (the clients:
on 2 cores they compete with the server). Ratios are taken within a round (headlessly/bare), median over rounds.
No numeric goal is set for HTTP: the throughput ratio, the p99 ratio and the server-CPU-per-call figures are
reported. Note that on 2 cores the clients use about as much CPU as the server, which caps both variants.

Run:  .venv/bin/python bench/mcp_http.py            (defaults: about 1.5 minutes)
      .venv/bin/python bench/mcp_http.py --quick    (smoke run, seconds)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from _common import ROOT, source_fingerprint
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

HEADLESSLY = str(Path(sys.executable).parent / "headlessly")
BARE = str(ROOT / "bench" / "bare_server.py")
TICK = os.sysconf("SC_CLK_TCK")
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+/mcp)")
STAGES = ["Prospecting", "Qualification", "Proposal", "Negotiation"]


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HEADLESSLY_")}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    lines: list[str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start(command: list[str]) -> Server:
    """Start a server that prints `... listening on http://127.0.0.1:<port>/mcp` on stderr when ready."""
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env()
    )
    lines: list[str] = []
    found: dict[str, str] = {}
    ready = threading.Event()

    def drain() -> None:  # keeps reading after the banner, so the server never blocks on a full pipe
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            if not ready.is_set() and (m := LISTENING.search(line)):
                found["url"] = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(60) or "url" not in found:
        proc.kill()
        raise RuntimeError(f"{command[:2]} did not start:\n{''.join(lines)}")
    return Server(proc, found["url"], lines)


@dataclass
class Variant:
    name: str
    server: Server
    token: str | None
    clients: list[Client] = field(default_factory=list)
    deals: list[str] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)


async def connect(stack: AsyncExitStack, v: Variant, n: int) -> None:
    headers = {"Authorization": f"Bearer {v.token}"} if v.token else {}
    for _ in range(n):
        http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0)))
        v.clients.append(
            await stack.enter_async_context(Client(streamable_http_client(v.server.url, http_client=http)))
        )


async def setup_headlessly(v: Variant, seed_deals: int) -> None:
    """One Deal per client (its own, for fetch and update) and `seed_deals` more for search to find."""
    ops = [
        {"action": "create", "type": "Deal", "data": {"name": f"Seed {i}", "value": i, "stage": STAGES[i % 4]}}
        for i in range(seed_deals)
    ]
    for chunk in range(0, len(ops), 500):
        result = await v.clients[0].call_tool("do", {"operations": ops[chunk : chunk + 500]})
        if result.is_error:
            raise RuntimeError(result.content[0].text)
    for i, client in enumerate(v.clients):
        r = await client.call_tool(
            "do", {"action": "create", "type": "Deal", "data": {"name": f"Client {i}", "value": 0}}
        )
        if r.is_error:
            raise RuntimeError(r.content[0].text)
        v.deals.append(r.structured_content["entity"]["$id"])


async def load(v: Variant, seconds: float, seed: int) -> dict[str, Any]:
    """Every client calls in a loop until the deadline; returns throughput, latencies and CPU per call."""
    lat: dict[str, list[float]] = {"fetch": [], "search": [], "do": [], "echo": []}
    errors = [0]
    counter = [seed * 1_000_000]
    deadline = time.perf_counter() + seconds

    async def worker(i: int, client: Client) -> None:
        rng = random.Random(seed * 100 + i)
        while time.perf_counter() < deadline:
            if v.name == "bare":
                op, name, arguments = "echo", "echo", {"text": "hello"}
            else:
                x = rng.random()
                if x < 0.7:
                    op, name, arguments = "fetch", "fetch", {"type": "Deal", "id": v.deals[i]}
                elif x < 0.9:
                    stage = STAGES[rng.randrange(4)]
                    op, name, arguments = "search", "search", {"type": "Deal", "filter": {"stage": stage}, "limit": 10}
                else:
                    counter[0] += 1
                    data = {"value": counter[0]}
                    op, name, arguments = (
                        "do",
                        "do",
                        {"action": "update", "type": "Deal", "id": v.deals[i], "data": data},
                    )
            t = time.perf_counter()
            result = await client.call_tool(name, arguments)
            lat[op].append(time.perf_counter() - t)
            if result.is_error:
                errors[0] += 1

    cpu0, ccpu0 = cpu_seconds(v.server.proc.pid), time.process_time()
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i, client in enumerate(v.clients):
            tg.start_soon(worker, i, client)
    wall = time.perf_counter() - t0
    every = [x for xs in lat.values() for x in xs]
    n = len(every)
    return {
        "rate": n / wall,
        "calls": n,
        "p50": pct(every, 0.5) * 1e3,
        "p99": pct(every, 0.99) * 1e3,
        "ops": {op: (len(xs), pct(xs, 0.5) * 1e3, pct(xs, 0.99) * 1e3) for op, xs in lat.items() if xs},
        "server_cpu": (cpu_seconds(v.server.proc.pid) - cpu0) / n * 1e6,
        "client_cpu": (time.process_time() - ccpu0) / n * 1e6,
        "errors": errors[0],
    }


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    data = tmp / "data"
    done = subprocess.run(
        [HEADLESSLY, "token", "create", "--tenant", "bench", "--actor", "agent_bench", "--data-dir", str(data)],
        capture_output=True, text=True, check=True, env=env(), timeout=60,
    )  # fmt: skip
    token = done.stdout.strip()
    hly = start([HEADLESSLY, "serve", "--transport", "http", "--port", "0", "--data-dir", str(data), *args.serve_arg])
    bare = start([sys.executable, BARE, "http", "0"])
    variants = [Variant("bare", bare, None), Variant("headlessly", hly, token)]
    try:
        async with AsyncExitStack() as stack:
            for v in variants:
                await connect(stack, v, args.clients)
            await setup_headlessly(variants[1], args.seed_deals)
            print(f"  connected {args.clients} clients to each; warming up {args.warmup_seconds:g} s", file=sys.stderr)
            await load(variants[0], min(args.warmup_seconds, 3.0), 1)
            await load(variants[1], args.warmup_seconds, 2)
            for r in range(args.rounds):
                order = variants if r % 2 == 0 else variants[::-1]
                for v in order:
                    v.rounds.append(await load(v, args.duration, 10 + r))
                print(
                    f"  round {r + 1}/{args.rounds}: "
                    + ", ".join(f"{v.name} {v.rounds[-1]['rate']:.0f} calls/s" for v in variants),
                    file=sys.stderr,
                )
    finally:
        for v in variants:
            v.server.stop()
    flushed = [ln for ln in hly.lines if "flushed" in ln and "lakehouse" in ln]
    report(args, variants, flushed)


def report(args: argparse.Namespace, variants: list[Variant], flushed: list[str]) -> None:
    base, hly = variants
    print(f"\nStreamable HTTP, {args.clients} concurrent clients (one call at a time each), {args.rounds} rounds x "
          f"{args.duration:g} s per server; headlessly mix 70% fetch / 20% search / 10% do update, bare: echo")  # fmt: skip
    header = f"{'server':<11} {'calls/s':>8} {'min-max':>11} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'p99 ratio':>9} {'srv CPU us/call':>15} {'cli CPU us/call':>15} {'errors':>6}"
    print(header)
    print("-" * len(header))
    for v in variants:
        rates = [r["rate"] for r in v.rounds]
        ratios = [r["rate"] / b["rate"] for r, b in zip(v.rounds, base.rounds, strict=True)]
        p99r = [r["p99"] / b["p99"] for r, b in zip(v.rounds, base.rounds, strict=True)]
        print(
            f"{v.name:<11} {statistics.median(rates):>8.0f} {min(rates):>5.0f}-{max(rates):<5.0f} "
            f"{statistics.median(ratios):>5.2f}x {statistics.median(r['p50'] for r in v.rounds):>7.1f} "
            f"{statistics.median(r['p99'] for r in v.rounds):>7.1f} {statistics.median(p99r):>8.2f}x "
            f"{statistics.median(r['server_cpu'] for r in v.rounds):>15.0f} "
            f"{statistics.median(r['client_cpu'] for r in v.rounds):>15.0f} {sum(r['errors'] for r in v.rounds):>6}"
        )
    ratios = [h["rate"] / b["rate"] for h, b in zip(hly.rounds, base.rounds, strict=True)]
    p99r = [h["p99"] / b["p99"] for h, b in zip(hly.rounds, base.rounds, strict=True)]
    print(f"per-round ratios headlessly/bare: throughput {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"p99 {', '.join(f'{x:.2f}' for x in p99r)}")  # fmt: skip
    print("headlessly by operation (all rounds): calls, p50 ms, p99 ms")
    for op in ("fetch", "search", "do"):
        n = sum(r["ops"][op][0] for r in hly.rounds if op in r["ops"])
        p50 = statistics.median(r["ops"][op][1] for r in hly.rounds if op in r["ops"])
        p99 = statistics.median(r["ops"][op][2] for r in hly.rounds if op in r["ops"])
        print(f"  {op:<7} {n:>7} {p50:>7.1f} {p99:>7.1f}  (median over rounds)")
    if flushed:
        print(
            f"background flushes logged by headlessly during the run: {len(flushed)} (last: {flushed[-1].strip()[-90:]})"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per server per round (10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    p.add_argument("--warmup-seconds", type=float, default=7.0, help="warm-up of headlessly, seconds (7; bare: 3)")
    p.add_argument("--seed-deals", type=int, default=1000, help="Deals created before the run, for search (1000)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `headlessly serve` (repeatable), e.g. --serve-arg=--no-flush")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s, 1 s warm-up, 100 Deals")
    args = p.parse_args()
    if args.quick:
        args.duration, args.rounds, args.warmup_seconds, args.seed_deals = 2.0, 1, 1.0, 100
    print(f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f} at start; server sources {source_fingerprint()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hly-mcp-http-") as tmp:
        anyio.run(bench, args, Path(tmp))


if __name__ == "__main__":
    main()
