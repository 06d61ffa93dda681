"""
Real-process testing helpers: start C{twistd pluginserver} on 127.0.0.1 with
a temporary configuration and plugins directory, talk to it with treq over
TCP (and TLS), and always stop it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any

import psutil  # type: ignore[import-untyped]
import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.internet.ssl import Certificate
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

STARTUP_TIMEOUT = 20.0


def twistd() -> str:
    """
    The twistd script of the Python running the tests.
    """
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(candidate):
        return candidate
    found = shutil.which("twistd")
    if found is None:
        raise RuntimeError("twistd is not installed next to the test Python")
    return found


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class Server:
    """
    One twistd process and its files.

    @ivar dir: a fresh directory holding ps.ini, plugins/ and the log.
    """

    def __init__(
        self,
        case: TestCase,
        ini: str = "",
        daemon: bool = False,
        listen: str | None = None,
        trust: bytes | None = None,
        server: str = "",
        environ: dict[str, str] | None = None,
        paths: str = "",
        reactor: str | None = None,
    ) -> None:
        self.case = case
        self.dir = os.path.abspath(case.mktemp())
        self.plugins = os.path.join(self.dir, "plugins")
        os.makedirs(self.plugins)
        self.port = free_port()
        self.config = os.path.join(self.dir, "ps.ini")
        self.logfile = os.path.join(self.dir, "twistd.log")
        self.pidfile = os.path.join(self.dir, "twistd.pid")
        self.daemon = daemon
        # {port} in listen is replaced with this server's port.
        self.listen = (listen or "tcp:{port}:interface=127.0.0.1").format(port=self.port)
        self.trust = trust
        self.server_keys = textwrap.dedent(server)
        self.paths_keys = textwrap.dedent(paths)
        self.environ = {**os.environ, **(environ or {})}
        # twistd's own -r: the reactor it installs instead of the server's.
        self.reactor = reactor
        self.process: subprocess.Popen[bytes] | None = None
        # Every worker process seen (pid -> psutil.Process), killed with it.
        self.seen_workers: dict[int, Any] = {}
        self.write_config(ini)
        case.addCleanup(self.kill)

    @property
    def url(self) -> str:
        scheme = "https" if self.trust is not None else "http"
        host = "localhost" if self.trust is not None else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    def write_config(self, ini: str = "") -> None:
        """
        Write ps.ini: a listener on this server's port, the C{server} keys,
        its plugins directory and the C{paths} keys, and C{ini} (other
        sections) after that.
        """
        base = (
            f"[server]\nlisten = {self.listen}\n"
            + ("" if "shutdown_timeout" in self.server_keys else "shutdown_timeout = float:5\n")
            + self.server_keys
            + "[paths]\nplugins = plugins\n"
            + self.paths_keys
        )
        with open(self.config, "w") as f:
            f.write(base + textwrap.dedent(ini))

    def write_plugin(self, name: str, source: str) -> None:
        with open(os.path.join(self.plugins, name + ".py"), "w") as f:
            f.write(textwrap.dedent(source))

    def remove_plugin(self, name: str) -> None:
        os.remove(os.path.join(self.plugins, name + ".py"))

    def command(self, *extra: str) -> list[str]:
        if self.daemon:
            head = [twistd(), "--pidfile", self.pidfile, "--logfile", self.logfile]
        else:
            head = [twistd(), "-n", "--pidfile", self.pidfile]
        if self.reactor is not None:
            head += ["-r", self.reactor]
        return [*head, "pluginserver", "--config", self.config, *extra]

    def start_process(self, *extra: str) -> subprocess.Popen[bytes]:
        """
        Start twistd; do not wait for it to serve.
        """
        # Closed by the test case's cleanup, after the process has gone.
        out = open(self.logfile if not self.daemon else self.logfile + ".out", "ab")  # noqa: SIM115
        self.case.addCleanup(out.close)
        self.process = subprocess.Popen(
            self.command(*extra),
            cwd=self.dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.environ,
        )
        return self.process

    @defer.inlineCallbacks
    def start(self, *extra: str, headers: dict[str, str] | None = None) -> Any:
        """
        Start twistd and wait until it answers C{/plugins} (with these
        headers, e.g. a key).
        """
        self.start_process(*extra)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                status, _ = yield self.get("/plugins", headers=headers)
                if status == 200:
                    return
            except Exception:
                pass
            if self.process is not None and not self.daemon and self.process.poll() is not None:
                raise AssertionError(f"twistd exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"twistd did not serve within {STARTUP_TIMEOUT} s:\n{self.log()}"
                )
            yield sleep(0.1)

    def pool(self) -> HTTPConnectionPool:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.case.addCleanup(pool.closeCachedConnections)
        return pool

    @defer.inlineCallbacks
    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        """
        Fire with (status, decoded JSON body or None).
        """
        client: Any = treq
        if self.trust is not None:
            policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(self.trust))
            client = HTTPClient(Agent(reactor, contextFactory=policy, pool=self.pool()))
        else:
            kwargs["pool"] = self.pool()
        response = yield client.request(
            method, self.url + path, headers=headers, timeout=10, **kwargs
        )
        raw = yield response.content()
        return response.code, json.loads(raw) if raw else None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def pid(self) -> int:
        if self.daemon:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        os.kill(self.pid(), signum)

    @defer.inlineCallbacks
    def wait_exit(self, timeout: float = 15.0) -> Any:
        """
        Fire with the exit status once the process has ended.
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"twistd did not exit within {timeout} s:\n{self.log()}")
            yield sleep(0.05)
        return self.process.returncode

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """
        SIGTERM and wait; fire with the exit status.
        """
        self.signal(signal.SIGTERM)
        status = yield self.wait_exit()
        return status

    def workers(self) -> list[Any]:
        """
        The server's worker processes now (psutil.Process objects, by pid);
        each is remembered, so that L{kill} ends it even once its
        supervisor is gone.
        """
        try:
            children = psutil.Process(self.pid()).children(recursive=True)
        except (psutil.Error, OSError, ValueError, AssertionError):
            return []
        for child in children:
            self.seen_workers.setdefault(child.pid, child)
        return sorted(children, key=lambda p: p.pid)

    def kill(self) -> None:
        """
        Make sure nothing is left running, whatever the test did: the
        server, and every worker process it has or had.
        """
        self.workers()
        pids = []
        if self.process is not None and self.process.poll() is None:
            pids.append(self.process.pid)
        if self.daemon and os.path.exists(self.pidfile):
            try:
                pids.append(self.pid())
            except ValueError:
                pass
        for worker in self.seen_workers.values():
            try:
                if worker.is_running():
                    worker.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(list(self.seen_workers.values()), timeout=5)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is not None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def log(self) -> str:
        text = []
        for path in (self.logfile, self.logfile + ".out"):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text.append(f.read())
        return "".join(text)


def run_twistd(
    args: Sequence[str], cwd: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """
    Run a twistd command to completion (for start-up failures).
    """
    return subprocess.run(
        [twistd(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
