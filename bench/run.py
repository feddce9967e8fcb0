"""Benchmark our gRPC health server against grpclib's and grpcio's (see bench/README.md).

    python bench/run.py [--quick] [--only ours,ours-native,grpclib,grpcio] [--skip-watch]
                        [--output PATH]

Run it with the project's venv python (it needs ``h2``/``hpack`` and the ``health`` package).
Every server runs alone, as its own subprocess on 127.0.0.1, so that its CPU time can be read
from /proc/<pid>/stat before and after each measurement:

* ours / ours-native: ``python -m health serve`` (this venv) on the h2 / native HTTP/2 engine,
  through ``bench/serve_ours.py``;
* grpclib: ``grpclib.server.Server`` + ``grpclib.health.service.Health`` (bench/.venv-peers);
* grpcio: ``grpc.aio.server`` + ``grpc_health.v1.health.aio.HealthServicer`` (bench/.venv-peers).

Unary Check is driven by h2load (1x1, 1x16, 8x16 connections x streams; N requests a run,
median of R runs after a warm-up), after the exact request h2load sends has been replayed to the
server and checked (grpc-status 0, SERVING). Watch fan-out uses bench/watch_client.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.metadata
import json
import math
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEER_VENV = BENCH / ".venv-peers"
PEER_PY = PEER_VENV / "bin" / "python"
PEER_PACKAGES = ["grpclib", "protobuf", "grpcio", "grpcio-health-checking"]

SERVERS = ("ours", "ours-native", "h2-floor", "grpclib", "grpcio")
#: bench/h2_floor.py: bare Trio + h2 answering Check only (no Watch, no validation).
FLOOR = "h2-floor"
#: Our server on each HTTP/2 engine: "ours" is the default engine (h2).
OURS = {"ours": "h2", "ours-native": "native"}
POINTS = ((1, 1), (1, 16), (8, 16))
CHECK_SERVICE = "bench.check"
WATCH_SERVICE = "bench.watch"
CHECK_PATH = "/grpc.health.v1.Health/Check"
H2LOAD_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: ``nice -n N`` prefix for servers and load generators (``--nice``; nice execs, same pid).
NICE: list[str] = []

sys.path.insert(0, str(BENCH))


class BenchError(Exception):
    """A failure with a message meant for the user."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds_precise(pid: int) -> float:
    """On-CPU time summed over the process's threads from schedstat (ns resolution);
    /proc/<pid>/stat counts in clock ticks (10 ms), too coarse for one status change."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                    open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return cpu_seconds(pid)
    return total / 1e9 if total else cpu_seconds(pid)


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (schedstat field 2):
    how much the server was starved by other load. NaN when schedstat is unavailable."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                    open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (FileNotFoundError, ValueError, IndexError):
        return math.nan
    return total / 1e9


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


# ------------------------------------------------------------------------------ processes


class Proc:
    """A subprocess whose stdout lines are read by a thread; stderr goes to a log file."""

    registry: list[Proc] = []
    started = 0

    def __init__(self, name: str, cmd: list[str], logdir: Path, *, stdin: bool = True,
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.cmd = cmd
        Proc.started += 1
        self.errpath = logdir / f"{Proc.started:02d}-{name}.stderr"
        self._err = open(self.errpath, "w")  # noqa: SIM115 - closed in stop()
        try:
            self.p = subprocess.Popen(
                cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1, cwd=cwd,
                start_new_session=True)
        except OSError as exc:
            self._err.close()
            raise BenchError(f"cannot start {name}: {exc}") from None
        Proc.registry.append(self)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.p.pid

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def stderr_tail(self, n: int = 15) -> str:
        try:
            text = self.errpath.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-n:])

    def readline(self, timeout: float, what: str) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.name}: no {what} within {timeout:.0f} s\n"
                             f"{self.stderr_tail()}") from None
        if line is None:
            self.p.wait(5)
            raise BenchError(f"{self.name} exited (status {self.p.returncode}) before {what}\n"
                             f"{self.stderr_tail()}")
        return line

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        try:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise BenchError(f"{self.name}: cannot write to stdin: {exc}") from None

    def stop(self, grace: float = 5.0) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(OSError):
                if self.p.stdin:
                    self.p.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.p.wait(5)
        with contextlib.suppress(OSError):
            if self.p.stdin:
                self.p.stdin.close()
        self._err.close()
        if self in Proc.registry:
            Proc.registry.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for proc in list(cls.registry):
            with contextlib.suppress(Exception):
                proc.stop(grace=3.0)


def run_cmd(cmd: list[str], timeout: float, what: str, **kw: Any
            ) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    except OSError as exc:
        raise BenchError(f"{what} could not run: {exc}") from None


# ------------------------------------------------------------------------------ setup


def ensure_h2load() -> str:
    path = shutil.which("h2load")
    if path:
        return path
    log("h2load missing: apt-get install -y nghttp2-client")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise BenchError("h2load is missing and we are not root: install nghttp2-client")
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = run_cmd([*prefix, "apt-get", "install", "-y", "nghttp2-client"], 300,
                     "apt-get install", env=env)
    if result.returncode != 0:
        run_cmd([*prefix, "apt-get", "update"], 300, "apt-get update", env=env)
        result = run_cmd([*prefix, "apt-get", "install", "-y", "nghttp2-client"], 300,
                         "apt-get install", env=env)
    path = shutil.which("h2load")
    if not path:
        raise BenchError("could not install h2load (Debian package nghttp2-client):\n"
                         + result.stderr[-1000:])
    return path


def ensure_ours() -> None:
    missing = []
    for mod in ("h2", "hpack", "health", "wire", "trio"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise BenchError(f"this python ({sys.executable}) cannot import {', '.join(missing)}: "
                         "run bench/run.py with the project's venv (e.g. .venv/bin/python)")


def ensure_peer_venv() -> None:
    # Two imports: grpclib's and grpcio's health_pb2 cannot share one descriptor pool.
    checks = ["import grpclib.health.service, google.protobuf",
              "import grpc, grpc_health.v1.health"]

    def importable() -> subprocess.CompletedProcess[str] | None:
        for check in checks:
            result = run_cmd([str(PEER_PY), "-c", check], 60, "peer venv check")
            if result.returncode != 0:
                return result
        return None

    if PEER_PY.exists():
        if importable() is None:
            return
    else:
        log(f"creating {PEER_VENV.relative_to(ROOT)}")
        result = run_cmd([sys.executable, "-m", "venv", str(PEER_VENV)], 300, "python -m venv")
        if result.returncode != 0:
            raise BenchError(f"cannot create {PEER_VENV}: {result.stderr[-1000:]}")
    log(f"pip install {' '.join(PEER_PACKAGES)} into {PEER_VENV.relative_to(ROOT)}")
    result = run_cmd([str(PEER_PY), "-m", "pip", "install", "-q", *PEER_PACKAGES], 900,
                     "pip install")
    if result.returncode != 0:
        raise BenchError(f"pip install into {PEER_VENV} failed:\n{result.stderr[-2000:]}")
    failed = importable()
    if failed is not None:
        raise BenchError(f"peer venv still cannot import the peers:\n{failed.stderr[-2000:]}")


def versions(py: str, dists: list[str]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {'python': sys.version.split()[0]}\n"
            f"for d in {dists!r}:\n"
            "    try: out[d] = m.version(d)\n"
            "    except Exception: out[d] = 'missing'\n"
            "print(json.dumps(out))")
    result = run_cmd([py, "-c", code], 60, "version query")
    try:
        return dict(json.loads(result.stdout))
    except ValueError:
        return {}


def environment(h2load: str, peers: bool) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": "unknown", "cores": os.cpu_count(), "kernel": platform.release(),
        "python": sys.version.split()[0], "loadavg_start": os.getloadavg()[0],
    }
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    env["h2load"] = run_cmd([h2load, "--version"], 20, "h2load --version").stdout.strip()
    env["ours_versions"] = {d: _dist_version(d) for d in ("trio", "h2", "hpack", "protobuf")}
    if peers:
        env["peer_versions"] = versions(str(PEER_PY), ["grpclib", "grpcio",
                                                       "grpcio-health-checking", "protobuf",
                                                       "h2"])
    git = run_cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], 20, "git")
    dirty = run_cmd(["git", "-C", str(ROOT), "status", "--porcelain", "--", "wire", "health"],
                    20, "git")
    env["commit"] = git.stdout.strip() or "unknown"
    env["dirty"] = bool(dirty.stdout.strip())
    return env


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


# ------------------------------------------------------------------------------ servers


@dataclass
class Server:
    kind: str
    proc: Proc
    port: int
    admin_port: int | None
    description: str

    def set_status(self, service: str, status: str) -> None:
        """Change a status the way an operator would (our admin API, the peers' stdin)."""
        if self.kind in OURS:
            assert self.admin_port is not None
            conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
            try:
                conn.request("PUT", f"/status?service={service}", body=status.encode())
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
            if resp.status != 200:
                raise BenchError(f"admin PUT answered {resp.status}: {body[:200]!r}")
        else:
            self.proc.send(f"set {service or '-'} {status}")
            answer = self.proc.readline(10, "an answer to set")
            if answer != "ok":
                raise BenchError(f"{self.kind} answered {answer!r} to set")


@contextlib.contextmanager
def start_server(kind: str, logdir: Path) -> Iterator[Server]:
    services = [f"{CHECK_SERVICE}=SERVING", f"{WATCH_SERVICE}=SERVING"]
    svc_args = [a for s in services for a in ("--service", s)]
    if kind in OURS:
        cmd = [sys.executable, str(BENCH / "serve_ours.py"), OURS[kind], "serve",
               "--host", "127.0.0.1", "--port", "0",
               "--admin-port", "0", "--grace", "0.5", "--log-level", "WARNING", *svc_args]
    elif kind == FLOOR:
        cmd = [sys.executable, str(BENCH / "h2_floor.py"), "--port", "0"]
    else:
        cmd = [str(PEER_PY), str(BENCH / "peer_server.py"), kind, "--port", "0", *svc_args]
    proc = Proc(kind, [*NICE, *cmd], logdir)
    try:
        first = proc.readline(30, "its 'listening' line")
        m = re.match(r"listening (\d+)\s*(.*)", first)
        if not m:
            raise BenchError(f"{kind}: unexpected first line {first!r}\n{proc.stderr_tail()}")
        port = int(m.group(1))
        admin = None
        desc = m.group(2) or (f"python -m health serve (Trio, http2={OURS[kind]})"
                              if kind in OURS else kind)
        if kind in OURS:
            second = proc.readline(30, "its 'admin' line")
            if not second.startswith("admin "):
                raise BenchError(f"ours: unexpected second line {second!r}")
            admin = int(second.split()[1])
        yield Server(kind, proc, port, admin, desc)
    finally:
        proc.stop()


# ------------------------------------------------------------------------------ verification


def verify(server: Server, captured: Any, logdir: Path) -> str:
    """Replay h2load's exact request and check the answer; cross-check with grpcio."""
    import h2tools

    try:
        reply = h2tools.replay("127.0.0.1", server.port, captured)
    except (OSError, TimeoutError, ValueError) as exc:
        raise BenchError(f"{server.kind}: replaying h2load's request failed: {exc}") from None
    statuses = [h2tools.health_status(m) for m in reply.messages]
    if not (reply.http_status == "200" and reply.grpc_status == "0" and statuses == [1]
            and (reply.content_type or "").startswith("application/grpc")):
        raise BenchError(f"{server.kind} does not answer h2load's Check request with OK "
                         f"SERVING: {reply.describe()}")
    note = f"h2load request replayed: {reply.describe()}"
    grpc_py = PEER_PY if PEER_PY.exists() and server.kind != FLOOR else None  # Check only
    if grpc_py is not None:
        result = run_cmd([str(grpc_py), str(BENCH / "grpc_verify.py"),
                          f"127.0.0.1:{server.port}", CHECK_SERVICE], 60, "grpcio verification")
        out = result.stdout.strip()
        if result.returncode != 0 or out != "ok Check=SERVING Watch=SERVING":
            raise BenchError(f"{server.kind}: grpcio client check failed: {out} "
                             f"{result.stderr[-500:]}")
        note += f"; grpcio client: {out}"
    return note


# ------------------------------------------------------------------------------ Check load


@dataclass
class LoadRun:
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    cpu_us: float
    cpu_util: float
    cpu_wait: float
    succeeded: int
    wall_s: float


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return float(sorted_values[k])


def h2load_run(server: Server, c: int, m: int, n: int, body: Path, tmp: Path,
               check_cpu: bool = True) -> LoadRun:
    logfile = tmp / f"h2load-{server.kind}-{c}x{m}.log"
    with contextlib.suppress(FileNotFoundError):
        logfile.unlink()
    cmd = [*NICE, "h2load", "-c", str(c), "-m", str(m), "-n", str(n), "-t", "1", "-d", str(body),
           *H2LOAD_HEADERS, f"--log-file={logfile}",
           f"http://127.0.0.1:{server.port}{CHECK_PATH}"]
    if server.proc.p.poll() is not None:
        raise BenchError(f"{server.kind} died\n{server.proc.stderr_tail()}")
    cpu0 = cpu_seconds(server.proc.pid)
    wait0 = runqueue_wait_seconds(server.proc.pid)
    t0 = time.monotonic()
    result = run_cmd(cmd, 120 + n / 50, f"h2load -c {c} -m {m}")
    wall = time.monotonic() - t0
    cpu1 = cpu_seconds(server.proc.pid)
    wait1 = runqueue_wait_seconds(server.proc.pid)
    out = result.stdout
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    req = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if result.returncode != 0 or not fin or not req or not codes:
        raise BenchError(f"h2load failed (exit {result.returncode}):\n{out[-1500:]}\n"
                         f"{result.stderr[-500:]}")
    succeeded = int(req.group(1))
    if succeeded != n or int(codes.group(1)) != n:
        raise BenchError(f"{server.kind} {c}x{m}: only {succeeded}/{n} requests succeeded "
                         f"({codes.group(0)}):\n{out[-800:]}")
    durations = []
    with open(logfile) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                durations.append(int(parts[2]))
    durations.sort()
    return LoadRun(
        rps=float(fin.group(3)),
        p50_ms=percentile(durations, 0.50) / 1000,
        p99_ms=percentile(durations, 0.99) / 1000,
        mean_ms=(sum(durations) / len(durations) / 1000) if durations else math.nan,
        cpu_us=(cpu1 - cpu0) / n * 1e6,
        cpu_util=(cpu1 - cpu0) / wall * 100,
        cpu_wait=(wait1 - wait0) / wall * 100,
        succeeded=succeeded,
        wall_s=wall,
    )


def median_run(runs: list[LoadRun]) -> dict[str, float]:
    return {k: statistics.median(getattr(r, k) for r in runs)
            for k in ("rps", "p50_ms", "p99_ms", "mean_ms", "cpu_us", "cpu_util", "cpu_wait")}


# ------------------------------------------------------------------------------ Watch fan-out


def watch_fanout(kind: str, n: int, per_conn: int, logdir: Path) -> dict[str, Any]:
    with start_server(kind, logdir) as server:
        pid = server.proc.pid
        time.sleep(0.5)
        rss0 = rss_kib(pid)
        client = Proc(f"watch-{kind}-{n}", [
            *NICE, sys.executable, str(BENCH / "watch_client.py"), "--port", str(server.port),
            "--service", WATCH_SERVICE, "--watchers", str(n), "--per-conn", str(per_conn),
            "--ready-timeout", "120", "--change-timeout", "120"], logdir, stdin=False)
        try:
            line = client.readline(150, "'ready'")
            if not line.startswith("ready "):
                raise BenchError(f"watch client ({kind}, {n}): {line}")
            setup_s = float(line.split()[2])
            # Let every watcher settle into its idle state before reading RSS.
            cpu_idle0 = cpu_seconds_precise(pid)
            time.sleep(1.5)
            cpu_idle1 = cpu_seconds_precise(pid)
            rss1 = rss_kib(pid)
            cpu0 = cpu_seconds_precise(pid)
            t0 = time.monotonic()
            server.set_status(WATCH_SERVICE, "NOT_SERVING")
            line = client.readline(150, "'done'")
            cpu1 = cpu_seconds_precise(pid)
            if not line.startswith("done "):
                raise BenchError(f"watch client ({kind}, {n}): {line}")
            _, first, last, count, dups = line.split()
            return {
                "watchers": n,
                "connections": math.ceil(n / per_conn),
                "setup_s": setup_s,
                "fanout_ms": (float(last) - t0) * 1000,
                "first_ms": (float(first) - t0) * 1000,
                "change_cpu_ms": (cpu1 - cpu0) * 1000,
                "change_cpu_us_per_watcher": (cpu1 - cpu0) * 1e6 / n,
                "idle_cpu_pct": (cpu_idle1 - cpu_idle0) / 1.5 * 100,
                "rss_before_kib": rss0,
                "rss_after_kib": rss1,
                "rss_per_watcher_kib": (rss1 - rss0) / n,
                "duplicates": int(dups),
                "count": int(count),
            }
        finally:
            client.stop(grace=2.0)


# ------------------------------------------------------------------------------ report


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if abs(v) >= 100 and digits <= 1:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "—"
    return f"{a / b:.2f}"


def _render_env(results: dict[str, Any]) -> list[str]:
    """The run's environment and configuration."""
    env = results["env"]
    cfg = results["config"]
    lines = ["# Health server benchmarks", ""]
    pv = env.get("peer_versions", {})
    ov = env["ours_versions"]
    lines += [
        f"- Date: {env['date']}",
        f"- CPU: {env['cpu']} ({env['cores']} cores), Linux {env['kernel']}, "
        f"load average at start {env['loadavg_start']:.2f}, at end {env.get('loadavg_end', 0):.2f}",
        f"- Python {env['python']} (ours; trio {ov['trio']}, h2 {ov['h2']}, hpack {ov['hpack']}, "
        f"protobuf {ov['protobuf']})"
        + (f"; peers: Python {pv.get('python')}, grpclib {pv.get('grpclib')}, grpcio "
           f"{pv.get('grpcio')}, grpcio-health-checking {pv.get('grpcio-health-checking')}, "
           f"protobuf {pv.get('protobuf')}" if pv else ""),
        f"- Load generator: {env['h2load']}; commit {env['commit']}"
        + (" (wire/ or health/ had uncommitted changes)" if env["dirty"] else ""),
        f"- Mode: {'quick (smoke run, not representative)' if cfg['quick'] else 'full'}; "
        f"{cfg['requests']:,} Check requests a run, median of {cfg['runs']} run(s) after a "
        f"{cfg['warmup']:,}-request warm-up; every server alone on 127.0.0.1"
        + (f"; servers and clients under nice -n {cfg['nice']}" if cfg.get("nice") is not None
           else ""),
        "",
        "Servers:",
        "",
    ]
    return lines


def _render_servers(results: dict[str, Any]) -> list[str]:
    """One bullet per server, with its verification or error."""
    lines: list[str] = []
    for kind, info in results["servers"].items():
        lines.append(f"- **{kind}**: {info['description']}")
        if info.get("verified"):
            lines.append(f"  - verified: {info['verified']}")
        if info.get("error"):
            lines.append(f"  - **error**: {info['error']}")
    return lines


def _usable(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A measurement that can be compared: present and not failed."""
    return result if result and "error" not in result else None


def _ratio_tables(kinds: list[str],
                  pick: Callable[[str, str], dict[str, Any] | None],
                  points: list[tuple[str, str]],
                  metrics: tuple[tuple[str, str], ...], *, title: str, intro: list[str],
                  first_column: tuple[str, str]) -> list[str]:
    """One "ours / peer" table per server of ours: a row per point and metric.

    ``pick(kind, key)`` is the comparable result of one server at one point (None if there is
    none); ``points`` pairs each key with the label its rows show.
    """
    lines: list[str] = []
    name, align = first_column
    for ours in [k for k in kinds if k in OURS]:
        peers = [k for k in kinds if k != ours and (ours != "ours" or k not in OURS)]
        if not peers:
            continue
        lines += ["", f"### Ratios {ours} / peer{title}", "", *intro,
                  f"| {name} | metric | " + " | ".join(f"{ours}/{p}" for p in peers) + " |",
                  align + "---|" + "---:|" * len(peers)]
        for key, label in points:
            o = pick(ours, key)
            if o is None:
                continue
            for metric, metric_label in metrics:
                cells = []
                for p in peers:
                    other = pick(p, key)
                    cells.append(_ratio(o[metric], other[metric]) if other else "—")
                lines.append(f"| {label} | {metric_label} | " + " | ".join(cells) + " |")
    return lines


def _render_check(results: dict[str, Any]) -> list[str]:
    """The unary Check table and the ratios of ours to each peer."""
    kinds = list(results["servers"])
    check = results.get("check", {})
    if not check:
        return []
    lines: list[str] = []
    lines += ["", "## Unary Check (h2load)", "",
              "CPU is the server process's utime+stime (all threads) over the run divided "
              "by the requests; latency is h2load's per-request time from its log file; "
              "*server CPU %* is that CPU time over the run's wall time (100 = one core "
              "busy); *runnable, no CPU %* is the time its threads were ready to run but "
              "waited for a CPU (schedstat), over the wall time: a large value means other "
              "load on the machine starved it, and its req/s and latency are not its "
              "capacity (CPU/request still is).", "",
              "| c x m | server | req/s | p50 ms | p99 ms | server CPU µs/req | server CPU % "
              "| runnable, no CPU % |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for point in [f"{c}x{m}" for c, m in POINTS]:
        for kind in kinds:
            r = check.get(kind, {}).get(point)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {point} | {kind} | failed: {r['error'][:80]} | | | | | |")
                continue
            md = r["median"]
            lines.append(f"| {point} | {kind} | {_fmt(md['rps'], 0)} | "
                         f"{_fmt(md['p50_ms'], 2)} | {_fmt(md['p99_ms'], 2)} | "
                         f"{_fmt(md['cpu_us'], 0)} | {_fmt(md['cpu_util'], 0)} | "
                         f"{_fmt(md.get('cpu_wait'), 0)} |")
    lines += _ratio_tables(
        kinds, lambda kind, point: check.get(kind, {}).get(point, {}).get("median"),
        [(f"{c}x{m}", f"{c}x{m}") for c, m in POINTS],
        (("rps", "req/s"), ("cpu_us", "CPU/req"), ("p50_ms", "p50"), ("p99_ms", "p99")),
        title="", intro=["Throughput: above 1 means ours is faster. CPU and latency: below 1 "
                         "means ours is cheaper/quicker.", ""],
        first_column=("c x m", "|---|"))
    return lines


def _render_watch(results: dict[str, Any]) -> list[str]:
    """The Watch fan-out table and the ratios of ours to each peer."""
    kinds = list(results["servers"])
    cfg = results["config"]
    watch = results.get("watch", {})
    if not watch:
        return []
    lines: list[str] = []
    lines += ["", "## Watch fan-out", "",
              f"N watchers of one service over connections of {cfg['per_conn']} streams; one "
              "status change (SERVING -> NOT_SERVING via our admin API / the peers' own "
              "`set`). *Fan-out* is from just before the trigger to the moment the last "
              "watcher had the new status (first: the first watcher); *CPU* is the server's "
              "on-CPU time (schedstat, all threads) from the trigger to the last receipt; "
              "*RSS/watcher* is (VmRSS with N idle watchers - VmRSS before) / N.", "",
              "| N | server | setup s | fan-out ms | first ms | change CPU ms | "
              "CPU µs/watcher | RSS KiB/idle watcher | idle CPU % |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in cfg["watchers"]:
        for kind in kinds:
            r = watch.get(kind, {}).get(str(n))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {n:,} | {kind} | failed: {r['error'][:80]} | | | | | | |")
                continue
            lines.append(f"| {n:,} | {kind} | {_fmt(r['setup_s'], 2)} | "
                         f"{_fmt(r['fanout_ms'], 1)} | {_fmt(r['first_ms'], 1)} | "
                         f"{_fmt(r['change_cpu_ms'], 1)} | "
                         f"{_fmt(r['change_cpu_us_per_watcher'], 1)} | "
                         f"{_fmt(r['rss_per_watcher_kib'], 1)} | "
                         f"{_fmt(r['idle_cpu_pct'], 1)} |")
    lines += _ratio_tables(
        kinds, lambda kind, n: _usable(watch.get(kind, {}).get(n)),
        [(str(n), f"{n:,}") for n in cfg["watchers"]],
        (("fanout_ms", "fan-out time"), ("change_cpu_ms", "change CPU"),
         ("rss_per_watcher_kib", "RSS/idle watcher"), ("setup_s", "setup time")),
        title=" (below 1: ours is quicker / smaller)", intro=[],
        first_column=("N", "|---:|"))
    return lines


_NOTES = ["", "## Notes", "",
          "- On this shared 2-core machine CPU/request moves by about ±10 % between full "
          "runs (cache and hyper-thread contention), req/s and latency by more; compare "
          "ratios within one run, and rerun before trusting a small difference.",
          "- *runnable, no CPU %* sums over a process's threads: grpcio's threads also "
          "wait for each other and for h2load on the 2 cores, so its value is high whatever "
          "the outside load; for the single-threaded Python servers it measures how much "
          "outside load (and h2load) took the CPU from them.",
          "- grpcio runs with `grpc.server.max_pending_requests` (and its hard limit) "
          "raised to 100,000: with the defaults (1,000 soft with random early rejection, "
          "3,000 hard) grpc-core CANCELs Watch calls that arrive faster than the asyncio "
          "loop accepts them — 2,000 Watch calls opened at once already fail.",
          "- grpclib's `Health` keeps `\"\"` as the aggregate of all checks; each named "
          "service is one `ServiceStatus`. Ours is changed through its admin API (one "
          "HTTP/1.1 PUT), the peers through a command on their stdin.",
          ""]


def render(results: dict[str, Any]) -> str:
    """The Markdown report of a run."""
    lines = [*_render_env(results), *_render_servers(results), *_render_check(results),
             *_render_watch(results), *_NOTES]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2,000 requests, 1 run, 500 watchers")
    p.add_argument("--only", default=",".join(SERVERS),
                   help="comma-separated servers among ours,grpclib,grpcio (default: all)")
    p.add_argument("--skip-watch", action="store_true", help="skip the Watch fan-out part")
    p.add_argument("--skip-check", action="store_true", help="skip the unary Check part")
    p.add_argument("--requests", type=int, help="Check requests per run (default 20000)")
    p.add_argument("--runs", type=int, help="measured runs per point (default 3)")
    p.add_argument("--watchers", help="comma-separated watcher counts (default 1000,5000)")
    p.add_argument("--per-conn", type=int, default=100, help="Watch streams per connection")
    p.add_argument("--nice", type=int, default=None,
                   help="run servers and load generators under `nice -n N` (a negative N "
                        "needs root; helps on a shared machine, at the others' expense)")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only re-render the Markdown of a saved results .json (to --output, "
                        "else stdout)")
    p.add_argument("--output", type=Path,
                   help="Markdown file to write (default bench/results.md, written only by a "
                        "complete full run)")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SERVERS]
    if bad or not args.only:
        p.error(f"--only takes {', '.join(SERVERS)} (comma-separated); got {bad}")
    args.requests = args.requests or (2000 if args.quick else 20000)
    args.runs = args.runs or (1 if args.quick else 3)
    args.warmup = max(100, min(1000, args.requests // 10))
    if args.watchers:
        args.watchers = [int(x) for x in args.watchers.split(",")]
    else:
        args.watchers = [500] if args.quick else [1000, 5000]
    return args


def _measure_check(kind: str, server: Server, args: argparse.Namespace, body: Path, logdir: Path,
                   into: dict[str, Any]) -> int:
    """Every Check point of one server into ``into``; returns how many failed."""
    failures = 0
    for c, m in POINTS:
        point = f"{c}x{m}"
        try:
            h2load_run(server, c, m, args.warmup, body, logdir)
            runs = [h2load_run(server, c, m, args.requests, body, logdir)
                    for _ in range(args.runs)]
            med = median_run(runs)
            into[point] = {"median": med, "runs": [r.__dict__ for r in runs]}
            log(f"{kind} {point}: {med['rps']:.0f} req/s, p50 "
                f"{med['p50_ms']:.2f} ms, p99 {med['p99_ms']:.2f} ms, "
                f"{med['cpu_us']:.0f} µs CPU/req")
        except BenchError as exc:
            failures += 1
            log(f"{kind} {point} FAILED: {exc}")
            into[point] = {"error": str(exc).splitlines()[0]}
    return failures


def _measure_watch(kind: str, args: argparse.Namespace, logdir: Path,
                   into: dict[str, Any]) -> int:
    """Every Watch fan-out size of one server into ``into``; returns how many failed."""
    failures = 0
    for n in args.watchers:
        try:
            r = watch_fanout(kind, n, args.per_conn, logdir)
            into[str(n)] = r
            log(f"{kind} watch {n}: setup {r['setup_s']:.2f} s, fan-out "
                f"{r['fanout_ms']:.1f} ms, change CPU {r['change_cpu_ms']:.1f} ms, "
                f"RSS {r['rss_per_watcher_kib']:.1f} KiB/watcher")
        except BenchError as exc:
            failures += 1
            log(f"{kind} watch {n} FAILED: {exc}")
            into[str(n)] = {"error": str(exc).splitlines()[0]}
    return failures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        text = render(json.loads(args.render.read_text()))
        if args.output:
            args.output.write_text(text)
        else:
            print(text)
        return 0

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    if args.nice is not None:
        NICE[:] = ["nice", "-n", str(args.nice)]
    started = time.monotonic()
    logdir = Path(tempfile.mkdtemp(prefix="health-bench-"))
    try:
        ensure_ours()
        h2load = ensure_h2load()
        peers = [s for s in args.only if s not in OURS and s != FLOOR]
        if peers:
            ensure_peer_venv()
        results: dict[str, Any] = {
            "env": environment(h2load, bool(peers)),
            "config": {"quick": args.quick, "requests": args.requests, "runs": args.runs,
                       "warmup": args.warmup, "watchers": args.watchers,
                       "per_conn": args.per_conn, "nice": args.nice,
                       "points": [f"{c}x{m}" for c, m in POINTS]},
            "servers": {}, "check": {}, "watch": {},
        }
        import h2tools

        body = logdir / "check-request.bin"
        body.write_bytes(h2tools.encode_check_request(CHECK_SERVICE))
        captured = h2tools.capture_h2load_request(["-d", str(body), *H2LOAD_HEADERS], CHECK_PATH)
        log(f"h2load sends: {[(n.decode(), v.decode()) for n, v in captured.headers]} "
            f"body {captured.body.hex()}")
        if captured.body != body.read_bytes():
            raise BenchError("h2load did not send the request body file as is")
        failures = 0
        for kind in args.only:
            info: dict[str, Any] = {"description": ""}
            results["servers"][kind] = info
            results["check"][kind] = {}
            try:
                with start_server(kind, logdir) as server:
                    info["description"] = server.description
                    info["verified"] = verify(server, captured, logdir)
                    log(f"{kind}: {info['verified']}")
                    # --skip-check must not skip the Watch part below (a `continue` here did).
                    if not args.skip_check:
                        failures += _measure_check(kind, server, args, body, logdir,
                                                   results["check"][kind])
            except BenchError as exc:
                failures += 1
                info["error"] = str(exc).splitlines()[0]
                log(f"{kind} FAILED: {exc}")
                continue
            if args.skip_watch or kind == FLOOR:
                continue
            results["watch"][kind] = {}
            failures += _measure_watch(kind, args, logdir, results["watch"][kind])
        results["env"]["loadavg_end"] = os.getloadavg()[0]
        results["env"]["duration_s"] = round(time.monotonic() - started, 1)
        text = render(results)
        print(text)
        complete = not (args.quick or args.skip_watch or args.skip_check
                        or set(args.only) != set(SERVERS) or args.requests != 20000
                        or args.runs != 3)
        output = args.output or (BENCH / "results.md" if complete else None)
        if output is not None:
            output.write_text(text)
            output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
            log(f"wrote {output} and {output.with_suffix('.json')}")
        else:
            log("partial or quick run: bench/results.md left alone (use --output to write)")
        log(f"total {time.monotonic() - started:.0f} s; logs in {logdir}")
        return 1 if failures else 0
    except BenchError as exc:
        log(f"error: {exc}")
        log(f"logs in {logdir}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        Proc.stop_all()


if __name__ == "__main__":
    sys.exit(main())
