"""
Real-process tests of what a misbehaving plugin can do to the server: a
module body that calls C{sys.exit()}, a C{stop()} that raises, a module that
takes seconds to import, a plugins directory removed under the running
server.  Each runs C{twistd -n pluginserver} and stops it by PID.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.process import Server, sleep

HELLO = """
from pluginserver import Plugin

class Hello(Plugin):
    def handle(self, request):
        return {"hello": "world"}
"""

GOOD = """
from pluginserver import Plugin

class Good(Plugin):
    def stop(self):
        with open(MARKER, "a") as f:
            f.write("stopped\\n")

    def handle(self, request):
        return "good"
"""

# Its stop() runs before good's (plugins stop in the order they loaded).
BAD_STOP = """
import sys
from pluginserver import Plugin

class BadStop(Plugin):
    def stop(self):
        sys.exit(4)

    def handle(self, request):
        return "astop"
"""

PROBE = """
import time
from twisted.internet import task
from pluginserver import Plugin

class Probe(Plugin):
    '''
    Ticks every 20 ms from its start(); answers the longest gap between
    two ticks: how long the reactor could not run anything.
    '''

    def start(self):
        self.last = None
        self.max_gap = 0.0
        self.ticks = 0
        self.loop = task.LoopingCall(self.tick)
        self.loop.start(0.02)

    def tick(self):
        now = time.monotonic()
        if self.last is not None:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now
        self.ticks += 1

    def stop(self):
        self.loop.stop()

    def handle(self, request):
        return {"max_gap": self.max_gap, "ticks": self.ticks}
"""

SLOW = """
import time
from pluginserver import Plugin

time.sleep(5)

class Slow(Plugin):
    def handle(self, request):
        return "slow"
"""

TICK = 0.02
"""The probe's interval: a gap between two ticks beyond it is a stall."""

LIMIT = 0.1
"""The longest the issue lets a slow import delay another route."""


class Client:
    """
    Requests to one server with a timeout long enough for a reload that
    runs a 5 s module body twice (the scratch run, then the rebuild).
    """

    def __init__(self, case: TestCase, server: Server) -> None:
        self.server = server
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        case.addCleanup(self.pool.closeCachedConnections)
        # The latency probe keeps its connection, as a browser or a load
        # balancer does: what it times is the server's answer, not this
        # process resolving and connecting (which treq does in a thread).
        self.keptAlive = HTTPConnectionPool(reactor, persistent=True)
        self.keptAlive.maxPersistentPerHost = 1
        case.addCleanup(self.keptAlive.closeCachedConnections)

    @defer.inlineCallbacks
    def get(self, path: str, timeout: float = 30, pool: HTTPConnectionPool | None = None) -> Any:
        """
        Fire with (status, decoded JSON body).
        """
        response = yield treq.get(self.server.url + path, pool=pool or self.pool, timeout=timeout)
        raw = yield response.content()
        return response.code, json.loads(raw) if raw else None

    @defer.inlineCallbacks
    def latencies(self, done: Callable[[], bool], path: str = "/hello") -> Any:
        """
        GET C{path} every 20 ms until C{done()}; fire with the seconds each
        answer took.  Every answer must be a 200.
        """
        took: list[float] = []
        # This process (trial, after hundreds of tests) has a large heap:
        # its own collector's pauses are not the server's delay.
        gc.collect()
        gc.disable()
        try:
            yield self._timeEach(done, path, took)
        finally:
            gc.enable()
        return took

    @defer.inlineCallbacks
    def _timeEach(self, done: Callable[[], bool], path: str, took: list[float]) -> Any:
        while not done():
            began = time.monotonic()
            status, _ = yield self.get(path, timeout=5, pool=self.keptAlive)
            took.append(time.monotonic() - began)
            if status != 200:
                raise AssertionError(f"GET {path} answered {status} during the reload")
            yield sleep(0.02)


def generation(body: Any, name: str) -> int | None:
    entry = body["plugins"].get(name)
    return None if entry is None else int(entry["generation"])


class BaseExceptionTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_sysExitInAModuleBodyFailsThatPluginAlone(self) -> Any:
        """
        A plugin whose module body calls sys.exit(3) does not stop the
        server: the others load and serve, /reload/all and /reload/bad
        report it, and SIGTERM still runs every other plugin's stop(), even
        after another stop() raised SystemExit, and exits cleanly.  Then
        rm -rf of the plugins directory: reloads say so, plugins keep
        serving.
        """
        server = Server(self)
        marker = os.path.join(server.dir, "good-stopped")
        server.write_plugin("bad", "import sys\nsys.exit(3)\n" + HELLO)
        server.write_plugin("astop", BAD_STOP)
        server.write_plugin("good", f"MARKER = {marker!r}\n" + GOOD)
        yield server.start()
        client = Client(self, server)

        status, body = yield client.get("/plugins")
        self.assertEqual(body["loaded_plugins"], ["astop", "good"])
        status, body = yield client.get("/good")
        self.assertEqual((status, body), (200, "good"))
        status, body = yield client.get("/reload/all")
        self.assertEqual(status, 500)
        self.assertEqual(body["failed"], {"bad": "SystemExit: 3 (bad.py, line 2)"})
        self.assertEqual(body["loaded_plugins"], ["astop", "good"])
        status, body = yield client.get("/reload/bad")
        self.assertEqual(
            (status, body),
            (
                500,
                {
                    "reloaded": "bad",
                    "success": False,
                    "generation": None,
                    "error": "SystemExit: 3 (bad.py, line 2)",
                },
            ),
        )
        self.assertIn("Plugin bad failed to load", server.log())

        # The plugins directory goes away under the running server.
        shutil.rmtree(server.plugins)
        missing = f"{server.plugins}: No such file or directory"
        status, body = yield client.get("/reload/all")
        self.assertEqual(status, 500)
        self.assertEqual(body["failed"], {"plugins directory": missing})
        self.assertEqual(body["loaded_plugins"], ["astop", "good"])
        status, body = yield client.get("/reload/good")
        self.assertEqual(
            (status, body),
            (
                500,
                {
                    "reloaded": "good",
                    "success": False,
                    "generation": 1,
                    "error": f"plugins directory {missing}",
                },
            ),
        )
        status, body = yield client.get("/good")
        self.assertEqual((status, body), (200, "good"))

        status = yield server.stop()
        self.assertEqual(status, -signal.SIGTERM)
        with open(marker) as f:
            self.assertEqual(f.read(), "stopped\n")
        log = server.log()
        self.assertIn("Plugin astop generation 1: stop() failed", log)
        self.assertIn("pluginserver stopped", log)


class SlowImportTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_aSlowModuleBodyDelaysNoOtherRoute(self) -> Any:
        """
        slow.py sleeps 5 s in its module body.

        Start-up: a client that polls for /slow (the last plugin to load)
        gets its first answer only when everything has loaded, and it is a
        200, never a 404; meanwhile the reactor never stalls (the probe
        plugin, started before slow.py is imported, ticks every 20 ms).

        /reload/all after an edit of slow.py, then SIGHUP: while slow.py is
        run again (twice: the scratch run, then the rebuild), GET /hello
        every 20 ms is answered in under 100 ms, every time.
        """
        server = Server(self)
        server.write_plugin("hello", HELLO)
        server.write_plugin("probe", PROBE)
        server.write_plugin("slow", SLOW)
        client = Client(self, server)

        # -- start-up, as a client sees it --------------------------------
        began = time.monotonic()
        server.start_process()
        while True:
            try:
                status, body = yield client.get("/slow", timeout=20)
                break
            except Exception:
                # Not listening yet (the process is still importing).
                assert server.process is not None
                if server.process.poll() is not None or time.monotonic() - began > 30:
                    raise AssertionError(f"twistd did not serve:\n{server.log()}") from None
                yield sleep(0.05)
        self.assertEqual((status, body), (200, "slow"))
        self.assertGreater(time.monotonic() - began, 5)
        status, probe = yield client.get("/probe")
        self.assertLess(probe["max_gap"] - TICK, LIMIT, f"start-up: {probe}")
        self.assertGreater(probe["ticks"], 150, "the probe did not run during start-up")

        # -- /reload/all ----------------------------------------------------
        with open(os.path.join(server.plugins, "slow.py"), "a") as f:
            f.write("# edited\n")
        reloaded: list[Any] = []
        began = time.monotonic()
        client.get("/reload/all").addCallback(reloaded.append)
        took = yield client.latencies(lambda: bool(reloaded))
        self.assertEqual(reloaded[0][0], 200, reloaded)
        self.assertGreater(time.monotonic() - began, 9.5)
        self.assertGreater(len(took), 100)
        self.assertLess(max(took), LIMIT, f"/reload/all: slowest /hello {max(took):.3f} s")
        status, probe = yield client.get("/probe")
        self.assertLess(probe["max_gap"] - TICK, LIMIT, f"/reload/all: {probe}")
        status, body = yield client.get("/plugins")
        self.assertEqual(generation(body, "slow"), 2)

        # -- SIGHUP ---------------------------------------------------------
        state: dict[str, Any] = {"generation": 2}

        def hupDone() -> bool:
            # Look at /plugins now and then, not on every request.
            if state.get("checking") is None:
                d = client.get("/plugins")
                state["checking"] = d

                def seen(result: Any) -> None:
                    state["generation"] = generation(result[1], "slow")
                    state["checking"] = None

                d.addCallback(seen)
            return state["generation"] == 3

        server.signal(signal.SIGHUP)
        took = yield client.latencies(hupDone)
        self.assertGreater(len(took), 100)
        self.assertLess(max(took), LIMIT, f"SIGHUP: slowest /hello {max(took):.3f} s")
        status, probe = yield client.get("/probe")
        self.assertLess(probe["max_gap"] - TICK, LIMIT, f"SIGHUP: {probe}")

        status = yield server.stop()
        self.assertEqual(status, -signal.SIGTERM)

    @defer.inlineCallbacks
    def test_sigtermDuringASlowStartUp(self) -> Any:
        """
        SIGTERM while slow.py is still importing at start-up: the reactor
        is running, so twistd's handler stops the server the usual way: it
        waits for the import, then every started plugin's stop() runs and
        the process ends by the signal, with no traceback.
        """
        server = Server(self)
        marker = os.path.join(server.dir, "good-stopped")
        server.write_plugin("good", f"MARKER = {marker!r}\n" + GOOD)
        server.write_plugin("slow", SLOW)
        server.start_process()
        began = time.monotonic()
        while "Plugin good generation 1 loaded" not in server.log():
            if time.monotonic() - began > 20:
                raise AssertionError(f"good did not load:\n{server.log()}")
            yield sleep(0.05)
        server.signal(signal.SIGTERM)
        status = yield server.wait_exit(timeout=20)
        self.assertEqual(status, -signal.SIGTERM)
        with open(marker) as f:
            self.assertEqual(f.read(), "stopped\n")
        log = server.log()
        self.assertNotIn("Traceback", log)
        self.assertIn("pluginserver stopped", log)
