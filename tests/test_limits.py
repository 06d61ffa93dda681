"""
Hardening against a real twistd process: body, header and time limits,
isolation of blocking plugins, bad input, reload and stop under load.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.helpers import HELLO
from tests.process import Server, sleep

SLOW = """
import time
from twisted.internet import reactor, task
from pluginserver import Plugin

class Slow(Plugin):
    blocking = BLOCKING

    def start(self):
        self.started = 0

    def handle(self, request):
        if "count" in request.args:  # how many requests it has begun
            return {"started": self.started}
        self.started += 1
        seconds = float(request.args.get("s", "3"))
        if self.blocking:
            time.sleep(seconds)
            return {"slept": seconds}
        return task.deferLater(reactor, seconds, lambda: {"slept": seconds})
"""


def exchange(port: int, data: bytes, timeout: float = 5.0, pause: float = 0.0) -> bytes:
    """
    Send raw bytes, then read until the server closes or C{timeout} passes.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0


def body_of(response: bytes) -> Any:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


class LimitTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def serve(self, keys: str = "", **plugins: str) -> Any:
        server = Server(self, server=keys)
        server.write_plugin("hello", HELLO)
        for name, source in plugins.items():
            server.write_plugin(name, source)
        yield server.start()
        return server

    @defer.inlineCallbacks
    def assertStillServing(self, server: Server) -> Any:
        status, body = yield server.get("/hello")
        self.assertEqual((status, body), (200, {"hello": "world"}))

    @defer.inlineCallbacks
    def test_declaredBodyOverTheLimitIsRefusedBeforeItIsSent(self) -> Any:
        server = yield self.serve("max_body = int:1000\n")
        head = (
            b"POST /hello HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        response = yield deferToThread(exchange, server.port, head)
        self.assertEqual(status_of(response), 413)
        self.assertEqual(body_of(response), {"error": "request body too large"})
        # Expect: 100-continue gets the 413 instead of a "100 Continue".
        response = yield deferToThread(
            exchange, server.port, head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
        )
        self.assertEqual(status_of(response), 413)
        self.assertNotIn(b"100 Continue", response)
        # A body within the limit is fine.
        status, _body = yield server.request("POST", "/hello", json={"name": "x" * 900})
        self.assertEqual(status, 200)
        yield self.assertStillServing(server)

    @defer.inlineCallbacks
    def test_chunkedBodyIsCutOffAtTheLimit(self) -> Any:
        server = yield self.serve("max_body = int:1000\n")
        chunk = b"%x\r\n%s\r\n" % (600, b"a" * 600)
        request = (
            b"POST /hello HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk * 5
        )
        response = yield deferToThread(exchange, server.port, request)
        self.assertEqual(status_of(response), 413)
        yield self.assertStillServing(server)

    @defer.inlineCallbacks
    def test_oversizedHeadsAre4xx(self) -> Any:
        server = yield self.serve()
        cases = [
            b"GET /hello?" + b"x" * 70000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
            b"GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"y" * 70000 + b"\r\n\r\n",
            b"GET /hello HTTP/1.1\r\nHost: localhost\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(1000))
            + b"\r\n",
        ]
        # Request line too long, one header too long, too many headers.
        for request, expected in zip(cases, (414, 431, 431), strict=True):
            response = yield deferToThread(exchange, server.port, request)
            self.assertEqual(status_of(response), expected, response[:200])
            self.assertIn("error", body_of(response))
        yield self.assertStillServing(server)

    @defer.inlineCallbacks
    def test_garbageAndBadInputNeverGive5xx(self) -> Any:
        server = yield self.serve()
        for request in [
            b"\x00\xff\xfe garbage \r\n\r\n",
            b"GET\r\n\r\n",
            b"BREW /hello HTTP/1.1\r\nHost: localhost\r\n\r\n",
            b"GET /hello/%zz%ff HTTP/1.1\r\nHost: localhost\r\n\r\n",
            b"GET /hello?name=%ff HTTP/1.1\r\nHost: localhost\r\n\r\n",
            b"POST /hello HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5\r\n\r\n{nope",
            b"POST /hello HTTP/1.1\r\nHost: localhost\r\nContent-Length: nope\r\n\r\n",
        ]:
            response = yield deferToThread(exchange, server.port, request, 3.0)
            status = status_of(response)
            self.assertTrue(status == 0 or 200 <= status < 500, response[:300])
        yield self.assertStillServing(server)
        self.assertNotIn("Traceback", server.log())

    @defer.inlineCallbacks
    def test_slowHeadersAreCutOff(self) -> Any:
        server = yield self.serve("header_timeout = float:1\n")

        def slowloris() -> tuple[bytes, float]:
            started = time.monotonic()
            received = b""
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n")
                for i in range(40):
                    try:
                        s.sendall(b"X-%d: a\r\n" % i)
                    except OSError:
                        break
                    s.settimeout(0.25)
                    try:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        received += chunk
                    except TimeoutError:
                        pass
            return received, time.monotonic() - started

        received, took = yield deferToThread(slowloris)
        self.assertEqual(status_of(received), 408)
        self.assertLess(took, 5)
        yield self.assertStillServing(server)

    @defer.inlineCallbacks
    def test_idleConnectionsCloseAndManyIdleDoNotBlockOthers(self) -> Any:
        server = yield self.serve("idle_timeout = float:1\n")

        idle: list[socket.socket] = []
        try:
            for _ in range(500):
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            started = time.monotonic()
            yield self.assertStillServing(server)
            self.assertLess(time.monotonic() - started, 2)

            def keptAlive() -> bytes:
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                    s.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    first = s.recv(4096)
                    s.settimeout(5)
                    started = time.monotonic()
                    rest = s.recv(4096)  # b"" when the server closes it
                    assert time.monotonic() - started < 4, "idle connection not closed"
                    return first + rest

            response = yield deferToThread(keptAlive)
            self.assertEqual(status_of(response), 200)
        finally:
            for s in idle:
                s.close()

    @defer.inlineCallbacks
    def test_requestTimeoutIs504(self) -> Any:
        server = yield self.serve(
            "request_timeout = float:0.5\n", slow=SLOW.replace("BLOCKING", "False")
        )
        status, body = yield server.get("/slow?s=3")
        self.assertEqual((status, body), (504, {"error": "timeout"}))
        status, body = yield server.get("/slow?s=0.1")
        self.assertEqual((status, body), (200, {"slept": 0.1}))

    @defer.inlineCallbacks
    def test_blockingPluginDoesNotStallOthers(self) -> Any:
        server = yield self.serve(slow=SLOW.replace("BLOCKING", "True"))
        slow = server.get("/slow?s=3")
        yield sleep(0.3)
        started = time.monotonic()
        for _ in range(5):
            yield self.assertStillServing(server)
        self.assertLess(time.monotonic() - started, 1.5)
        self.assertNoResult(slow)
        status, body = yield slow
        self.assertEqual((status, body), (200, {"slept": 3.0}))

    @defer.inlineCallbacks
    def test_errorsAreJSONAndLoggedWithNameAndGeneration(self) -> Any:
        server = yield self.serve(
            broken=(
                "from pluginserver import Plugin\n"
                "class B(Plugin):\n"
                "    def handle(self, request):\n"
                "        raise KeyError('/etc/secret-path')\n"
            )
        )
        status, body = yield server.get("/broken")
        self.assertEqual((status, body), (500, {"error": "internal error"}))
        yield self.assertStillServing(server)
        self.assertIn("Plugin broken generation 1 failed on GET /broken", server.log())


class UnderLoadTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_reloadUnderLoadDropsNothing(self) -> Any:
        """
        Several keep-alive clients hammer a plugin while it and the whole
        directory are reloaded over and over: every request gets a 200.
        """
        import treq
        from twisted.web.client import HTTPConnectionPool

        server = Server(self)
        server.write_plugin("hello", HELLO)
        yield server.start()
        statuses: list[int] = []
        failures: list[str] = []
        stop: list[bool] = []

        @defer.inlineCallbacks
        def client() -> Any:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 1
            try:
                while not stop:
                    try:
                        response = yield treq.get(server.url + "/hello", pool=pool, timeout=10)
                        yield response.content()
                        statuses.append(response.code)
                    except Exception as e:
                        failures.append(repr(e))
            finally:
                yield pool.closeCachedConnections()

        clients = [client() for _ in range(6)]
        for i in range(30):
            server.write_plugin("hello", HELLO + f"\nVERSION = {i}\n")
            status, body = yield server.get("/reload/hello")
            self.assertEqual(status, 200, body)
            status, body = yield server.get("/reload/all")
            self.assertEqual(status, 200, body)
        stop.append(True)
        yield defer.gatherResults(clients)
        self.assertEqual(failures, [])
        self.assertGreater(len(statuses), 100)
        self.assertEqual(set(statuses), {200})
        # Every /reload/hello made a generation (/reload/all found nothing
        # changed after it): the reloads under load really happened.
        status, body = yield server.get("/plugins")
        self.assertEqual(body["plugins"]["hello"]["generation"], 1 + 30)

    @defer.inlineCallbacks
    def test_sigtermLetsInFlightRequestsFinish(self) -> Any:
        server = Server(self)
        server.write_plugin("slow", SLOW.replace("BLOCKING", "False"))
        yield server.start()
        inFlight = [server.get("/slow?s=1") for _ in range(5)]
        # In flight: all five begun (one still on its way to the server
        # when SIGTERM comes was never in flight, and is refused).
        for _ in range(200):
            status, body = yield server.get("/slow?count=1")
            if body["started"] == 5:
                break
            yield sleep(0.02)
        self.assertEqual(body, {"started": 5})
        server.signal(15)
        results = yield defer.gatherResults(inFlight)
        self.assertEqual(results, [(200, {"slept": 1.0})] * 5)
        status = yield server.wait_exit()
        self.assertEqual(status, -15)
        self.assertNotIn("Traceback", server.log())


class StopWithBlockingHandlerTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_sigtermDoesNotWaitForABlockedThread(self) -> Any:
        server = Server(self, server="shutdown_timeout = float:1\n")
        server.write_plugin("slow", SLOW.replace("BLOCKING", "True"))
        yield server.start()
        stuck = server.get("/slow?s=20")
        stuck.addErrback(lambda failure: None)  # the connection goes with the server
        yield sleep(0.5)
        started = time.monotonic()
        server.signal(15)
        status = yield server.wait_exit(timeout=15)
        self.assertEqual(status, -15)
        self.assertLess(time.monotonic() - started, 6)
        self.assertIn("blocking handlers still running", server.log())
        yield stuck
