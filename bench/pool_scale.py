"""The pool at scale: N backends in one pool, what they cost, and how fast a failing one leaves.

    .venv/bin/python bench/pool_scale.py [--backends 1000] [--flips 200] [--idle 10]
        [--resolve-interval 5] [--json PATH]

One server process (this script with ``--serve N``) runs N health servers on 127.0.0.1, one
port each, every one with its own status map. The measuring process opens one pool over all N
through an injected resolver (the ``dns:`` path: membership from a resolution, re-resolved every
``--resolve-interval`` seconds) and reports

* start-up: seconds from ``open_pool`` to all N healthy;
* memory per backend: growth of the process's RSS from before ``open_pool`` to all N healthy,
  divided by N (a channel with its HTTP/2 connection, its reader and writer tasks, a Watch call,
  a watcher);
* idle CPU: the process's CPU time over ``--idle`` seconds with nothing changing, as a share of
  one core (keepalive off; re-resolution of all N addresses included);
* flip latency: ``--flips`` times, a random backend is told NOT_SERVING (a line on the server's
  stdin) and the time until ``pick()`` no longer returns it is taken, then it is set SERVING
  again and the time until it is back. Median, p99 and max. The figure includes the pipe hop
  to the server process, the server's Watch push and our client's HTTP/2 read.

RLIMIT_NOFILE is raised to its hard limit in both processes (the server holds N listening and
N accepted sockets, the pool N client sockets); the run stops with one line if it is too low.
Bounded: every wait has a deadline, the server is killed at the end. Prints a summary and, with
``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from health.pool import HealthyPool, open_pool
from health.service import HealthServer
from health.status import ServingStatus
from tests.tasks import count_tasks

SERVICE = "bench.Pool"


def raise_nofile(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows; exit if below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        sys.exit(f"pool_scale: RLIMIT_NOFILE hard limit {hard} is below the {needed} file "
                 "descriptors this run needs (lower --backends or raise `ulimit -Hn`)")
    return target


def rss_bytes() -> int:
    """The resident set size of this process, from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# ---------------------------------------------------------------------- the server process


async def serve(count: int) -> None:
    """N health servers on 127.0.0.1; their ports on stdout; ``INDEX STATUS`` lines on stdin."""
    raise_nofile(2 * count + 64)
    servers = [HealthServer() for _ in range(count)]
    for server in servers:
        server.set(SERVICE, ServingStatus.SERVING)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        print(json.dumps({"ports": [s.port for s in servers]}), flush=True)
        buffer = b""
        while True:  # until the measuring process closes our stdin
            data = await stdin.receive_some(65536)
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                index, status = line.split()
                servers[int(index)].set(SERVICE, ServingStatus[status.decode()])
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- the measuring process


async def wait_for(pool: HealthyPool, predicate: Any, limit: float) -> None:
    """Wait until ``predicate(pool.healthy)`` holds, at most ``limit`` seconds."""
    with trio.fail_after(limit):
        while not predicate(pool.healthy):  # bounded by the fail_after above
            await pool.wait_changed(pool.version)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(ordered) * 1e3, "p99_ms": p99 * 1e3,
            "max_ms": ordered[-1] * 1e3, "count": len(ordered)}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    count = args.backends
    limit = raise_nofile(count + 256)
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--serve", str(count)], stdin=-1, stdout=-1)
    assert process.stdin is not None and process.stdout is not None
    results: dict[str, Any] = {"backends": count, "nofile_limit": limit}
    try:
        with trio.fail_after(120):
            line = b""
            while not line.endswith(b"\n"):  # bounded by the fail_after above
                chunk = await process.stdout.receive_some(1 << 20)
                if not chunk:
                    raise RuntimeError("the server process exited before listening")
                line += chunk
        ports = json.loads(line)["ports"]
        addresses = [f"127.0.0.1:{port}" for port in ports]
        index = {address: i for i, address in enumerate(addresses)}

        async def resolver(host: str, port: int) -> list[str]:
            await trio.lowlevel.checkpoint()
            return addresses

        gc.collect()
        tasks_before = count_tasks()
        rss_before = rss_bytes()
        started = time.perf_counter()
        async with open_pool("dns:///bench.pool:1", service=SERVICE, resolver=resolver,
                             resolve_interval=args.resolve_interval,
                             connect_timeout=30) as pool:
            await wait_for(pool, lambda healthy: len(healthy) == count, 300)
            results["startup_s"] = time.perf_counter() - started
            gc.collect()
            results["rss_per_backend_kib"] = (rss_bytes() - rss_before) / count / 1024
            results["tasks_per_backend"] = (count_tasks() - tasks_before) / count

            resolutions = pool.resolver.resolutions if pool.resolver else 0
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await trio.sleep(args.idle)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            results["idle_cpu_percent"] = 100 * cpu / wall
            results["idle_window_s"] = wall
            results["resolutions_in_window"] = (
                (pool.resolver.resolutions if pool.resolver else 0) - resolutions)

            rng = random.Random(args.seed)
            leave: list[float] = []
            back: list[float] = []
            for _ in range(args.flips):
                address = rng.choice(addresses)
                await process.stdin.send_all(f"{index[address]} NOT_SERVING\n".encode())
                t0 = time.perf_counter()
                await wait_for(pool, lambda healthy, a=address: a not in healthy, 10)
                leave.append(time.perf_counter() - t0)
                # Never handed out again: a full round of the round robin misses it.
                assert address not in {pool.pick() for _ in range(len(pool.healthy))}
                await process.stdin.send_all(f"{index[address]} SERVING\n".encode())
                t0 = time.perf_counter()
                await wait_for(pool, lambda healthy, a=address: a in healthy, 10)
                back.append(time.perf_counter() - t0)
            results["not_serving_to_unpicked"] = percentiles(leave)
            results["serving_to_picked"] = percentiles(back)
    finally:
        with trio.move_on_after(5):
            await process.stdin.aclose()
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--flips", type=int, default=200)
    parser.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    parser.add_argument("--resolve-interval", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        trio.run(serve, args.serve)
        return 0
    if args.backends < 2 or args.flips < 1 or args.idle <= 0 or args.resolve_interval <= 0:
        parser.error("--backends must be >= 2, --flips >= 1, --idle and --resolve-interval > 0")
    results = trio.run(measure, args)
    leave, back = results["not_serving_to_unpicked"], results["serving_to_picked"]
    print(f"backends               {results['backends']} "
          f"(RLIMIT_NOFILE {results['nofile_limit']})")
    print(f"start-up to all healthy {results['startup_s']:.2f} s")
    print(f"memory per backend     {results['rss_per_backend_kib']:.1f} KiB RSS, "
          f"{results['tasks_per_backend']:.1f} tasks")
    print(f"idle CPU               {results['idle_cpu_percent']:.2f} % of a core over "
          f"{results['idle_window_s']:.1f} s ({results['resolutions_in_window']} re-resolutions)")
    print(f"NOT_SERVING -> unpicked median {leave['median_ms']:.2f} ms, p99 {leave['p99_ms']:.2f}"
          f" ms, max {leave['max_ms']:.2f} ms over {leave['count']} flips")
    print(f"SERVING -> picked      median {back['median_ms']:.2f} ms, p99 {back['p99_ms']:.2f}"
          f" ms, max {back['max_ms']:.2f} ms")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
