"""
Plugin coroutines on the asyncio reactor (the server's, and these tests'):
one coroutine awaits asyncio awaitables and Deferreds alike, runs as an
asyncio task (so asyncio libraries that need one work: aiohttp's client
here, against a second local server), and is cancelled as the contract
says.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from pluginserver import coroutines, testing
from tests.helpers import PluginDir
from tests.test_registry import until

MIXED = """
import asyncio

from twisted.internet import defer, reactor, task
from pluginserver import Plugin


class Mixed(Plugin):
    async def start(self):
        # start() may await both kinds too.
        await asyncio.sleep(0)
        await task.deferLater(reactor, 0)
        self.started = True

    async def handle(self, request):
        await asyncio.sleep(0.01)
        slept = await task.deferLater(reactor, 0.01, lambda: "deferred")
        async with asyncio.timeout(5):  # needs to run in an asyncio task
            value = await asyncio.wait_for(self.nested(), 5)
        try:
            await defer.fail(ValueError("from a Deferred"))
        except ValueError as e:
            caught = str(e)
        return {"slept": slept, "nested": value, "caught": caught, "started": self.started}

    async def nested(self):
        # A coroutine awaited inside an asyncio helper still awaits Deferreds.
        return await defer.succeed("nested")
"""

FETCH = """
import aiohttp

from pluginserver import Plugin


class Fetch(Plugin):
    async def handle(self, request):
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(self.params["url"]) as answer:
                return {"status": answer.status, "got": await answer.json()}
"""


class MixedAwaitTests(TestCase):
    @defer.inlineCallbacks
    def test_asyncioAndDeferredsInOneCoroutine(self) -> Any:
        """
        handle and start await asyncio.sleep, asyncio.timeout/wait_for and
        Deferreds (fired later, already fired, failed) in one coroutine.
        """
        plugins = PluginDir(self)
        plugins.write("mixed", MIXED)
        server = yield testing.serve(self, plugins.path)
        answer = yield server.get("/mixed")
        self.assertEqual(
            (answer.status, answer.json()),
            (
                200,
                {
                    "slept": "deferred",
                    "nested": "nested",
                    "caught": "from a Deferred",
                    "started": True,
                },
            ),
        )

    @defer.inlineCallbacks
    def test_aiohttpClientCallsASecondServer(self) -> Any:
        """
        A plugin using aiohttp's client (a real asyncio library) fetches
        JSON from a second local server.
        """
        root = Resource()
        root.putChild(b"data", Data(b'{"from": "the other server"}', "application/json"))
        site = Site(root)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/data"
        plugins = PluginDir(self)
        plugins.write("fetch", FETCH)
        server = yield testing.serve(self, plugins.path, params={"fetch": {"url": url}})
        answer = yield server.get("/fetch")
        self.assertEqual(
            (answer.status, answer.json()),
            (200, {"status": 200, "got": {"from": "the other server"}}),
        )


class RunTests(TestCase):
    """
    L{coroutines.run} itself.
    """

    def test_runsAsAnAsyncioTask(self) -> Any:
        async def which() -> bool:
            await asyncio.sleep(0)
            return asyncio.current_task() is not None

        return coroutines.run(which()).addCallback(self.assertTrue)

    @defer.inlineCallbacks
    def test_cancelWhileAwaitingAsyncio(self) -> Any:
        """
        Cancelled while it awaits asyncio, the coroutine sees
        asyncio.CancelledError and its finally block runs before the
        Deferred fires, with L{defer.CancelledError}.
        """
        events: list[str] = []

        async def sleeper() -> None:
            events.append("waiting")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                events.append("cancelled")
                raise
            finally:
                events.append("finally")

        d = coroutines.run(sleeper())
        yield until(lambda: events == ["waiting"])
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertEqual(events, ["waiting", "cancelled", "finally"])
        self.assertEqual([t for t in asyncio.all_tasks() if not t.done()], [])

    @defer.inlineCallbacks
    def test_cancelWhileAwaitingADeferred(self) -> Any:
        """
        Cancelled while it awaits a Deferred, the Deferred is cancelled (its
        canceller runs) and the coroutine sees L{defer.CancelledError}, as
        it would with Twisted driving it.
        """
        events: list[str] = []
        inner: Deferred[None] = Deferred(lambda _: events.append("canceller"))

        async def waiter() -> None:
            events.append("waiting")
            try:
                await inner
            except defer.CancelledError:
                events.append("cancelled")
                raise

        d = coroutines.run(waiter())
        yield until(lambda: events == ["waiting"])
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertEqual(events, ["waiting", "canceller", "cancelled"])

    @defer.inlineCallbacks
    def test_systemExitStaysInThePlugin(self) -> Any:
        """
        asyncio lets C{SystemExit} and C{KeyboardInterrupt} out of a task,
        which would stop the server: a plugin's become its Deferred's
        failure, and the loop serves on.
        """

        async def exits() -> None:
            await asyncio.sleep(0)
            raise SystemExit(3)

        failures: list[Any] = []
        for _ in range(2):
            yield coroutines.run(exits()).addErrback(failures.append)
        self.assertEqual([f.check(SystemExit) for f in failures], [SystemExit] * 2)
        yield task.deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def test_boundedAnswersAtTheDeadline(self) -> Any:
        """
        L{coroutines.bounded} fails with L{defer.TimeoutError} at the
        deadline even when the coroutine catches its cancellation and goes
        on.
        """
        clock = task.Clock()
        release: Deferred[None] = Deferred()
        events: list[str] = []

        async def stubborn() -> str:
            events.append("waiting")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                events.append("ignored the cancellation")
                await release
            return "late"

        d = coroutines.bounded(coroutines.run(stubborn()), 5, clock)
        yield until(lambda: events == ["waiting"])
        clock.advance(5)
        self.failureResultOf(d, defer.TimeoutError)
        yield until(lambda: len(events) == 2)
        release.callback(None)  # let it end, so the test leaves nothing running
        yield until(lambda: not [t for t in asyncio.all_tasks() if not t.done()])
