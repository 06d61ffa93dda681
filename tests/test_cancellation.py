"""
Cancellation: when the client goes away or request_timeout fires, the
plugin's coroutine is cancelled (it sees CancelledError, its finally blocks
run, no task is left running), and a Deferred's canceller is called.  The
coroutine runs as an asyncio task (the tests run on the asyncio reactor, as
the server does), which starts on the loop's next turn: each test first
waits until the plugin is under way.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from pluginserver import testing
from tests.helpers import PluginDir
from tests.test_registry import until

WAITER = """
from twisted.internet import defer
from pluginserver import Plugin


class Waiter(Plugin):
    def start(self):
        self.events = []

    async def handle(self, request):
        self.events.append("waiting")
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
        yield until(lambda: self.events("waiter") == ["waiting"])
        self.assertNoResult(answer)
        self.clock.advance(5)
        result = yield answer
        self.assertEqual((result.status, result.json()), (504, {"error": "timeout"}))
        self.assertEqual(self.events("waiter"), ["waiting", "cancelled", "finally"])

    @defer.inlineCallbacks
    def test_clientGoneCancelsTheCoroutine(self) -> Any:
        answer = self.server.get("/waiter")
        yield until(lambda: self.events("waiter") == ["waiting"])
        self.assertNoResult(answer)
        self.server.close()  # the client goes away
        yield until(lambda: len(self.events("waiter")) == 3)
        self.assertEqual(self.events("waiter"), ["waiting", "cancelled", "finally"])

    def test_clientGoneCancelsADeferred(self) -> None:
        self.assertNoResult(self.server.get("/canceller"))
        self.server.close()
        self.assertEqual(self.events("canceller"), ["canceller"])
