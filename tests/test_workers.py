"""
Worker processes (C{[server] workers}), for real: C{twistd pluginserver}
started on 127.0.0.1 with 2 or 3 workers, driven over TCP, TLS and a UNIX
socket, reloaded, signalled and killed; every process it started is
stopped by PID, and no worker outlives its test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil  # type: ignore[import-untyped]
import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.internet.ssl import Certificate
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from pluginserver.config import ConfigError, load_settings
from pluginserver.plugin import PluginRequest
from pluginserver.registry import PluginRegistry, ReloadOutcome
from pluginserver.tap import Options
from tests.certs import make_certificate
from tests.helpers import PluginDir, plugin_source
from tests.process import Server, listening, run_twistd, sleep

PID = """
import os, time
from pluginserver import Plugin

class Pid(Plugin):
    def stop(self):
        with open(os.path.join(os.path.dirname(__file__), "..", "stopped"), "a") as f:
            f.write("%d\\n" % os.getpid())

    def handle(self, request):
        time.sleep(float(request.args.get("block", 0)))
        return {
            "pid": os.getpid(),
            "version": VERSION,
            "worker": os.environ.get("PLUGINSERVER_WORKER"),
        }
"""

HANG = """
import os, time
from pluginserver import Plugin

if os.environ.get("PLUGINSERVER_WORKER") == "2" and os.path.exists(
    os.path.join(os.path.dirname(__file__), "..", "hang")
):
    time.sleep(30)

class Hang(Plugin):
    def handle(self, request):
        return {"version": VERSION}
"""


def answer(registry: PluginRegistry, name: str) -> Any:
    loaded = registry.get(name)
    assert loaded is not None, f"{name} is not loaded"
    return loaded.handle(PluginRequest(method="GET"))


def pid_plugin(version: int) -> str:
    return PID + f"\nVERSION = {version}\n"


@defer.inlineCallbacks
def spread(server: Server, count: int, block: float = 0.3, gap: float = 0.08) -> Any:
    """
    C{count} requests to C{/pid}, each on a fresh connection and holding
    its worker's reactor C{block} seconds, started C{gap} seconds apart: a
    busy worker cannot accept, so every worker takes some.  Fires with
    their (status, body) pairs.
    """
    requests = []
    for _ in range(count):
        requests.append(server.get(f"/pid?block={block}"))
        yield sleep(gap)
    answers = yield defer.gatherResults(requests)
    return answers


@defer.inlineCallbacks
def raw_get(server: Server, path: str) -> Any:
    """
    GET C{path}: (status, body bytes), for answers that are not JSON.
    """
    client: Any = treq
    kwargs: dict[str, Any] = {}
    if server.trust is not None:
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(server.trust))
        client = HTTPClient(Agent(reactor, contextFactory=policy, pool=server.pool()))
    else:
        kwargs["pool"] = server.pool()
    response = yield client.get(server.url + path, timeout=10, **kwargs)
    body = yield response.content()
    return response.code, body


def metric(text: bytes, name: str) -> float:
    """
    The value of the sample C{name} (with its labels, as written) in a
    Prometheus text exposition.
    """
    for line in text.decode("utf-8").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name} in:\n{text.decode('utf-8')}")


@defer.inlineCallbacks
def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """
    Poll C{predicate} (which may return a Deferred) until it is true.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = yield defer.maybeDeferred(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        yield sleep(0.05)


class WorkerProcessTests(TestCase):
    timeout = 180

    def workerServer(self, workers: int, **kwargs: Any) -> Server:
        server_keys = kwargs.pop("server", "")
        return Server(self, server=f"workers = int:{workers}\n" + server_keys, **kwargs)

    @defer.inlineCallbacks
    def startAll(self, server: Server, workers: int) -> Any:
        """
        Start the server and wait until every worker serves.
        """
        yield server.start()

        def ready() -> Any:
            return raw_get(server, "/metrics").addCallback(
                lambda answer: f"pluginserver_workers {workers}.0".encode() in answer[1]
            )

        yield wait_for(ready, timeout=30, what=f"{workers} ready workers")

    def assertNoWorkerLeft(self, server: Server) -> None:
        for worker in server.seen_workers.values():
            try:
                worker.wait(10)
            except psutil.TimeoutExpired:
                self.fail(f"worker {worker.pid} outlived its supervisor")

    @defer.inlineCallbacks
    def test_twoWorkersServeReloadAndStopTogether(self) -> Any:
        """
        Two workers: both take connections; a reload through one changes
        what both serve (same generation everywhere); a syntax error fails
        on both and neither swaps; /reload/all, /metrics sums, /plugins is
        the same everywhere, SIGHUP, and SIGTERM with requests in flight on
        both workers.
        """
        server = self.workerServer(2)
        server.write_plugin("pid", pid_plugin(1))
        yield self.startAll(server, 2)
        supervisor = server.pid()
        workers = server.workers()
        self.assertEqual(len(workers), 2)
        pids = {w.pid for w in workers}

        # Every worker takes connections, and no answer comes from the
        # supervisor.
        answers = yield spread(server, 6)
        self.assertEqual({status for status, _ in answers}, {200})
        self.assertEqual({body["pid"] for _, body in answers}, pids)
        self.assertEqual({body["worker"] for _, body in answers}, {"1", "2"})

        # One edit, one reload through one worker: every worker serves it.
        server.write_plugin("pid", pid_plugin(2))
        status, body = yield server.get("/reload/pid")
        self.assertEqual(status, 200, body)
        self.assertEqual((body["reloaded"], body["success"], body["generation"]), ("pid", True, 2))
        self.assertEqual(sorted(body["workers"]), ["1", "2"])
        for own in body["workers"].values():
            self.assertEqual(own, {"reloaded": "pid", "success": True, "generation": 2})
        answers = yield spread(server, 8, block=0.2, gap=0.05)
        self.assertEqual({body["version"] for _, body in answers}, {2})
        self.assertEqual({body["pid"] for _, body in answers}, pids)

        # A broken file fails in every worker before any swaps.
        server.write_plugin("pid", "def (\n")
        status, body = yield server.get("/reload/pid")
        self.assertEqual(status, 500)
        self.assertFalse(body["success"])
        self.assertEqual(body["generation"], 2)
        self.assertIn("SyntaxError", body["error"])
        self.assertIn("(pid.py, line 1)", body["error"])
        for own in body["workers"].values():
            self.assertFalse(own["success"])
            self.assertIn("SyntaxError", own["error"])
        answers = yield spread(server, 6, block=0.2, gap=0.05)
        self.assertEqual({body["version"] for _, body in answers}, {2})
        self.assertEqual({body["pid"] for _, body in answers}, pids)

        # /reload/all: a new file is loaded in every worker.
        server.write_plugin("pid", pid_plugin(3))
        server.write_plugin("added", pid_plugin(1).replace("class Pid", "class Added"))
        status, body = yield server.get("/reload/all")
        self.assertEqual(status, 200, body)
        self.assertEqual((body["added"], body["failed"]), (["added"], {}))
        for own in body["workers"].values():
            self.assertEqual(own["added"], ["added"])

        # /plugins is the same whichever worker answers.
        views = set()
        for _ in range(6):
            status, body = yield server.get("/plugins")
            views.add(json.dumps(body, sort_keys=True))
        self.assertEqual(len(views), 1, views)
        self.assertEqual(json.loads(views.pop())["plugins"]["pid"]["generation"], 3)

        # /metrics counts the requests of every worker.
        before = yield raw_get(server, "/metrics")
        counted = metric(before[1], 'pluginserver_requests_total{route="pid",status="200"}')
        self.assertEqual(counted, 6 + 8 + 6)
        self.assertEqual(metric(before[1], "pluginserver_workers"), 2)
        self.assertEqual(metric(before[1], "pluginserver_worker_restarts_total"), 0)
        answers = yield spread(server, 4, block=0.1, gap=0.05)
        after = yield raw_get(server, "/metrics")
        self.assertEqual(
            metric(after[1], 'pluginserver_requests_total{route="pid",status="200"}'), counted + 4
        )

        # SIGHUP to the supervisor reloads every worker (same PIDs).
        server.signal(signal.SIGHUP)

        def reloaded() -> Any:
            return server.get("/plugins").addCallback(
                lambda answer: answer[1]["plugins"]["pid"]["generation"] == 4
            )

        yield wait_for(reloaded, what="generation 4 after SIGHUP")
        answers = yield spread(server, 6, block=0.2, gap=0.05)
        self.assertEqual({body["pid"] for _, body in answers}, pids)
        self.assertEqual(server.pid(), supervisor)
        self.assertIn("Audit: reload all by signal", server.log())

        # SIGTERM with a request in flight on each worker: both finish.
        inflight = [server.get("/pid?block=1.5")]
        yield sleep(0.3)
        inflight.append(server.get("/pid?block=1.5"))
        yield sleep(0.3)
        server.signal(signal.SIGTERM)
        answers = yield defer.gatherResults(inflight)
        self.assertEqual([status for status, _ in answers], [200, 200])
        self.assertEqual({body["pid"] for _, body in answers}, pids)
        status = yield server.wait_exit(30)
        self.assertEqual(status, -signal.SIGTERM)
        self.assertNoWorkerLeft(server)
        with open(os.path.join(server.dir, "stopped")) as f:
            stopped = f.read().split()
        # Each worker stopped each generation it served.
        self.assertEqual({int(pid) for pid in stopped}, pids)
        log = server.log()
        self.assertNotIn("Traceback", log)
        self.assertIn("pluginserver stopped", log)
        self.assertFalse(os.path.exists(server.pidfile))
        self.assertFalse(listening(server.port))

    @defer.inlineCallbacks
    def test_killedWorkerIsRestarted(self) -> Any:
        """
        Three workers: kill -9 of one loses only the request it held; the
        others finish theirs and keep their PIDs; the dead one is restarted
        promptly, numbering its generations as the others do.
        """
        server = self.workerServer(3)
        server.write_plugin("pid", pid_plugin(1))
        yield self.startAll(server, 3)
        status, _ = yield server.get("/reload/pid")  # generation 2 everywhere
        self.assertEqual(status, 200)
        workers = server.workers()
        self.assertEqual(len(workers), 3)
        answers = yield spread(server, 9)
        self.assertEqual({body["pid"] for _, body in answers}, {w.pid for w in workers})

        # One request held by each worker; then one worker dies.
        held = []
        for _ in range(3):
            held.append(server.get("/pid?block=2").addErrback(lambda f: f.value))
            yield sleep(0.25)
        victim = workers[1]
        victim.kill()
        killedAt = time.monotonic()
        outcomes = yield defer.gatherResults(held)
        served = [o for o in outcomes if isinstance(o, tuple)]
        lost = [o for o in outcomes if not isinstance(o, tuple)]
        self.assertEqual(len(lost), 1, outcomes)
        self.assertEqual(len(served), 2, outcomes)
        self.assertNotIn(victim.pid, {body["pid"] for _, body in served})

        # Restarted: a new process in its place, the others untouched.
        def three() -> bool:
            return len(server.workers()) == 3 and victim.pid not in {
                w.pid for w in server.workers()
            }

        yield wait_for(three, timeout=10, what="the restart")
        self.assertLess(time.monotonic() - killedAt, 5.0)
        now = server.workers()
        self.assertEqual({w.pid for w in now} - {victim.pid}, {w.pid for w in now})
        survivors = {w.pid for w in workers} - {victim.pid}
        self.assertTrue(survivors <= {w.pid for w in now})
        self.assertIn("was killed by SIGKILL; restarting it", server.log())

        # Every request after the restart is served, by all three, at the
        # same generation.
        def ready() -> Any:
            return raw_get(server, "/metrics").addCallback(
                lambda answer: b"pluginserver_workers 3.0" in answer[1]
            )

        yield wait_for(ready, timeout=15, what="three ready workers")
        answers = yield spread(server, 9, block=0.2, gap=0.05)
        self.assertEqual({status for status, _ in answers}, {200})
        self.assertEqual({body["pid"] for _, body in answers}, {w.pid for w in now})
        views = set()
        for _ in range(6):
            status, body = yield server.get("/plugins")
            views.add(body["plugins"]["pid"]["generation"])
        self.assertEqual(views, {2})
        _, text = yield raw_get(server, "/metrics")
        self.assertEqual(metric(text, "pluginserver_worker_restarts_total"), 1)
        status = yield server.stop()
        self.assertEqual(status, -signal.SIGTERM)
        self.assertNoWorkerLeft(server)

    @defer.inlineCallbacks
    def test_hangingPrepareFailsTheReload(self) -> Any:
        """
        A worker whose prepare does not finish within start_timeout fails
        the reload, named; no worker swaps.
        """
        server = self.workerServer(2, server="start_timeout = float:2\n")
        server.write_plugin("hang", HANG + "\nVERSION = 1\n")
        yield self.startAll(server, 2)
        with open(os.path.join(server.dir, "hang"), "w"):
            pass
        server.write_plugin("hang", HANG + "\nVERSION = 2\n")
        started = time.monotonic()
        status, body = yield server.get("/reload/hang")
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(status, 500)
        self.assertFalse(body["success"])
        self.assertEqual(body["generation"], 1, body)
        self.assertIn("worker 2 did not prepare within 2 s", body["error"], body)
        for _ in range(6):
            status, body = yield server.get("/hang")
            self.assertEqual((status, body), (200, {"version": 1}))
        status, body = yield server.get("/plugins")
        self.assertEqual(body["plugins"]["hang"]["generation"], 1)
        yield server.stop()
        self.assertNoWorkerLeft(server)

    @defer.inlineCallbacks
    def test_tlsAndUnixListenersWithDaemon(self) -> Any:
        """
        Daemon mode with a TLS and a UNIX listener: the pidfile holds the
        supervisor's PID, both workers serve TLS from the same key and
        certificate and the UNIX socket (whose mode stays as configured),
        and SIGTERM ends them all.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        _, _, pem = make_certificate(directory)
        # A short path: AF_UNIX allows about 100 bytes.
        unixDir = tempfile.mkdtemp(prefix="ps-")
        self.addCleanup(shutil.rmtree, unixDir, True)
        unixPath = os.path.join(unixDir, "ps.sock")
        listen = "ssl:{port}:interface=127.0.0.1:privateKey=server.key:certKey=server.crt"
        server = self.workerServer(2, listen=listen, trust=pem, daemon=True)
        for name in ("server.key", "server.crt"):
            shutil.copy(os.path.join(directory, name), server.dir)
        with open(server.config) as f:
            text = f.read()
        text = text.replace(
            f"listen = {server.listen}\n",
            f"listen = {server.listen}\n  unix:{unixPath}:mode=600\n",
        )
        with open(server.config, "w") as f:
            f.write(text)
        server.write_plugin("pid", pid_plugin(1))
        yield self.startAll(server, 2)
        supervisor = server.pid()
        self.assertNotEqual(supervisor, server.process.pid if server.process else None)
        workers = server.workers()
        self.assertEqual(len(workers), 2)
        self.assertEqual({w.ppid() for w in workers}, {supervisor})
        answers = yield spread(server, 6)
        self.assertEqual({body["pid"] for _, body in answers}, {w.pid for w in workers})
        self.assertEqual(os.stat(unixPath).st_mode & 0o777, 0o600)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(unixPath)
            s.sendall(b"GET /pid HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        self.assertTrue(reply.startswith(b"HTTP/1.0 200"), reply)
        self.assertEqual(json.loads(reply.split(b"\r\n\r\n", 1)[1])["version"], 1)
        os.kill(supervisor, signal.SIGTERM)
        yield wait_for(lambda: not os.path.exists(server.pidfile), 30, "the pidfile removed")
        self.assertNoWorkerLeft(server)
        self.assertFalse(listening(server.port))
        self.assertFalse(os.path.exists(unixPath))
        self.assertIn("pluginserver stopped", server.log())

    @defer.inlineCallbacks
    def test_systemdSocketActivationAndNotify(self) -> Any:
        """
        Under systemd: the supervisor adopts the activated socket and hands
        it to the workers; READY=1 is sent once, by the supervisor, when
        every worker is ready; STOPPING=1 on SIGTERM.
        """
        server = self.workerServer(2, listen="systemd:domain=INET:index=0")
        server.write_plugin("pid", pid_plugin(1))
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notify.close)
        notifyDir = tempfile.mkdtemp(prefix="ps-")
        self.addCleanup(shutil.rmtree, notifyDir, True)
        notifyPath = os.path.join(notifyDir, "notify")
        notify.bind(notifyPath)
        notify.setblocking(False)
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", server.port))
        listener.listen(50)
        # What systemd does: the socket as fd 3, LISTEN_PID the server's own.
        wrapper = (
            "import os, sys\n"
            "os.dup2(int(sys.argv[1]), 3)\n"
            "os.environ['LISTEN_PID'] = str(os.getpid())\n"
            "os.execv(sys.argv[2], sys.argv[2:])\n"
        )
        command = server.command()
        out = open(server.logfile, "ab")  # noqa: SIM115
        self.addCleanup(out.close)
        server.process = subprocess.Popen(
            [sys.executable, "-c", wrapper, str(listener.fileno()), *command],
            cwd=server.dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pass_fds=[listener.fileno()],
            env={
                **server.environ,
                "LISTEN_FDS": "1",
                "LISTEN_FDNAMES": "pluginserver",
                "NOTIFY_SOCKET": notifyPath,
            },
        )
        listener.close()
        received: list[str] = []

        def ready() -> bool:
            try:
                while True:
                    received.append(notify.recv(4096).decode())
            except BlockingIOError:
                pass
            return any("READY=1" in m for m in received)

        yield wait_for(ready, timeout=30, what="READY=1")
        self.assertEqual(len(server.workers()), 2)
        answers = yield spread(server, 6)
        self.assertEqual({status for status, _ in answers}, {200})
        self.assertEqual({body["pid"] for _, body in answers}, {w.pid for w in server.workers()})
        self.assertIn("Serving with 2 workers", server.log())
        status = yield server.stop()
        self.assertEqual(status, -signal.SIGTERM)
        ready()
        self.assertEqual([m for m in received if "READY=1" in m], ["READY=1"])
        self.assertIn("STOPPING=1", received)
        self.assertNoWorkerLeft(server)


class WorkerStartupFailureTests(TestCase):
    timeout = 60

    def test_workerThatCannotStartStopsTheServer(self) -> None:
        """
        A worker that cannot start (here: its access log cannot be opened;
        only workers open it) makes the supervisor exit 1 with that
        worker's reason, and nothing is left listening or running.
        """
        server = Server(self, server="workers = int:2\naccess_log = /nonexistent/dir/access.log\n")
        result = run_twistd(["-n", "pluginserver", "--config", server.config], server.dir)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        last = result.stderr.strip().splitlines()[-1]
        self.assertRegex(last, r"^pluginserver: worker \d failed to start: ")
        self.assertIn("/nonexistent/dir/access.log", last)
        self.assertFalse(listening(server.port))
        orphans = [
            p
            for p in psutil.process_iter(["cmdline"])
            if server.config in " ".join(p.info["cmdline"] or [])
        ]
        self.assertEqual(orphans, [])

    def test_badWorkerCounts(self) -> None:
        """
        0, a negative number, more than 256 or a word: one line naming the
        file, section and key (or --workers), exit 1.
        """
        for value in ("int:0", "int:-2", "int:257", "many"):
            server = Server(self, server=f"workers = {value}\n")
            result = run_twistd(["-n", "pluginserver", "--config", server.config], server.dir)
            self.assertEqual(result.returncode, 1)
            lines = result.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertIn(f"{server.config}: [server] workers: expected an integer", lines[0])
        server = Server(self)
        result = run_twistd(
            ["-n", "pluginserver", "--config", server.config, "--workers", "300"], server.dir
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.strip(),
            "pluginserver: --workers: expected an integer from 1 to 256, found '300'",
        )


class WorkerOptionTests(TestCase):
    def test_defaultIsOneProcess(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\n")
        self.assertEqual(load_settings(path).workers, 1)

    def test_commandLineReplacesTheKey(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\nworkers = int:4\n")
        options = Options()
        options["config"] = path
        self.assertEqual(options.load().workers, 4)
        options["workers"] = "2"
        self.assertEqual(options.load().workers, 2)
        options["workers"] = "0"
        self.assertRaises(ConfigError, options.load)

    def test_oneWorkerIsTheSingleProcess(self) -> None:
        """
        C{workers = int:1}: makeService gives the single process's service,
        no supervisor.
        """
        from pluginserver.service import PluginServerService
        from pluginserver.tap import makeService

        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "plugins"))
        path = os.path.join(directory, "ps.ini")
        with open(path, "w") as f:
            f.write("[server]\nworkers = int:1\n[paths]\nplugins = plugins\n")
        options = Options()
        options.parseOptions(["--config", path])
        service = makeService(options)
        self.assertIsInstance(service, PluginServerService)
        service.registry.close()


class TwoStepReloadTests(TestCase):
    """
    The registry's reload in two steps, as each worker runs it: prepare
    changes nothing that serves; commit swaps; abort leaves everything as
    it was and frees the registry for the next reload.
    """

    def setUp(self) -> None:
        self.dir = PluginDir(self)

    @defer.inlineCallbacks
    def loaded(self, **files: str) -> Any:
        for name, body in files.items():
            self.dir.write(name, plugin_source(body))
        registry = self.dir.registry(self)
        yield registry.load_all()
        return registry

    @defer.inlineCallbacks
    def test_prepareChangesNothingCommitSwaps(self) -> Any:
        registry = yield self.loaded(hello="'one'")
        self.dir.write("hello", plugin_source("'two'"))
        pending = yield registry.prepare_reload("hello")
        self.assertTrue(pending.ready)
        self.assertEqual(pending.current, {"hello": 1})
        self.assertEqual(answer(registry, "hello"), "one")
        registry.stamp = lambda stem, previous: (7, 123.0)
        outcome = yield registry.commit_reload()
        self.assertEqual(outcome, ReloadOutcome("hello", True, 7))
        self.assertEqual(answer(registry, "hello"), "two")
        loaded = registry.get("hello")
        assert loaded is not None
        self.assertEqual(loaded.loaded_at, 123.0)

    @defer.inlineCallbacks
    def test_brokenSourceIsNotReady(self) -> Any:
        registry = yield self.loaded(hello="'one'")
        self.dir.write("hello", "def (\n")
        pending = yield registry.prepare_reload("hello")
        self.assertFalse(pending.ready)
        assert pending.outcome is not None
        self.assertIn("SyntaxError", pending.outcome.error or "")
        registry.abort_reload()
        self.assertEqual(answer(registry, "hello"), "one")
        # The lock is free again: a plain reload goes through.
        self.dir.write("hello", plugin_source("'three'"))
        outcome = yield registry.reload("hello")
        self.assertEqual((outcome.success, outcome.generation), (True, 2))

    @defer.inlineCallbacks
    def test_unknownNameReleasesTheLock(self) -> Any:
        registry = yield self.loaded(hello="'one'")
        yield self.assertFailure(registry.prepare_reload("nothing"), KeyError)
        outcome = yield registry.reload("hello")
        self.assertTrue(outcome.success)

    @defer.inlineCallbacks
    def test_wholeDirectoryWithSkip(self) -> Any:
        registry = yield self.loaded(a="'a1'", b="'b1'", gone="'g'")
        self.dir.write("a", plugin_source("'a2'"))
        self.dir.write("b", plugin_source("'b2'"))
        self.dir.write("new", plugin_source("'n'"))
        self.dir.remove("gone")
        pending = yield registry.prepare_reload(None)
        self.assertEqual(sorted(pending.tried), ["a", "b", "new"])
        self.assertEqual([p.name for p in pending.removed], ["gone"])
        self.assertIsNotNone(registry.get("gone"))  # removed at commit only
        report = yield registry.commit_reload({"b": "failed in worker 2: boom"})
        self.assertEqual(report.added, ["new"])
        self.assertEqual(report.removed, ["gone"])
        self.assertEqual(report.failed, {"b": "failed in worker 2: boom"})
        self.assertEqual((answer(registry, "a"), answer(registry, "b")), ("a2", "b1"))

    @defer.inlineCallbacks
    def test_fileChangedAfterPrepareFailsTheCommit(self) -> Any:
        registry = yield self.loaded(hello="'one'")
        self.dir.write("hello", plugin_source("'two'"))
        yield registry.prepare_reload("hello")
        self.dir.write("hello", plugin_source("'three, longer'"))
        outcome = yield registry.commit_reload()
        self.assertFalse(outcome.success)
        self.assertIn("changed while it was reloaded", outcome.error or "")
        self.assertEqual(answer(registry, "hello"), "one")

    @defer.inlineCallbacks
    def test_abortWhilePreparing(self) -> Any:
        """
        An abort while a module body still runs frees the registry at once;
        the slow prepare then fails and changes nothing.
        """
        registry = yield self.loaded(hello="'one'")
        self.dir.write("hello", plugin_source("'two'", extra="import time\ntime.sleep(1)\n"))
        preparing = registry.prepare_reload("hello")
        yield task.deferLater(reactor, 0.2, lambda: None)
        registry.abort_reload()
        self.dir.write("hello", plugin_source("'three'"))
        yield self.assertFailure(preparing, Exception)
        self.assertEqual(answer(registry, "hello"), "one")
        outcome = yield registry.reload("hello")
        self.assertEqual((outcome.success, outcome.generation), (True, 2))
        self.assertEqual(answer(registry, "hello"), "three")
