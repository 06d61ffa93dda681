"""
The service: ready means ready, SIGHUP, /health while stopping, and what
systemd is told.  In-process tests drive L{PluginServerService} on the
test's reactor (listening on 127.0.0.1 port 0); real-process tests start
twistd and listen to its NOTIFY_SOCKET.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from pluginserver.config import ConfigError, load_settings
from pluginserver.notify import notify_systemd
from pluginserver.service import Listener, PluginServerService
from tests.helpers import HELLO, PluginDir
from tests.process import Server, sleep

GATED = """
from twisted.internet import defer
from pluginserver import Plugin

GATE = defer.Deferred()


class Gated(Plugin):
    def start(self):
        return GATE

    def handle(self, request):
        return {"gated": True}
"""

SLOW_START = """
from twisted.internet import reactor, task
from pluginserver import Plugin


class SlowStart(Plugin):
    def start(self):
        return task.deferLater(reactor, 1.5, lambda: None)

    def handle(self, request):
        return {"started": True}
"""


def short_dir(case: SynchronousTestCase) -> str:
    """
    A directory with a short path (unix socket paths are limited to 108
    bytes, and trial's temporary directories can be longer).
    """
    path = tempfile.mkdtemp(prefix="ps-", dir="/tmp")
    case.addCleanup(shutil.rmtree, path, True)
    return path


class Datagrams:
    """
    A unix datagram socket standing in for systemd's NOTIFY_SOCKET.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.path = os.path.join(short_dir(case), "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        case.addCleanup(self.sock.close)
        self.received: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.received.append(self.sock.recv(4096).decode("utf-8"))
            except BlockingIOError:
                return self.received

    @defer.inlineCallbacks
    def wait_for(self, count: int, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while len(self.drain()) < count and time.monotonic() < deadline:
            yield sleep(0.02)
        return self.received


class NotifyTests(SynchronousTestCase):
    def test_sendsOneDatagramOfStates(self) -> None:
        listener = Datagrams(self)
        sent = notify_systemd(
            "RELOADING=1", "MONOTONIC_USEC=5", environ={"NOTIFY_SOCKET": listener.path}
        )
        self.assertTrue(sent)
        self.assertEqual(listener.drain(), ["RELOADING=1\nMONOTONIC_USEC=5"])

    def test_abstractSocket(self) -> None:
        name = f"pluginserver-test-{os.getpid()}-{time.monotonic_ns()}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + name)
        self.addCleanup(sock.close)
        self.assertTrue(notify_systemd("READY=1", environ={"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(sock.recv(100), b"READY=1")

    def test_outsideSystemdNothingIsSent(self) -> None:
        self.assertFalse(notify_systemd("READY=1", environ={}))


class ServiceTests(TestCase):
    """
    The service in this process, on the test's reactor.
    """

    def setUp(self) -> None:
        self.dir = PluginDir(self)
        self.config = os.path.join(self.mktemp() + ".ini")
        self.states: list[str] = []
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def write_config(self, extra: str = "") -> None:
        with open(self.config, "w") as f:
            f.write(
                "[server]\nlisten = tcp:0:interface=127.0.0.1\nshutdown_timeout = float:1\n"
                + textwrap.dedent(extra)
                + f"[paths]\nplugins = {os.path.abspath(self.dir.path)}\n"
            )

    def service(self) -> PluginServerService:
        self.write_config()
        settings = load_settings(self.config)
        service = PluginServerService(
            settings,
            reload_settings=lambda: load_settings(self.config),
            reactor=reactor,
            package=f"_service_test_{id(self)}",
            notify=lambda *states: self.states.append("\n".join(states)),
        )
        # As tap.makeService wires them.
        for description in settings.listen:
            Listener(description, settings.listen_source, reactor, service.site).setServiceParent(
                service
            )
        return service

    def start(self, service: PluginServerService) -> int:
        service.privilegedStartService()
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        (listener,) = service._listeners()
        port: int = listener.port.getHost().port
        return port

    def get(self, port: int, path: str) -> defer.Deferred[Any]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        d = treq.get(f"http://127.0.0.1:{port}{path}", pool=pool, timeout=10)
        return d.addCallback(lambda r: treq.json_content(r).addCallback(lambda b: (r.code, b)))

    @defer.inlineCallbacks
    def test_noRequestIsAnsweredBeforeEveryPluginStarted(self) -> Any:
        self.dir.write("gated", GATED)
        service = self.service()
        port = self.start(service)
        answer = self.get(port, "/gated")
        yield sleep(0.5)
        # Bound (the client connected) but not answered: start() is running.
        self.assertNoResult(answer)
        self.assertEqual(self.states, [])
        self.assertIsNone(service.registry.get("gated"))
        sys.modules[f"_service_test_{id(self)}.gated"].GATE.callback(None)
        status, body = yield answer
        self.assertEqual((status, body), (200, {"gated": True}))
        self.assertEqual(self.states, ["READY=1"])

    @defer.inlineCallbacks
    def test_sighupReloadsAndKeepsTheOldSettingsOnAnError(self) -> Any:
        self.dir.write("hello", HELLO)
        service = self.service()
        port = self.start(service)
        yield self.wait_ready()
        old = service.settings
        # An unknown key: the reload keeps the old settings and says why.
        self.write_config("[auth]\napi_key = x\n")
        self.assertRaises(ConfigError, load_settings, self.config)
        os.kill(os.getpid(), signal.SIGHUP)  # the service's own handler
        yield self.wait_states(3)
        self.assertEqual(self.states[1].split("\n")[0], "RELOADING=1")
        self.assertTrue(self.states[1].split("\n")[1].startswith("MONOTONIC_USEC="))
        self.assertEqual(self.states[2], "READY=1")
        self.assertIs(service.settings, old)
        logged = " ".join(formatEvent(e) for e in self.events)
        self.assertIn("[auth] api_key: unknown key (did you mean apikey?)", logged)
        # Plugins reloaded all the same (SIGHUP reloads every one).
        self.assertEqual(service.registry.get("hello").generation, 2)  # type: ignore[union-attr]
        status, body = yield self.get(port, "/hello")
        self.assertEqual((status, body), (200, {"hello": "world"}))

    @defer.inlineCallbacks
    def test_healthIs503OnceStopping(self) -> Any:
        self.dir.write("hello", HELLO)
        service = self.service()
        port = self.start(service)
        yield self.wait_ready()
        status, body = yield self.get(port, "/health")
        self.assertEqual((status, body), (200, {"status": "ok"}))
        self.assertFalse(service.stopping)
        stopped = service.stopService()
        self.assertTrue(service.stopping)
        self.assertEqual(self.states[-1], "STOPPING=1")
        # The listeners are closed; a keep-alive connection still open asks.
        channel = service.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        channel.connectionLost(None)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 503 "), head)
        self.assertIn(b'{"status":"stopping"}', body)
        yield stopped

    @defer.inlineCallbacks
    def wait_ready(self) -> Any:
        yield self.wait_states(1)
        self.assertEqual(self.states[0], "READY=1")

    @defer.inlineCallbacks
    def wait_states(self, count: int) -> Any:
        deadline = time.monotonic() + 20
        while len(self.states) < count and time.monotonic() < deadline:
            yield sleep(0.02)
        self.assertGreaterEqual(len(self.states), count, self.states)


class ReadyProcessTests(TestCase):
    """
    What a health check or systemd sees of a real server.
    """

    timeout = 90

    @defer.inlineCallbacks
    def test_aClientThatPollsThePortNeverSeesA404(self) -> Any:
        server = Server(self)
        server.write_plugin("slowstart", SLOW_START)
        started = time.monotonic()
        server.start_process()
        status = None
        deadline = started + 30
        while time.monotonic() < deadline:
            try:
                status, body = yield server.get("/slowstart")
                break
            except Exception:
                yield sleep(0.02)
        self.assertEqual((status, body), (200, {"started": True}))
        # The answer waited for start(): the port was open before.
        self.assertGreaterEqual(time.monotonic() - started, 1.5)

    @defer.inlineCallbacks
    def test_systemdIsToldReadyReloadingStopping(self) -> Any:
        notify = Datagrams(self)
        server = Server(self, environ={"NOTIFY_SOCKET": notify.path})
        server.write_plugin("slowstart", SLOW_START)
        server.start_process()
        states = yield notify.wait_for(1)
        self.assertEqual(states, ["READY=1"])
        # READY=1 means ready: the plugin answers at once.
        status, body = yield server.get("/slowstart")
        self.assertEqual((status, body), (200, {"started": True}))
        server.signal(signal.SIGHUP)
        states = yield notify.wait_for(3)
        self.assertEqual(states[1].split("\n")[0], "RELOADING=1")
        self.assertEqual(states[2], "READY=1")
        exit_status = yield server.stop()
        self.assertEqual(exit_status, -signal.SIGTERM)
        self.assertEqual(notify.drain()[3:], ["STOPPING=1"])

    @defer.inlineCallbacks
    def test_healthAnswersWithoutAKey(self) -> Any:
        server = Server(self, server="allowed_hosts = list:127.0.0.1\n", ini="[auth]\napikey = k\n")
        yield server.start(headers={"Authorization": "Bearer k"})
        status, body = yield server.get("/health")
        self.assertEqual((status, body), (200, {"status": "ok"}))
        status, body = yield server.get("/plugins")
        self.assertEqual(status, 401)
        status, body = yield server.get("/health", headers={"Host": "evil.example"})
        self.assertEqual(status, 400)
