"""
Memory and leftovers after many reloads (issue 5, point 7).

    /work/venv/bin/python bench/reload_memory.py [--reloads 300]

Starts C{twistd -n pluginserver} on a free 127.0.0.1 port with a temporary
plugins directory holding one plugin, C{ticker}, whose C{start()} starts a
C{LoopingCall} (every 0.1 s) and runs a task in the reactor's thread pool
(C{deferToThread}), and whose C{stop()} stops the timer.  Each instance also
holds a 64 KiB buffer, so a generation that is never freed shows up in the
resident memory (300 leaked generations would be about 20 MB).

It then rewrites the plugin file (a version counter, so the code really
changes) and calls C{GET /reload/ticker}, C{--reloads} times, checking every
answer.  It prints the server's RSS, thread count and open file descriptors
before and after (and RSS along the way, to tell a one-time cost from a
steady leak), the growth in MB against the 8 MB target, and what the plugin
itself sees at the end: the version served, the plugin instances still
alive and the timers still ticking (1 and 1 when nothing leaks).

Standard library and psutil only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import psutil  # type: ignore[import-untyped]
from _harness import (
    BenchError,
    Processes,
    child_env,
    free_port,
    http_get,
    log_tail,
    pluginserver_command,
    run_with_processes,
    wait_until_serving,
    write_config,
)

TARGET_GROWTH_MB = 8.0
NAME = "ticker"
SETTLE_SECONDS = 1.0

PLUGIN_SOURCE = '''\
"""
bench/reload_memory.py's plugin: each generation starts a LoopingCall and a
thread-pool task, and stops its timer in stop().
"""

import gc
import sys
import time
import weakref

from twisted.internet import task, threads

from pluginserver import Plugin

VERSION = {version}
TICK = 0.1

# Module globals are replaced on every reload; what must outlive a
# generation (to count the generations still alive) hangs off sys.
_LIVE = sys.__dict__.setdefault("_reload_memory_bench_live", weakref.WeakSet())


def _work(size):
    time.sleep(0.002)
    return size


class Ticker(Plugin):
    def start(self):
        self.ballast = bytearray(64 * 1024)
        self.last_tick = time.monotonic()
        self.worked = None
        _LIVE.add(self)
        self.loop = task.LoopingCall(self._tick)
        self.loop.start(TICK, now=False)
        self.work = threads.deferToThread(_work, len(self.ballast))
        self.work.addCallback(self._done)

    def _tick(self):
        self.last_tick = time.monotonic()

    def _done(self, result):
        self.worked = result

    def stop(self):
        if self.loop.running:
            self.loop.stop()

    def handle(self, request):
        gc.collect()
        now = time.monotonic()
        alive = list(_LIVE)
        return {{
            "version": VERSION,
            "instances_alive": len(alive),
            "timers_ticking": sum(
                1 for p in alive
                if getattr(p, "loop", None) is not None and p.loop.running
                and now - p.last_tick < 5 * TICK
            ),
            "thread_task_done": self.worked is not None,
        }}
'''


def write_plugin(directory: str, version: int) -> None:
    path = os.path.join(directory, NAME + ".py")
    with open(path, "w") as f:
        f.write(PLUGIN_SOURCE.format(version=version))


def snapshot(pid: int) -> dict[str, float]:
    process = psutil.Process(pid)
    return {
        "rss_mb": process.memory_info().rss / 1e6,
        "threads": float(process.num_threads()),
        "fds": float(process.num_fds()),
    }


def ask_plugin(port: int) -> dict[str, Any]:
    status, _, body = http_get(port, "/" + NAME)
    if status != 200:
        raise BenchError(f"/{NAME} answered {status} {body[:300]!r}")
    answer: dict[str, Any] = json.loads(body)
    return answer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Reload a plugin with a timer and a thread task many times "
        "and report the server's memory, thread and file-descriptor growth."
    )
    parser.add_argument("--reloads", type=int, default=300, help="reloads (default 300)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (config, logs)"
    )
    args = parser.parse_args(argv)
    if args.reloads < 1:
        parser.error("--reloads must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_with_processes(
        "reload_memory", args.keep, lambda processes, workdir: _run(args, processes, workdir)
    )


def _run(args: argparse.Namespace, processes: Processes, workdir: str) -> int:
    plugins = os.path.join(workdir, "plugins")
    os.makedirs(plugins)
    write_plugin(plugins, 0)
    port = free_port()
    config = write_config(workdir, port, plugins)
    logPath = os.path.join(workdir, "twistd.log")
    server = processes.start(
        "pluginserver",
        pluginserver_command(workdir, "twistd", config),
        cwd=workdir,
        log_path=logPath,
        env=child_env(),
    )
    wait_until_serving(port, "/" + NAME, server, logPath)
    time.sleep(SETTLE_SECONDS)
    first = ask_plugin(port)
    before = snapshot(server.pid)
    print(
        f"pluginserver pid {server.pid}, plugin /{NAME}: a LoopingCall every 0.1 s and a "
        f"deferToThread task per generation, 64 KiB per instance"
    )
    print(
        f"before: RSS {before['rss_mb']:.1f} MB, {before['threads']:.0f} threads, "
        f"{before['fds']:.0f} fds; plugin sees {first}"
    )

    checkpoints = sorted({n for n in range(50, args.reloads, 50)} | {args.reloads})
    along: list[dict[str, float]] = []
    times: list[float] = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for version in range(1, args.reloads + 1):
            write_plugin(plugins, version)
            started = time.perf_counter()
            connection.request("GET", f"/reload/{NAME}")
            response = connection.getresponse()
            body = response.read()
            times.append((time.perf_counter() - started) * 1e3)
            answer = json.loads(body)
            if response.status != 200 or not answer.get("success"):
                raise BenchError(
                    f"reload {version}: {response.status} {body[:300]!r}\n{log_tail(logPath)}"
                )
            if version in checkpoints:
                point = snapshot(server.pid)
                point["reloads"] = float(version)
                along.append(point)
                print(
                    f"  after {version:>4} reloads: RSS {point['rss_mb']:.1f} MB, "
                    f"{point['threads']:.0f} threads, {point['fds']:.0f} fds, "
                    f"generation {answer.get('generation')}",
                    flush=True,
                )
    finally:
        connection.close()

    time.sleep(SETTLE_SECONDS)
    last = ask_plugin(port)
    after = snapshot(server.pid)
    growth = after["rss_mb"] - before["rss_mb"]
    if server.poll() is not None:
        raise BenchError(f"pluginserver exited {server.returncode}:\n{log_tail(logPath)}")
    print(
        f"after {args.reloads} reloads (+{SETTLE_SECONDS:g} s): RSS {after['rss_mb']:.1f} MB, "
        f"{after['threads']:.0f} threads, {after['fds']:.0f} fds; plugin sees {last}"
    )
    print(
        f"RSS growth: {growth:+.1f} MB (target < {TARGET_GROWTH_MB:g} MB: "
        f"{'met' if growth < TARGET_GROWTH_MB else 'MISSED'}); "
        f"threads {before['threads']:.0f} -> {after['threads']:.0f}; "
        f"fds {before['fds']:.0f} -> {after['fds']:.0f}"
    )
    print(
        f"reload time: median {statistics.median(times):.1f} ms, "
        f"first {times[0]:.1f} ms, last {times[-1]:.1f} ms, max {max(times):.1f} ms"
    )
    problems = []
    if last.get("version") != args.reloads:
        problems.append(f"serves version {last.get('version')}, expected {args.reloads}")
    if last.get("instances_alive") != 1:
        problems.append(f"{last.get('instances_alive')} plugin instances alive, expected 1")
    if last.get("timers_ticking") != 1:
        problems.append(f"{last.get('timers_ticking')} timers ticking, expected 1")
    print("leftovers: " + ("; ".join(problems) if problems else "none (one instance, one timer)"))

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "reloads": args.reloads,
                    "before": before,
                    "along": along,
                    "after": after,
                    "rss_growth_mb": growth,
                    "target_growth_mb": TARGET_GROWTH_MB,
                    "reload_ms": {"median": statistics.median(times), "all": times},
                    "plugin_before": first,
                    "plugin_after": last,
                    "problems": problems,
                },
                f,
                indent=2,
            )
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
