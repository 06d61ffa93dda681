"""
What the bench scripts share: free ports, a temporary pluginserver
configuration, starting processes (optionally pinned to a CPU) and always
stopping them, waiting until a server answers, and reading its memory.

Standard library and psutil only.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import IO

import psutil  # type: ignore[import-untyped]

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class BenchError(Exception):
    """
    The benchmark cannot run; the message says why.
    """


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def twistd() -> str:
    """
    The twistd script next to the running Python (the venv's).
    """
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(candidate):
        raise BenchError(
            f"no twistd next to {sys.executable}: run this with the venv's "
            "python, in which pluginserver is installed"
        )
    return candidate


def pluginserver_command(
    workdir: str,
    name: str,
    config: str,
    executable: str | None = None,
    twistd_args: Sequence[str] = (),
) -> list[str]:
    """
    The command that runs pluginserver with C{config} under twistd in the
    foreground, its pidfile C{name}.pid in C{workdir}; C{executable} is
    another venv's twistd, C{twistd_args} options such as C{-r epoll}.
    """
    return [
        executable or twistd(),
        "-n",
        "--pidfile",
        os.path.join(workdir, f"{name}.pid"),
        *twistd_args,
        "pluginserver",
        "--config",
        config,
    ]


def write_config(
    directory: str,
    port: int,
    plugins_dir: str,
    extra: str = "",
) -> str:
    """
    Write a pluginserver ps.ini into C{directory}: one listener on
    127.0.0.1:C{port}, the given plugins directory, no API key, no CORS, no
    Host check.  C{extra} is appended (more keys or sections).
    """
    path = os.path.join(directory, f"ps-{port}.ini")
    with open(path, "w") as f:
        f.write(
            "[server]\n"
            f"listen = tcp:{port}:interface=127.0.0.1\n"
            "shutdown_timeout = float:2\n"
            f"{extra}"
            "\n[paths]\n"
            f"plugins = {plugins_dir}\n"
            "\n[auth]\n"
            "apikey =\n"
            "\n[plugin_parms]\n"
            "systeminfo = interval=float:1\n"
        )
    return path


def pinned(command: Sequence[str], cpu: int | str | None) -> list[str]:
    """
    C{command} run under C{taskset -c cpu} when a CPU (or a taskset CPU
    list, such as C{"0-1"}) is given.  taskset execs the command, so the
    process id stays the command's.
    """
    if cpu is None:
        return list(command)
    return ["taskset", "-c", str(cpu), *command]


class Processes:
    """
    The processes a bench script started; L{stop_all} ends every one of
    them (SIGTERM, then SIGKILL after L{STOP_TIMEOUT}).
    """

    def __init__(self) -> None:
        self._started: list[tuple[str, subprocess.Popen[bytes], IO[bytes] | None]] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        cwd: str,
        log_path: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """
        Start C{command} in C{cwd}, its output (stdout and stderr) going to
        C{log_path} (or discarded).
        """
        # Closed below once the child has it, not at the end of a block.
        out: IO[bytes] | None = open(log_path, "ab") if log_path else None  # noqa: SIM115
        try:
            process = subprocess.Popen(
                list(command),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            if out is not None:
                out.close()
            raise
        self._started.append((name, process, out))
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> int | None:
        """
        Stop one process: SIGTERM, then SIGKILL when it has not ended in time.
        Returns its exit status.
        """
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            except ProcessLookupError:
                pass
        return process.returncode

    def stop_all(self) -> None:
        """
        Stop every started process, the newest first.
        """
        while self._started:
            _name, process, out = self._started.pop()
            try:
                self.stop(process)
            finally:
                if out is not None:
                    out.close()


def child_env() -> dict[str, str]:
    """
    The environment for the servers: ours, without an API key that would
    make every route answer 401.
    """
    env = dict(os.environ)
    env.pop("PS_APIKEY", None)
    return env


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """
    One GET on a fresh connection: status, headers (lower-case names), body.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, body
    finally:
        connection.close()


def wait_until_serving(
    port: int,
    path: str,
    process: subprocess.Popen[bytes],
    log_path: str | None,
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """
    Wait until C{GET path} answers 200; fail (with the log's tail) if the
    process exits or C{timeout} passes first.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _, _ = http_get(port, path, timeout=2.0)
            if status == 200:
                return
        except OSError:
            pass
        if process.poll() is not None:
            raise BenchError(
                f"{process.args!r} exited with status {process.returncode}:\n" + log_tail(log_path)
            )
        if time.monotonic() > deadline:
            raise BenchError(
                f"{process.args!r} did not answer {path} within {timeout:.0f} s:\n"
                + log_tail(log_path)
            )
        time.sleep(0.1)


def log_tail(path: str | None, lines: int = 30) -> str:
    """
    The last lines of a log file, for error messages.
    """
    if not path or not os.path.exists(path):
        return "(no log)"
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def rss_mb(pid: int) -> float:
    """
    Resident memory of a process, in MB (10^6 bytes).
    """
    return float(psutil.Process(pid).memory_info().rss) / 1e6


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_with_processes(script: str, keep: bool, body: Callable[[Processes, str], int]) -> int:
    """
    Run C{body(processes, workdir)} and, whatever happens, stop every
    process it started and remove its temporary directory (unless C{keep}).
    Returns the exit status: C{body}'s, or 2 on a L{BenchError}.
    """
    # SIGTERM becomes an exception, so the finally clause stops the servers.
    signal.signal(signal.SIGTERM, _terminate)
    processes = Processes()
    workdir = tempfile.mkdtemp(prefix=f"pluginserver-{script}-")
    try:
        return body(processes, workdir)
    except BenchError as e:
        print(f"bench/{script}.py: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit):
        print(f"bench/{script}.py: interrupted; stopping what it started", file=sys.stderr)
        raise
    finally:
        processes.stop_all()
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def server_cpus() -> tuple[int | None, int | None]:
    """
    (servers' CPU, load generator's CPU): 0 and 1 when taskset exists and
    there are two CPUs or more; no pinning otherwise.
    """
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return None, None
    return 0, 1
