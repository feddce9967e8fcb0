"""Profile our server's unary Check hot path under h2load load.

    python bench/profile_server.py cprofile [--requests 20000] [-c 8] [-m 16] [--timer cpu|wall]
    python bench/profile_server.py pyspy    [--requests 20000] [-c 8] [-m 16] [--rate 1000]
    python bench/profile_server.py report   --pstats FILE | --collapsed FILE

``cprofile`` runs the health server in this process (same setup as ``python -m health serve``:
``HealthServer`` on 127.0.0.1 with ``bench.check`` SERVING), drives it with h2load (a warm-up,
then the measured run with the profiler enabled only around it) and prints where the time goes.
The default timer is ``time.process_time``, so waiting in epoll costs nothing and preemption by
other processes is not billed to whatever function was running.

``pyspy`` runs ``python -m health serve`` under ``py-spy record --format raw`` (a sampling
profiler: far less overhead than cProfile, so the proportions are closer to the truth) and
analyses the collapsed stacks the same way.

Both group the time into categories (h2's state machine, h2's header validation, hyperframe,
hpack, our wire/ files, health/, protobuf, Trio's scheduler, socket I/O, ...) and list the top
functions by self and by cumulative time. C built-ins called directly (``isinstance``,
``bytes.join``, ``list.append``...) are billed to the category of the Python function calling
them, except socket calls (socket I/O), epoll (waiting) and protobuf's C methods.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CHECK_SERVICE = "bench.check"
CHECK_PATH = "/grpc.health.v1.Health/Check"

sys.path.insert(0, str(BENCH))

# ------------------------------------------------------------------------------ categories

SOCKET_FUNCS = re.compile(
    r"\b(send|sendall|recv|recv_into|sendmsg|recvmsg|shutdown|close|accept)\b")
POLL_FUNCS = re.compile(r"\b(poll|select|epoll_wait)\b")

CATEGORIES = [
    # (category, path fragment) in priority order; the first match wins.
    ("h2: header validation/normalization (h2/utilities.py)", "/h2/utilities.py"),
    ("h2: connection/stream state machines, events, flow control", "/h2/"),
    ("hyperframe: frame parsing/serialization", "/hyperframe/"),
    ("hpack: header encode/decode", "/hpack/"),
    ("wire/connection.py: our gRPC framing/validation", "/wire/connection.py"),
    ("wire/server.py: call dispatch and tasks", "/wire/server.py"),
    ("wire/transport.py: writer task", "/wire/transport.py"),
    ("wire/framing.py: message framing", "/wire/framing.py"),
    ("wire/metadata.py: metadata conversion", "/wire/metadata.py"),
    ("wire/ other", "/wire/"),
    ("health/: Check handler and state", "/health/"),
    ("protobuf", "/google/protobuf/"),
    ("trio: socket wrappers (py-spy: incl. the send/recv system calls)",
     "/trio/_highlevel_socket.py"),
    ("trio: socket wrappers (py-spy: incl. the send/recv system calls)", "/trio/_socket.py"),
    ("trio: scheduler, cancel scopes, nurseries, events", "/trio/"),
    ("trio: scheduler, cancel scopes, nurseries, events", "<attrs generated methods trio."),
    ("trio: scheduler, cancel scopes, nurseries, events", "/outcome/"),
    ("trio: scheduler, cancel scopes, nurseries, events", "<attrs generated methods outcome."),
    ("trio: scheduler, cancel scopes, nurseries, events", "/sniffio/"),
]
SOCKET_IO = "socket I/O (send/recv system calls)"
EPOLL = "epoll wait (idle, excluded from totals)"
STDLIB = "stdlib (not attributable)"
#: Files whose time is billed to the nearest caller that is not one of them: the standard
#: library (enum for h2's flags, logging for hpack's log.debug, contextlib for trio's cancel
#: scopes) and generated code (dataclass/attrs __init__).
_PASS_THROUGH = re.compile(r"/lib/python3\.\d+/|^<frozen |^/?<string>$|^~$")


def categorize_file(filename: str) -> str | None:
    f = filename.replace("\\", "/")
    for cat, frag in CATEGORIES:
        if frag in f:
            return cat
    return None


def builtin_category(func: str) -> str | None:
    """Category of a C built-in by its own name (None: bill it to its caller)."""
    if "_socket.socket" in func or ("socket" in func and SOCKET_FUNCS.search(func)):
        return SOCKET_IO
    if "epoll" in func or ("select" in func and POLL_FUNCS.search(func)):
        return EPOLL
    if "google._upb" in func or "protobuf" in func or "upb" in func:
        return "protobuf"
    return None


def own_category(filename: str, func: str) -> str | None:
    """The category of a frame by itself, or None when it should be billed to its caller."""
    if filename == "~":
        return builtin_category(func)
    cat = categorize_file(filename)
    if cat is not None:
        return cat
    if _PASS_THROUGH.search(filename.replace("\\", "/")) or "site-packages" not in filename:
        return None
    return f"other ({filename})"


# This checkout's root, stripped from file names so reports read the same on every machine.
_REPO = str(Path(__file__).resolve().parent.parent) + "/"


def label(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    f = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/lib/python3.11/", _REPO):
        if marker in f:
            f = f.split(marker, 1)[1]
            break
    return f"{func} ({f}:{line})"


# ------------------------------------------------------------------------------ pstats analysis


def analyse_pstats(stats: pstats.Stats, requests: int, top: int = 15) -> str:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_cat: dict[str, float] = defaultdict(float)

    def bill(key: tuple[str, int, str], amount: float, depth: int) -> None:
        cat = own_category(key[0], key[2])
        if cat is not None:
            by_cat[cat] += amount
            return
        callers = raw[key][4] if key in raw else {}
        # Split by the time spent in this function from each caller (cProfile's edge tt).
        edge_total = sum(edge[2] for edge in callers.values()) if callers else 0.0
        if depth >= 6 or edge_total <= 0:
            by_cat[STDLIB] += amount
            return
        for caller, edge in callers.items():
            bill(caller, amount * edge[2] / edge_total, depth + 1)

    for key, (_cc, _nc, tt, _ct, _callers) in raw.items():
        bill(key, tt, 0)
    what = "cProfile self time; stdlib and C built-ins billed to their callers"
    return render_breakdown(by_cat, requests, what) + render_top(raw, requests, top)


def render_breakdown(by_cat: dict[str, float], requests: int, what: str,
                     unit: str = "s", note: str = "") -> str:
    idle = by_cat.pop(EPOLL, 0.0)
    # Fold the long tail of "other (...)" entries into one line.
    folded: dict[str, float] = defaultdict(float)
    for cat, t in by_cat.items():
        folded["other third-party code" if cat.startswith("other (") else cat] += t
    total = sum(folded.values())
    head = (f"Total {total:.3f} s for {requests:,} requests = "
            f"{total / requests * 1e6:.0f} µs/request (profiled)" if unit == "s"
            else f"{total:,.0f} samples while serving {requests:,} requests")
    lines = [f"### Where the time goes ({what})", "",
             head + (f"; epoll wait {idle:.3f} {unit} excluded" if idle else "") + note, "",
             "| category | share | " + ("µs/request |" if unit == "s" else "samples |"),
             "|---|---:|---:|"]
    for cat, t in sorted(folded.items(), key=lambda kv: -kv[1]):
        per = f"{t / requests * 1e6:.1f}" if unit == "s" else f"{t:.0f}"
        lines.append(f"| {cat} | {t / total * 100:.1f}% | {per} |")
    return "\n".join(lines) + "\n"


def render_top(raw: dict[Any, Any], requests: int, top: int) -> str:
    total_tt = sum(v[2] for k, v in raw.items()
                   if not (k[0] == "~" and builtin_category(k[2]) == EPOLL))
    out = []
    for title, idx in (("cumulative", 3), ("self", 2)):
        rows = sorted(raw.items(), key=lambda kv: -kv[1][idx])
        out += ["", f"### Top {top} functions by {title} time (cProfile)", "",
                "| function | calls/request | self µs/req | cumulative µs/req | "
                f"{title} % of total |", "|---|---:|---:|---:|---:|"]
        shown = 0
        for key, (_cc, nc, tt, ct, _callers) in rows:
            if builtin_category(key[2]) == EPOLL and key[0] == "~":
                continue
            if title == "cumulative" and _is_wrapper(key):
                continue
            val = ct if idx == 3 else tt
            out.append(f"| `{label(key)}` | {nc / requests:.2f} | {tt / requests * 1e6:.1f} | "
                       f"{ct / requests * 1e6:.1f} | {val / total_tt * 100:.1f}% |")
            shown += 1
            if shown >= top:
                break
    return "\n".join(out) + "\n"


def _is_wrapper(key: tuple[str, int, str]) -> bool:
    # Frames that contain everything (the run loop, coroutine send): not informative.
    f, _, func = key
    return (func in ("run", "unrolled_run", "<module>", "_main", "main_async", "profiled_run")
            and ("/trio/" in f or "profile_server" in f)) or (
        f == "~" and func in ("<method 'send' of 'coroutine' objects>",
                              "<method 'send' of 'generator' objects>",
                              "<method 'run' of '_contextvars.Context' objects>",
                              "<built-in method builtins.exec>"))


# ------------------------------------------------------------------------------ collapsed stacks

_FRAME = re.compile(r"(.*) \((.*?)(?::(\d+))?\)$")
_STARTUP = ("_find_and_load", "_compile_bytecode", "_call_with_frames_removed")


def analyse_collapsed(path: Path, requests: int, top: int = 15) -> str:
    """py-spy ``--format raw`` output: ``frame;frame;...;leaf count`` per line."""
    self_cat: dict[str, float] = defaultdict(float)
    self_fn: dict[str, float] = defaultdict(float)
    cum_fn: dict[str, float] = defaultdict(float)
    total = startup = 0.0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = float(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        if any(marker in f for f in frames for marker in _STARTUP):
            startup += n  # imports at server start, not serving
            continue
        total += n
        cat = None
        for frame in reversed(frames):
            m = _FRAME.match(frame)
            func, filename = (m.group(1), m.group(2)) if m else (frame, "~")
            cat = own_category("/" + filename.lstrip("/") if filename != "~" else "~", func)
            if cat is not None:
                break
        self_cat[cat or STDLIB] += n
        self_fn[_norm(frames[-1])] += n
        for f in {_norm(f) for f in frames}:
            cum_fn[f] += n
    note = (f"; {startup:,.0f} samples of imports at start-up excluded. Leaf frames in the "
            "stdlib or generated code are billed to their nearest library caller.")
    out = render_breakdown(dict(self_cat), requests, "py-spy samples, self time",
                           unit="samples", note=note)
    busy = total - self_cat.get(EPOLL, 0.0)
    for title, table in (("cumulative", cum_fn), ("self", self_fn)):
        out += (f"\n### Top {top} functions by {title} samples (py-spy)\n\n"
                "| function | % of samples |\n|---|---:|\n")
        rows = [kv for kv in sorted(table.items(), key=lambda kv: -kv[1])
                if not (title == "cumulative" and re.search(r"^(run|unrolled_run|<module>|"
                                                             r"_run_module_as_main|_run_code|"
                                                             r"main|serve_main|_serve) ", kv[0]))]
        for fn, n in rows[:top]:
            out += f"| `{fn}` | {n / busy * 100:.1f}% |\n"
    return out


def _norm(frame: str) -> str:
    # Drop line numbers (a function counts once however many of its lines were sampled) and
    # the install prefix of the file.
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"\((?:[^()]*?)(?:site-packages/|lib/python3\.\d+/|" + re.escape(_REPO) + ")",
                  "(", frame)


# ------------------------------------------------------------------------------ load


def write_body(tmp: Path) -> Path:
    import h2tools

    body = tmp / "check.bin"
    body.write_bytes(h2tools.encode_check_request(CHECK_SERVICE))
    return body


def h2load_cmd(port: int, c: int, m: int, n: int, body: Path) -> list[str]:
    return ["h2load", "-c", str(c), "-m", str(m), "-n", str(n), "-t", "1", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://127.0.0.1:{port}{CHECK_PATH}"]


def check_h2load_output(out: str, n: int) -> float:
    req = re.search(r"(\d+) succeeded", out)
    rps = re.search(r"([\d.]+) req/s", out)
    if not req or int(req.group(1)) != n or not rps:
        raise SystemExit(f"h2load did not complete {n} requests:\n{out[-1500:]}")
    return float(rps.group(1))


def run_cprofile(args: argparse.Namespace) -> int:
    import trio

    from health.service import HealthServer
    from health.state import HealthState
    from health.status import ServingStatus

    tmp = Path(tempfile.mkdtemp(prefix="health-profile-"))
    body = write_body(tmp)
    timer = time.process_time if args.timer == "cpu" else time.perf_counter
    profiler = cProfile.Profile(timer)
    info: dict[str, float] = {}

    async def main_async() -> None:
        state = HealthState({CHECK_SERVICE: ServingStatus.SERVING})
        server = HealthServer(state)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_tcp, "127.0.0.1", 0)
            port = server.port
            warm = await trio.run_process(
                h2load_cmd(port, args.c, args.m, args.warmup, body), capture_stdout=True,
                check=False)
            check_h2load_output(warm.stdout.decode(), args.warmup)
            # Unprofiled reference run: the CPU cost per request without cProfile's overhead.
            cpu0 = time.process_time()
            ref = await trio.run_process(
                h2load_cmd(port, args.c, args.m, args.requests, body), capture_stdout=True,
                check=False)
            info["ref_cpu_us"] = (time.process_time() - cpu0) / args.requests * 1e6
            info["ref_rps"] = check_h2load_output(ref.stdout.decode(), args.requests)
            cpu0 = time.process_time()
            profiler.enable()
            res = await trio.run_process(
                h2load_cmd(port, args.c, args.m, args.requests, body), capture_stdout=True,
                check=False)
            profiler.disable()
            info["prof_cpu_us"] = (time.process_time() - cpu0) / args.requests * 1e6
            info["prof_rps"] = check_h2load_output(res.stdout.decode(), args.requests)
            nursery.cancel_scope.cancel()

    trio.run(main_async)
    out_pstats = args.pstats or (tmp / "check.pstats")
    profiler.dump_stats(str(out_pstats))
    stats = pstats.Stats(str(out_pstats))
    header = (f"## cProfile of ours, unary Check, h2load {args.c}x{args.m}, "
              f"{args.requests:,} requests (timer: {args.timer})\n\n"
              f"Without profiler: {info['ref_rps']:.0f} req/s, {info['ref_cpu_us']:.0f} µs "
              f"CPU/request (this process). Under cProfile: {info['prof_rps']:.0f} req/s, "
              f"{info['prof_cpu_us']:.0f} µs CPU/request (cProfile's own overhead inflates "
              "call-heavy code most).\n\n")
    text = header + analyse_pstats(stats, args.requests, args.top)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    print(f"pstats saved to {out_pstats}", file=sys.stderr)
    return 0


def run_pyspy(args: argparse.Namespace) -> int:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    tmp = Path(tempfile.mkdtemp(prefix="health-pyspy-"))
    body = write_body(tmp)
    raw = Path(args.collapsed) if args.collapsed else tmp / "check.collapsed"
    cmd = [pyspy, "record", "--format", "raw", "--full-filenames", "--rate", str(args.rate),
           "-o", str(raw)]
    if args.nonblocking:
        cmd.append("--nonblocking")
    cmd += ["--", sys.executable, "-m", "health", "serve", "--port", "0", "--grace", "0.2",
            "--log-level", "WARNING", "--service", f"{CHECK_SERVICE}=SERVING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, start_new_session=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        port = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"listening (\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise SystemExit(f"py-spy/server did not start:\n{err[-2000:]}")
        server_pid = _child_pid(proc.pid)
        subprocess.run(h2load_cmd(port, args.c, args.m, args.requests, body),
                       capture_output=True, text=True, timeout=600, check=False)
        if server_pid:
            os.kill(server_pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if not raw.exists() or not raw.read_text().strip():
        raise SystemExit(f"py-spy produced no samples:\n{err[-2000:]}")
    text = (f"## py-spy profile of ours, unary Check, h2load {args.c}x{args.m}, "
            f"{args.requests:,} requests ({args.rate} samples/s)\n\n"
            + analyse_collapsed(raw, args.requests, args.top))
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    print(f"collapsed stacks saved to {raw}", file=sys.stderr)
    return 0


def _child_pid(pid: int) -> int | None:
    for _ in range(50):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
                if kids:
                    return int(kids[0])
        except OSError:
            pass
        time.sleep(0.1)
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["cprofile", "pyspy", "report"])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("-c", type=int, default=8)
    p.add_argument("-m", type=int, default=16)
    p.add_argument("--timer", choices=["cpu", "wall"], default="cpu")
    p.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    p.add_argument("--nonblocking", action="store_true", help="py-spy --nonblocking")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--pstats", help="cprofile: where to save / report: file to read")
    p.add_argument("--collapsed", help="pyspy: where to save / report: file to read")
    p.add_argument("--output", help="also write the Markdown report here")
    args = p.parse_args()
    if args.mode == "cprofile":
        return run_cprofile(args)
    if args.mode == "pyspy":
        return run_pyspy(args)
    if args.pstats:
        print(analyse_pstats(pstats.Stats(args.pstats), args.requests, args.top))
    elif args.collapsed:
        print(analyse_collapsed(Path(args.collapsed), args.requests, args.top))
    else:
        p.error("report needs --pstats or --collapsed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
