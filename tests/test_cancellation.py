"""
Cancellation: when the client goes away or request_timeout fires, the
plugin's coroutine is cancelled (it sees CancelledError, its finally blocks
run), and a Deferred's canceller is called.  (Issue 13, point 2, on the
default reactor; asyncio tasks come with the asyncio reactor.)
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from pluginserver import testing
from tests.helpers import PluginDir

WAITER = """
from twisted.internet import defer
from pluginserver import Plugin


class Waiter(Plugin):
    def start(self):
        self.events = []

    async def handle(self, request):
        try:
            await defer.Deferred()  # never fires by itself
        except defer.CancelledError:
            self.events.append("cancelled")
            raise
        finally:
            self.events.append("finally")
"""

CANCELLER = """
from twisted.internet import defer
from pluginserver import Plugin


class Canceller(Plugin):
    def start(self):
        self.events = []

    def handle(self, request):
        return defer.Deferred(lambda d: self.events.append("canceller"))
"""


class CancellationTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        plugins = PluginDir(self)
        plugins.write("waiter", WAITER)
        plugins.write("canceller", CANCELLER)
        self.clock = task.Clock()
        self.server = yield testing.serve(self, plugins.path, clock=self.clock, request_timeout=5.0)

    def events(self, name: str) -> list[str]:
        loaded = self.server.registry.get(name)
        assert loaded is not None
        events: list[str] = loaded.instance.events  # type: ignore[attr-defined]
        return events

    @defer.inlineCallbacks
    def test_requestTimeoutCancelsTheCoroutine(self) -> Any:
        answer = self.server.get("/waiter")
        self.assertNoResult(answer)
        self.assertEqual(self.events("waiter"), [])
        self.clock.advance(5)
        result = yield answer
        self.assertEqual((result.status, result.json()), (504, {"error": "timeout"}))
        self.assertEqual(self.events("waiter"), ["cancelled", "finally"])

    def test_clientGoneCancelsTheCoroutine(self) -> None:
        answer = self.server.get("/waiter")
        self.assertNoResult(answer)
        self.server.close()  # the client goes away
        self.assertEqual(self.events("waiter"), ["cancelled", "finally"])

    def test_clientGoneCancelsADeferred(self) -> None:
        self.assertNoResult(self.server.get("/canceller"))
        self.server.close()
        self.assertEqual(self.events("canceller"), ["canceller"])
