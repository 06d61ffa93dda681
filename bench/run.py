"""
The pluginserver benchmark: one command, one run, figures read as ratios.

    /work/venv/bin/python bench/run.py [--rounds 3] [--duration 5]
        [--connections 32] [--warmup 2] [--json results.json]

It starts, side by side on 127.0.0.1 (free ports, temporary configs):

  - the project under C{twistd -n pluginserver} as it runs by default (the
    asyncio reactor on uvloop's loop), serving the repository's plugins/
    (hello and systeminfo);
  - the same on the asyncio reactor with the standard loop (C{[server]
    uvloop = bool:false}) and on the epoll reactor (C{twistd -r epoll}),
    for their /hello only;
  - the ceiling: bench/ceiling.py, a bare twisted.web Resource answering
    the same JSON as /hello, on the epoll reactor;

pins the servers to CPU 0 and wrk to CPU 1 (when taskset exists and there
are two CPUs), drives the ceiling, /hello and /systeminfo of the default
server and the other two /hello with C{wrk -t1 -c32 --latency} in
interleaved rounds after a warm-up, and prints per route and round req/s,
p50, p99 and errors, the ratios to the ceiling and systeminfo/hello per
round and their medians, the default server's idle and loaded RSS, and the
median time of C{GET /reload/hello} over 20 calls.  C{--json PATH} writes
the same figures as JSON.  Every process it started is stopped, whatever
happens.

With C{--workers 1,2} it runs the workers mode instead: one pluginserver
per worker count (C{[server] workers}), none of them nor wrk pinned (the
workers need every CPU), driven on /hello in interleaved rounds; it prints
per count req/s, p50, p99, the server's CPU use (supervisor and workers
together) and requests per CPU-second, the ratio of each count's req/s to
one worker's, and the median C{GET /reload/hello} time with the largest
count.

Standard library and psutil only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]
from _harness import (
    BENCH_DIR,
    REPO_DIR,
    BenchError,
    Processes,
    child_env,
    free_port,
    http_get,
    log_tail,
    pinned,
    rss_mb,
    run_with_processes,
    server_cpus,
    twistd,
    wait_until_serving,
    write_config,
)

# The targets of issue 6, point 4.
TARGET_HELLO_VS_CEILING = 0.9
TARGET_SYSTEMINFO_VS_HELLO = 0.7
TARGET_P99_EXTRA_MS = 1.0
TARGET_RELOAD_MS = 20.0
TARGET_IDLE_RSS_MB = 45.0

RELOAD_PLUGIN = "hello"
# A single-threaded server driven by wrk -c32 keeps its CPU busy; less than
# this means something else took the CPU (or starved wrk): a noisy run.
SATURATED_CPU_PERCENT = 90.0
PACKAGES_WAIT = 60.0


@dataclass(frozen=True)
class Target:
    """
    One thing wrk drives: a name, a port and a path, and the process that
    serves it (whose CPU time is measured during each run).
    """

    name: str
    port: int
    path: str
    pid: int
    tree: bool = False
    """Count the CPU time of the process's children too (its workers)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


@dataclass
class WrkResult:
    """
    What one wrk run measured.  Latencies in milliseconds; errors are
    non-2xx/3xx responses plus socket errors (connect, read, write,
    timeout); server_cpu_percent is the serving process's CPU time over the
    run's wall time (100 = one core busy all the time).
    """

    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx_3xx: int
    socket_errors: dict[str, int]
    requests: int
    server_cpu_percent: float


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> tuple[float, float, float, int, dict[str, int], int]:
    """
    Read req/s, p50 and p99 (ms), non-2xx/3xx responses, socket errors and
    the request count from wrk's C{--latency} report.
    """

    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    rps = find(r"^Requests/sec:\s+([\d.]+)")
    p50 = find(r"^\s+50%\s+(\S+)")
    p99 = find(r"^\s+99%\s+(\S+)")
    count = find(r"^\s+(\d+) requests in ")
    if rps is None or p50 is None or p99 is None or count is None:
        raise BenchError("cannot read wrk's report:\n" + output)
    non2xx = find(r"Non-2xx or 3xx responses:\s+(\d+)")
    sockets = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    socketErrors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if sockets is not None:
        for key, value in zip(socketErrors, sockets.groups(), strict=True):
            socketErrors[key] = int(value)
    return (
        float(rps.group(1)),
        _duration_ms(p50.group(1)),
        _duration_ms(p99.group(1)),
        int(non2xx.group(1)) if non2xx else 0,
        socketErrors,
        int(count.group(1)),
    )


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """
    The CPU time (user + system) of a process, and with C{tree} of its
    children (a supervisor's workers) too.
    """
    process = psutil.Process(pid)
    processes = [process, *(process.children(recursive=True) if tree else [])]
    total = 0.0
    for each in processes:
        try:
            times = each.cpu_times()
        except psutil.Error:
            continue
        total += float(times.user + times.system)
    return total


def run_wrk(target: Target, duration: float, connections: int, cpu: int | None) -> WrkResult:
    """
    One C{wrk -t1 -c<connections> -d<duration>s --latency} run against
    C{target}.
    """
    command = pinned(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--latency",
            target.url,
        ],
        cpu,
    )
    cpuBefore = cpu_seconds(target.pid, target.tree)
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        out, _ = process.communicate(timeout=duration + 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    elapsed = time.monotonic() - started
    cpuUsed = cpu_seconds(target.pid, target.tree) - cpuBefore
    text = out.decode("utf-8", "replace")
    if process.returncode != 0:
        raise BenchError(f"{' '.join(command)} exited {process.returncode}:\n{text}")
    rps, p50, p99, non2xx, socketErrors, count = parse_wrk(text)
    return WrkResult(
        requests_per_sec=rps,
        p50_ms=p50,
        p99_ms=p99,
        errors=non2xx + sum(socketErrors.values()),
        non_2xx_3xx=non2xx,
        socket_errors=socketErrors,
        requests=count,
        server_cpu_percent=100.0 * cpuUsed / elapsed,
    )


def ensure_wrk() -> str:
    """
    wrk's path; installed through apt-get when missing.
    """
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") is not None:
        print("wrk is not installed: trying apt-get install -y wrk", flush=True)
        attempts = [["apt-get", "install", "-y", "wrk"]]
        attempts.append(["apt-get", "update"])
        attempts.append(["apt-get", "install", "-y", "wrk"])
        for command in attempts:
            subprocess.run(command, stdin=subprocess.DEVNULL, check=False)
            found = shutil.which("wrk")
            if found:
                return found
    raise BenchError(
        "wrk is not installed and could not be installed with apt-get "
        "(needs root and a Debian/Ubuntu package index): install wrk "
        "(https://github.com/wg/wrk) and run again"
    )


def wrk_version() -> str:
    result = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"wrk (\S+)", result.stdout + result.stderr)
    return f"wrk {match.group(1)}" if match else "wrk (unknown version)"


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO_DIR, "status", "--porcelain", "--", "pluginserver", "plugins"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+uncommitted" if dirty else "")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def check_answers(ceiling: int, server: int) -> None:
    """
    Before measuring, check each target answers what it should: the same
    JSON as application/json from the ceiling and /hello, a systeminfo
    document from /systeminfo.
    """
    expected = {"hello": "world"}
    for name, port, path in (("ceiling", ceiling, "/hello"), ("hello", server, "/hello")):
        status, headers, body = http_get(port, path)
        if status != 200 or json.loads(body) != expected:
            raise BenchError(f"{name} {path} answered {status} {body[:200]!r}")
        if not headers.get("content-type", "").startswith("application/json"):
            raise BenchError(f"{name} {path} answered content-type {headers.get('content-type')!r}")
    status, _, body = http_get(server, "/systeminfo")
    if status != 200 or "cpu" not in json.loads(body):
        raise BenchError(f"/systeminfo answered {status} {body[:200]!r}")


def wait_for_packages(port: int, timeout: float) -> float | None:
    """
    Wait until systeminfo's background package count is done (it runs dpkg
    or apt in a thread on the server's CPU and would skew the first round).
    Returns the seconds waited, or None when it did not finish in time.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, _, body = http_get(port, "/systeminfo/packages")
        if status == 200 and json.loads(body).get("checked_at") is not None:
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def time_reloads(port: int, name: str, calls: int) -> list[float]:
    """
    Time C{calls} successive C{GET /reload/<name>} from the client side, on
    one keep-alive connection; milliseconds each.
    """
    times: list[float] = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(calls):
            started = time.perf_counter()
            connection.request("GET", f"/reload/{name}")
            response = connection.getresponse()
            body = response.read()
            times.append((time.perf_counter() - started) * 1e3)
            if response.status != 200 or not json.loads(body).get("success"):
                raise BenchError(f"/reload/{name} answered {response.status} {body[:300]!r}")
    finally:
        connection.close()
    return times


def scan_log(path: str) -> dict[str, Any]:
    """
    Count the server log's lines, tracebacks and error-looking lines, and
    keep the first few of the latter, so trouble under load is not missed.
    """
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").splitlines()
    suspicious = [
        line
        for line in lines
        if re.search(r"Traceback|Unhandled|\bError\b|\berror\b|CRITICAL|failed", line)
    ]
    return {
        "lines": len(lines),
        "tracebacks": sum("Traceback" in line for line in lines),
        "suspicious": len(suspicious),
        "first_suspicious": suspicious[:8],
    }


def _running_on(log: str) -> str:
    """
    What a pluginserver's log says it runs on (its "Running on" line).
    """
    with open(log, errors="replace") as f:
        for line in f:
            found = re.search(r"Running on (.*?)(?: \(chosen with|$)", line.rstrip())
            if found:
                return found.group(1)
    return "unknown"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark pluginserver's /hello and /systeminfo against a "
        "bare twisted.web ceiling, in interleaved wrk rounds."
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per wrk run (default 5)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="warm-up seconds per target (default 2; 0 = none)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument(
        "--reloads", type=int, default=20, help="timed /reload/hello calls (default 20)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="run pluginserver with [server] access_log set (to compare logging on and off)",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="run pluginserver with a [limits] rate limit so high it is never hit "
        "(to state what rate limiting costs per request)",
    )
    parser.add_argument(
        "--workers",
        metavar="N,M",
        help="workers mode: compare [server] workers counts on /hello (e.g. 1,2), "
        "unpinned, instead of the default run",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (config, logs)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.reloads < 1:
        parser.error("--rounds, --duration, --connections and --reloads must be positive")
    if args.workers is not None:
        try:
            args.workers = sorted({int(n) for n in args.workers.split(",")})
        except ValueError:
            parser.error("--workers: a comma-separated list of worker counts, e.g. 1,2")
        if not all(1 <= n <= 256 for n in args.workers):
            parser.error("--workers: each count from 1 to 256")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ensure_wrk()
    except BenchError as e:
        print(f"bench/run.py: {e}", file=sys.stderr)
        return 2
    if args.workers:
        return run_with_processes(
            "run",
            args.keep,
            lambda processes, workdir: _runWorkers(args, processes, workdir),
        )
    serverCpu, wrkCpu = server_cpus()
    return run_with_processes(
        "run",
        args.keep,
        lambda processes, workdir: _run(args, processes, workdir, serverCpu, wrkCpu),
    )


def _run(
    args: argparse.Namespace,
    processes: Processes,
    workdir: str,
    serverCpu: int | None,
    wrkCpu: int | None,
) -> int:
    serverPort, ceilingPort = free_port(), free_port()
    while ceilingPort == serverPort:
        ceilingPort = free_port()
    # As etc/ps.ini: the Host check for loopback (no key, no CORS there).
    extra = "allowed_hosts = list:localhost 127.0.0.1 [::1]\n"
    if args.access_log:
        extra += "access_log = access.log\n"
    plugins = os.path.join(REPO_DIR, "plugins")
    serverLog = os.path.join(workdir, "twistd.log")
    ceilingLog = os.path.join(workdir, "ceiling.log")
    env = child_env()
    loadBefore = os.getloadavg()

    # A section of its own, after every [server] key.
    limits = "[limits]\nrate = float:1000000\nburst = int:1000000\n" if args.limits else ""

    def pluginserver(name: str, port: int, extra: str, twistdArgs: list[str]) -> Any:
        config = write_config(workdir, port, plugins, extra + limits)
        return processes.start(
            name,
            pinned(
                [
                    twistd(),
                    "-n",
                    "--pidfile",
                    os.path.join(workdir, f"{name}.pid"),
                    *twistdArgs,
                    "pluginserver",
                    "--config",
                    config,
                ],
                serverCpu,
            ),
            cwd=workdir,
            log_path=os.path.join(workdir, f"{name}.log") if name != "pluginserver" else serverLog,
            env=env,
        )

    # The default (asyncio reactor, uvloop), then the two others it is
    # compared with: the standard asyncio loop, and Twisted's epoll reactor.
    server = pluginserver("pluginserver", serverPort, extra, [])
    stdloopPort, epollPort = free_port(), free_port()
    stdloop = pluginserver("stdloop", stdloopPort, extra + "uvloop = bool:false\n", [])
    epoll = pluginserver("epoll", epollPort, extra, ["-r", "epoll"])
    ceiling = processes.start(
        "ceiling",
        pinned(
            [sys.executable, os.path.join(BENCH_DIR, "ceiling.py"), str(ceilingPort)], serverCpu
        ),
        cwd=workdir,
        log_path=ceilingLog,
        env=env,
    )
    wait_until_serving(ceilingPort, "/hello", ceiling, ceilingLog)
    wait_until_serving(serverPort, "/hello", server, serverLog)
    wait_until_serving(stdloopPort, "/hello", stdloop, os.path.join(workdir, "stdloop.log"))
    wait_until_serving(epollPort, "/hello", epoll, os.path.join(workdir, "epoll.log"))
    check_answers(ceilingPort, serverPort)
    reactors = {
        name: _running_on(os.path.join(workdir, log))
        for name, log in (
            ("default", "twistd.log"),
            ("stdloop", "stdloop.log"),
            ("epoll", "epoll.log"),
        )
    }
    packagesWait = wait_for_packages(serverPort, PACKAGES_WAIT)
    time.sleep(1.0)
    idleRss = rss_mb(server.pid)
    ceilingIdleRss = rss_mb(ceiling.pid)

    targets = [
        Target("ceiling", ceilingPort, "/hello", ceiling.pid),
        Target("hello", serverPort, "/hello", server.pid),
        Target("systeminfo", serverPort, "/systeminfo", server.pid),
        Target("hello-std", stdloopPort, "/hello", stdloop.pid),
        Target("hello-epoll", epollPort, "/hello", epoll.pid),
    ]
    pinning = (
        f"servers on CPU {serverCpu}, wrk on CPU {wrkCpu} (taskset)"
        if serverCpu is not None
        else "no pinning (taskset missing or one CPU)"
    )
    print(
        f"pluginserver bench: {git_revision()}, Python {platform.python_version()}, {wrk_version()}"
    )
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs; {pinning}; "
        f"load average before start {loadBefore[0]:.2f} {loadBefore[1]:.2f} {loadBefore[2]:.2f}"
    )
    print(
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s --latency; "
        f"{args.rounds} interleaved rounds after {args.warmup:g} s warm-up per target"
        + ("; access log ON" if args.access_log else "")
    )
    print(
        f"hello: {reactors['default']}; hello-std: {reactors['stdloop']}; "
        f"hello-epoll: {reactors['epoll']}"
    )
    if packagesWait is None:
        print(f"note: systeminfo's package check had not finished after {PACKAGES_WAIT:.0f} s")
    print(flush=True)

    if args.warmup > 0:
        for target in targets:
            run_wrk(target, args.warmup, args.connections, wrkCpu)

    print(
        f"{'round':>5}  {'route':<11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'srv cpu%':>9}"
    )
    rounds: list[dict[str, Any]] = []
    noisy = 0
    for number in range(1, args.rounds + 1):
        results: dict[str, WrkResult] = {}
        for target in targets:
            result = run_wrk(target, args.duration, args.connections, wrkCpu)
            results[target.name] = result
            contended = result.server_cpu_percent < SATURATED_CPU_PERCENT
            noisy += contended
            print(
                f"{number:>5}  {target.name:<11} {result.requests_per_sec:>9.0f} "
                f"{result.p50_ms:>8.2f} {result.p99_ms:>8.2f} {result.errors:>7} "
                f"{result.server_cpu_percent:>9.0f}{' *' if contended else ''}",
                flush=True,
            )
        hello, ceil, sysinfo = results["hello"], results["ceiling"], results["systeminfo"]
        rounds.append(
            {
                "round": number,
                "results": {name: asdict(r) for name, r in results.items()},
                "hello_vs_ceiling": hello.requests_per_sec / ceil.requests_per_sec,
                "hello_std_vs_ceiling": results["hello-std"].requests_per_sec
                / ceil.requests_per_sec,
                "hello_epoll_vs_ceiling": results["hello-epoll"].requests_per_sec
                / ceil.requests_per_sec,
                "systeminfo_vs_hello": sysinfo.requests_per_sec / hello.requests_per_sec,
                "hello_p99_minus_ceiling_ms": hello.p99_ms - ceil.p99_ms,
                "systeminfo_p99_minus_ceiling_ms": sysinfo.p99_ms - ceil.p99_ms,
            }
        )
        print(
            f"       hello/ceiling {rounds[-1]['hello_vs_ceiling']:.3f}   "
            f"hello-std/ceiling {rounds[-1]['hello_std_vs_ceiling']:.3f}   "
            f"hello-epoll/ceiling {rounds[-1]['hello_epoll_vs_ceiling']:.3f}\n       "
            f"systeminfo/hello {rounds[-1]['systeminfo_vs_hello']:.3f}   "
            f"hello p99 - ceiling p99 {rounds[-1]['hello_p99_minus_ceiling_ms']:+.2f} ms",
            flush=True,
        )

    loadedRss = rss_mb(server.pid)
    ceilingLoadedRss = rss_mb(ceiling.pid)
    reloadTimes = time_reloads(serverPort, RELOAD_PLUGIN, args.reloads)
    rssAfterReloads = rss_mb(server.pid)
    if server.poll() is not None:
        raise BenchError(
            f"pluginserver exited {server.returncode} during the run:\n{log_tail(serverLog)}"
        )

    summary = {
        name: {
            "requests_per_sec": median([r["results"][name]["requests_per_sec"] for r in rounds]),
            "p50_ms": median([r["results"][name]["p50_ms"] for r in rounds]),
            "p99_ms": median([r["results"][name]["p99_ms"] for r in rounds]),
            "errors": sum(r["results"][name]["errors"] for r in rounds),
        }
        for name in ("ceiling", "hello", "systeminfo", "hello-std", "hello-epoll")
    }
    helloVsCeiling = median([r["hello_vs_ceiling"] for r in rounds])
    stdVsCeiling = median([r["hello_std_vs_ceiling"] for r in rounds])
    epollVsCeiling = median([r["hello_epoll_vs_ceiling"] for r in rounds])
    sysVsHello = median([r["systeminfo_vs_hello"] for r in rounds])
    p99Extra = median([r["hello_p99_minus_ceiling_ms"] for r in rounds])
    reloadMedian = median(reloadTimes)
    targetsMet = {
        "hello_vs_ceiling": helloVsCeiling >= TARGET_HELLO_VS_CEILING,
        "systeminfo_vs_hello": sysVsHello >= TARGET_SYSTEMINFO_VS_HELLO,
        "hello_p99_extra": p99Extra <= TARGET_P99_EXTRA_MS,
        "reload_median": reloadMedian < TARGET_RELOAD_MS,
        "idle_rss": idleRss < TARGET_IDLE_RSS_MB,
    }

    if noisy:
        print(
            f"  * the server used under {SATURATED_CPU_PERCENT:g}% of its CPU: it was not the "
            "bottleneck (another process on its CPU or wrk's?): a noisy run"
        )
    print()
    print("medians over rounds:")
    for name, s in summary.items():
        print(
            f"  {name:<11} {s['requests_per_sec']:>9.0f} req/s  p50 {s['p50_ms']:.2f} ms  "
            f"p99 {s['p99_ms']:.2f} ms  errors {s['errors']}"
        )
    print(
        f"  hello/ceiling      {helloVsCeiling:.3f}  (target >= {TARGET_HELLO_VS_CEILING}: "
        f"{_verdict(targetsMet['hello_vs_ceiling'])})"
    )
    print(f"  hello-std/ceiling  {stdVsCeiling:.3f}  (asyncio reactor, standard loop)")
    print(f"  hello-epoll/ceiling {epollVsCeiling:.3f}  (twistd -r epoll)")
    print(
        f"  systeminfo/hello   {sysVsHello:.3f}  (target >= {TARGET_SYSTEMINFO_VS_HELLO}: "
        f"{_verdict(targetsMet['systeminfo_vs_hello'])})"
    )
    print(
        f"  hello p99 - ceiling p99  {p99Extra:+.2f} ms  (target <= +{TARGET_P99_EXTRA_MS:g} ms: "
        f"{_verdict(targetsMet['hello_p99_extra'])})"
    )
    print(
        f"memory (RSS): pluginserver idle {idleRss:.1f} MB (target < {TARGET_IDLE_RSS_MB:g}: "
        f"{_verdict(targetsMet['idle_rss'])}), loaded {loadedRss:.1f} MB, "
        f"after reloads {rssAfterReloads:.1f} MB; ceiling idle {ceilingIdleRss:.1f} MB, "
        f"loaded {ceilingLoadedRss:.1f} MB"
    )
    print(
        f"/reload/{RELOAD_PLUGIN} over {len(reloadTimes)} calls: median {reloadMedian:.1f} ms, "
        f"min {min(reloadTimes):.1f}, max {max(reloadTimes):.1f} "
        f"(target < {TARGET_RELOAD_MS:g} ms: {_verdict(targetsMet['reload_median'])})"
    )

    accessLog: int | None = None
    if args.access_log:
        path = os.path.join(workdir, "access.log")
        accessLog = os.path.getsize(path) if os.path.exists(path) else None
        print(f"access log: {'not written' if accessLog is None else f'{accessLog} bytes'}")
    logScan = scan_log(serverLog)
    print(
        f"server log: {logScan['lines']} lines, {logScan['tracebacks']} tracebacks, "
        f"{logScan['suspicious']} error-looking lines"
    )
    for line in logScan["first_suspicious"]:
        print(f"  | {line}")

    if args.json:
        document = {
            "revision": git_revision(),
            "python": platform.python_version(),
            "wrk": wrk_version(),
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "server_cpu": serverCpu,
            "wrk_cpu": wrkCpu,
            "load_average_before": list(loadBefore),
            "settings": {
                "rounds": args.rounds,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "access_log": args.access_log,
            },
            "rounds": rounds,
            "medians": summary,
            "reactors": reactors,
            "hello_vs_ceiling_median": helloVsCeiling,
            "hello_std_vs_ceiling_median": stdVsCeiling,
            "hello_epoll_vs_ceiling_median": epollVsCeiling,
            "systeminfo_vs_hello_median": sysVsHello,
            "hello_p99_minus_ceiling_ms_median": p99Extra,
            "rss_mb": {
                "idle": idleRss,
                "loaded": loadedRss,
                "after_reloads": rssAfterReloads,
                "ceiling_idle": ceilingIdleRss,
                "ceiling_loaded": ceilingLoadedRss,
            },
            "reload": {
                "plugin": RELOAD_PLUGIN,
                "times_ms": reloadTimes,
                "median_ms": reloadMedian,
            },
            "targets": {
                "hello_vs_ceiling_min": TARGET_HELLO_VS_CEILING,
                "systeminfo_vs_hello_min": TARGET_SYSTEMINFO_VS_HELLO,
                "hello_p99_extra_ms_max": TARGET_P99_EXTRA_MS,
                "reload_median_ms_max": TARGET_RELOAD_MS,
                "idle_rss_mb_max": TARGET_IDLE_RSS_MB,
                "met": targetsMet,
            },
            "access_log_bytes": accessLog,
            "server_log": logScan,
            "noisy_runs": noisy,
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")

    if args.check and not all(targetsMet.values()):
        return 1
    return 0


# The target of issue 14, point 7: 2 workers against 1, total req/s, same run.
TARGET_TWO_WORKERS = 1.3


def _runWorkers(args: argparse.Namespace, processes: Processes, workdir: str) -> int:
    """
    The workers mode: one server per worker count, unpinned, /hello in
    interleaved rounds, then the reload time with the largest count.
    """
    extra = "allowed_hosts = list:localhost 127.0.0.1 [::1]\n"
    plugins = os.path.join(REPO_DIR, "plugins")
    env = child_env()
    loadBefore = os.getloadavg()
    servers: dict[int, tuple[int, Any, str]] = {}
    for count in args.workers:
        port = free_port()
        while any(port == other for other, _, _ in servers.values()):
            port = free_port()
        log = os.path.join(workdir, f"workers-{count}.log")
        config = write_config(workdir, port, plugins, extra + f"workers = int:{count}\n")
        process = processes.start(
            f"workers-{count}",
            [
                twistd(),
                "-n",
                "--pidfile",
                os.path.join(workdir, f"workers-{count}.pid"),
                "pluginserver",
                "--config",
                config,
            ],
            cwd=workdir,
            log_path=log,
            env=env,
        )
        servers[count] = (port, process, log)
    for count, (port, process, log) in servers.items():
        wait_until_serving(port, "/hello", process, log)
        _wait_for_workers(port, count, process, log)
    for port, _, _ in servers.values():
        wait_for_packages(port, PACKAGES_WAIT)
    time.sleep(1.0)
    rss = {
        count: sum(
            rss_mb(p.pid)
            for p in [psutil.Process(process.pid), *psutil.Process(process.pid).children()]
        )
        for count, (_, process, _) in servers.items()
    }
    targets = {
        count: Target(f"workers-{count}", port, "/hello", process.pid, tree=True)
        for count, (port, process, _) in servers.items()
    }
    print(
        f"pluginserver bench, workers mode: {git_revision()}, Python "
        f"{platform.python_version()}, {wrk_version()}"
    )
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs; no pinning (workers and wrk share "
        f"the CPUs); load average before start {loadBefore[0]:.2f} {loadBefore[1]:.2f} "
        f"{loadBefore[2]:.2f}"
    )
    print(
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s --latency /hello; {args.rounds} "
        f"interleaved rounds after {args.warmup:g} s warm-up; server CPU = supervisor + workers"
    )
    print(flush=True)
    if args.warmup > 0:
        for target in targets.values():
            run_wrk(target, args.warmup, args.connections, None)
    print(
        f"{'round':>5}  {'workers':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'srv cpu%':>9} {'req/cpu-s':>10}"
    )
    rounds: list[dict[str, Any]] = []
    for number in range(1, args.rounds + 1):
        results: dict[int, WrkResult] = {}
        for count, target in targets.items():
            result = run_wrk(target, args.duration, args.connections, None)
            results[count] = result
            print(
                f"{number:>5}  {count:>7} {result.requests_per_sec:>9.0f} {result.p50_ms:>8.2f} "
                f"{result.p99_ms:>8.2f} {result.errors:>7} {result.server_cpu_percent:>9.0f} "
                f"{_per_cpu_second(result):>10.0f}",
                flush=True,
            )
        rounds.append({"round": number, "results": {str(c): asdict(r) for c, r in results.items()}})
    base = min(args.workers)
    summary: dict[int, dict[str, float]] = {}
    for count in args.workers:
        own = [r["results"][str(count)] for r in rounds]
        summary[count] = {
            "requests_per_sec": median([r["requests_per_sec"] for r in own]),
            "p50_ms": median([r["p50_ms"] for r in own]),
            "p99_ms": median([r["p99_ms"] for r in own]),
            "server_cpu_percent": median([r["server_cpu_percent"] for r in own]),
            "requests_per_cpu_second": median(
                [r["requests_per_sec"] * 100.0 / max(r["server_cpu_percent"], 1e-9) for r in own]
            ),
            "vs_base": median(
                [
                    r["results"][str(count)]["requests_per_sec"]
                    / r["results"][str(base)]["requests_per_sec"]
                    for r in rounds
                ]
            ),
            "errors": sum(r["errors"] for r in own),
            "rss_mb": rss[count],
        }
    largest = max(args.workers)
    reloadTimes = time_reloads(servers[largest][0], RELOAD_PLUGIN, args.reloads)
    for count, (_, process, log) in servers.items():
        if process.poll() is not None:
            raise BenchError(f"workers-{count} exited {process.returncode}:\n{log_tail(log)}")
    print()
    print("medians over rounds:")
    for count, s in summary.items():
        print(
            f"  {count} worker{'s' if count > 1 else ' '} {s['requests_per_sec']:>9.0f} req/s "
            f"({s['vs_base']:.2f}x {base})  p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  "
            f"cpu {s['server_cpu_percent']:.0f}%  {s['requests_per_cpu_second']:.0f} req/cpu-s  "
            f"RSS {s['rss_mb']:.0f} MB  errors {s['errors']}"
        )
    met: bool | None = None
    if 1 in summary and 2 in summary:
        met = summary[2]["vs_base"] >= TARGET_TWO_WORKERS if base == 1 else None
        print(
            f"  2 workers / 1 worker req/s  {summary[2]['vs_base']:.2f}  (target >= "
            f"{TARGET_TWO_WORKERS}: {_verdict(bool(met))})"
        )
    reloadMedian = median(reloadTimes)
    print(
        f"/reload/{RELOAD_PLUGIN} with {largest} workers over {len(reloadTimes)} calls: median "
        f"{reloadMedian:.1f} ms, min {min(reloadTimes):.1f}, max {max(reloadTimes):.1f}"
    )
    for count, (_, _, log) in servers.items():
        scan = scan_log(log)
        print(
            f"workers-{count} log: {scan['lines']} lines, {scan['tracebacks']} tracebacks, "
            f"{scan['suspicious']} error-looking lines"
        )
        for line in scan["first_suspicious"]:
            print(f"  | {line}")
    if args.json:
        document = {
            "revision": git_revision(),
            "python": platform.python_version(),
            "wrk": wrk_version(),
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "load_average_before": list(loadBefore),
            "settings": {
                "rounds": args.rounds,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "workers": args.workers,
            },
            "rounds": rounds,
            "medians": {str(c): s for c, s in summary.items()},
            "reload": {
                "plugin": RELOAD_PLUGIN,
                "workers": largest,
                "times_ms": reloadTimes,
                "median_ms": reloadMedian,
            },
            "target_two_workers_vs_one": TARGET_TWO_WORKERS,
            "target_met": met,
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    if args.check and met is False:
        return 1
    return 0


def _per_cpu_second(result: WrkResult) -> float:
    """
    Requests answered per CPU-second the server used.
    """
    return result.requests_per_sec * 100.0 / max(result.server_cpu_percent, 1e-9)


def _wait_for_workers(port: int, count: int, process: Any, log: str) -> None:
    """
    Wait until C{count} workers serve (C{pluginserver_workers} in /metrics;
    a single process has none to wait for).
    """
    if count == 1:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, _, body = http_get(port, "/metrics")
        if status == 200 and f"pluginserver_workers {count}.0".encode() in body:
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise BenchError(f"{count} workers did not all serve:\n{log_tail(log)}")


if __name__ == "__main__":
    sys.exit(main())
