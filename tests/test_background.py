"""
Background work owned by the server: L{Plugin.every} and L{Plugin.spawn}
run until the instance stops, and the registry ends them right after its
C{stop()}, whatever that did, so that reloads leak nothing.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from pluginserver.plugin import Plugin
from pluginserver.registry import PluginRegistry
from tests.helpers import PluginDir
from tests.test_registry import answer, until

SEEN: list[Plugin] = []
"""Instances that plugins of these tests hand to the test (see L{STARTS})."""


def instance(registry: PluginRegistry, name: str) -> Any:
    loaded = registry.get(name)
    assert loaded is not None, f"{name} is not loaded"
    return loaded.instance


class BackgroundCase(TestCase):
    def setUp(self) -> None:
        self.dir = PluginDir(self)
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        SEEN.clear()
        self.addCleanup(SEEN.clear)

    def logged(self, plugin: str, text: str) -> list[LogEvent]:
        """
        The log events about C{plugin} whose format contains C{text}.
        """
        return [
            e
            for e in self.events
            if e.get("plugin") == plugin and text in (e.get("log_format") or "")
        ]

    @defer.inlineCallbacks
    def load(self, name: str, source: str) -> Any:
        """
        Write and load plugin C{name}; fire with its registry.
        """
        self.dir.write(name, source)
        registry = self.dir.registry(self)
        yield registry.load_all()
        return registry


TICKER = """
from pluginserver import Plugin

class Ticker(Plugin):
    def start(self):
        self.ticks = 0
        self.loop = self.every(0.01, self.tick)

    def tick(self):
        self.ticks += 1

    def handle(self, request):
        return {"running": self.loop.running}
"""


class EveryTests(BackgroundCase):
    @defer.inlineCallbacks
    def test_ticksOnTheReactor(self) -> Any:
        """
        every() calls its function right away and then every interval, and
        gives back the running LoopingCall.
        """
        registry = yield self.load("ticker", TICKER)
        plugin = instance(registry, "ticker")
        self.assertEqual(plugin.ticks, 1)
        yield until(lambda: plugin.ticks >= 3)
        self.assertEqual(answer(registry, "ticker"), {"running": True})

    @defer.inlineCallbacks
    def test_asyncFunctionNeverOverlaps(self) -> Any:
        """
        An async function's coroutine is driven to its end before the next
        call: calls never overlap.
        """
        registry = yield self.load(
            "slow",
            """
            from twisted.internet import reactor, task
            from pluginserver import Plugin

            class Slow(Plugin):
                def start(self):
                    self.running = self.most = self.done = 0
                    self.every(0.001, self.tick)

                async def tick(self):
                    self.running += 1
                    self.most = max(self.most, self.running)
                    await task.deferLater(reactor, 0.02)
                    self.running -= 1
                    self.done += 1
            """,
        )
        plugin = instance(registry, "slow")
        yield until(lambda: plugin.done >= 3)
        self.assertEqual(plugin.most, 1)

    @defer.inlineCallbacks
    def test_failureIsLoggedAndTheLoopGoesOn(self) -> Any:
        """
        A call that raises, or whose coroutine fails, is logged with the
        plugin's name, and the loop keeps running.
        """
        # A failing call under way when the test ends is logged on a later
        # turn of the loop: flushed once the registry (cleaned up before
        # this) has stopped the plugin.
        self.addCleanup(self.flushLoggedErrors, ZeroDivisionError)
        registry = yield self.load(
            "flaky",
            """
            from pluginserver import Plugin

            class Flaky(Plugin):
                def start(self):
                    self.calls = 0
                    self.loop = self.every(0.005, self.tick)

                async def tick(self):
                    self.calls += 1
                    if self.calls % 2:
                        raise ZeroDivisionError("odd")
            """,
        )
        plugin = instance(registry, "flaky")
        yield until(lambda: plugin.calls >= 4)
        self.assertTrue(plugin.loop.running)
        self.assertGreaterEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertGreaterEqual(len(self.logged("flaky", "every(")), 2)

    @defer.inlineCallbacks
    def test_syncFailureIsLoggedToo(self) -> Any:
        """
        A plain function that raises is logged the same way.
        """
        registry = yield self.load(
            "broken",
            """
            from pluginserver import Plugin

            class Broken(Plugin):
                def start(self):
                    self.calls = 0
                    self.loop = self.every(0.005, self.tick)

                def tick(self):
                    self.calls += 1
                    raise KeyError("x")
            """,
        )
        plugin = instance(registry, "broken")
        yield until(lambda: plugin.calls >= 3)
        self.assertTrue(plugin.loop.running)
        self.assertGreaterEqual(len(self.flushLoggedErrors(KeyError)), 3)
        self.assertGreaterEqual(len(self.logged("broken", "every(")), 3)


SPAWNER = """
from twisted.internet import defer, reactor, task
from pluginserver import Plugin

class Spawner(Plugin):
    def start(self):
        self.cleaned = False
        self.ticking = False
        self.forever = self.spawn(self.wait())
        self.loop = self.every(0.001, self.tick)

    async def wait(self):
        try:
            await defer.Deferred()
        finally:
            self.cleaned = True

    async def tick(self):
        self.ticking = True
        await defer.Deferred()
"""


class SpawnTests(BackgroundCase):
    @defer.inlineCallbacks
    def test_coroutineAndDeferred(self) -> Any:
        """
        spawn() runs a coroutine or takes a Deferred, and gives back a
        Deferred of its outcome.
        """
        registry = yield self.load(
            "jobs",
            """
            from twisted.internet import reactor, task
            from pluginserver import Plugin

            class Jobs(Plugin):
                async def work(self):
                    await task.deferLater(reactor, 0.01)
                    return "done"

                def handle(self, request):
                    return [self.spawn(self.work()),
                            self.spawn(task.deferLater(reactor, 0.01, lambda: 7))]
            """,
        )
        coroutine, deferred = answer(registry, "jobs")
        self.assertEqual((yield coroutine), "done")
        self.assertEqual((yield deferred), 7)
        self.assertEqual(instance(registry, "jobs")._pluginserver_background.tasks, set())

    @defer.inlineCallbacks
    def test_unhandledFailureIsLogged(self) -> Any:
        """
        A failure nobody handles is logged once with the plugin's name; one
        the plugin handles is not.
        """
        registry = yield self.load(
            "failing",
            """
            from twisted.internet import reactor, task
            from pluginserver import Plugin

            class Failing(Plugin):
                async def fail(self):
                    await task.deferLater(reactor, 0)
                    raise ValueError("lost")

                def start(self):
                    self.handled = []
                    self.spawn(self.fail())
                    self.spawn(self.fail()).addErrback(self.handled.append)
            """,
        )
        plugin = instance(registry, "failing")
        yield until(lambda: not plugin._pluginserver_background.tasks)
        self.assertEqual(len(plugin.handled), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(self.logged("failing", "spawned work failed")), 1)

    @defer.inlineCallbacks
    def test_reloadCancelsAndRunsFinally(self) -> Any:
        """
        A reload cancels what the old instance spawned (its finally blocks
        run), stops its loops, and cancels a call of an async every()
        function under way, without logging the cancellations.
        """
        registry = yield self.load("spawner", SPAWNER)
        old = instance(registry, "spawner")
        yield until(lambda: old.ticking)
        yield registry.reload("spawner")
        self.assertTrue(old.cleaned)
        self.assertFalse(old.loop.running)
        self.assertTrue(old.forever.called)
        self.assertEqual(old._pluginserver_background.tasks, set())
        self.assertEqual(old._pluginserver_background.loops, [])
        new = instance(registry, "spawner")
        self.assertIsNot(new, old)
        self.assertTrue(new.loop.running)
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_stopThatRaisesStillStopsTheWork(self) -> Any:
        """
        When stop() raises, the work is stopped all the same.
        """
        # Runs after the registry's own cleanup, whose stop() raises too.
        self.addCleanup(self.flushLoggedErrors, RuntimeError)
        registry = yield self.load(
            "spawner",
            SPAWNER + "\n    def stop(self):\n        raise RuntimeError('stop failed')\n",
        )
        old = instance(registry, "spawner")
        yield until(lambda: old.ticking)
        yield registry.reload("spawner")
        self.assertTrue(old.cleaned)
        self.assertFalse(old.loop.running)
        self.assertEqual(len(self.logged("spawner", "stop() failed")), 1)

    @defer.inlineCallbacks
    def test_failedStartStopsItsWork(self) -> Any:
        """
        When start() fails after starting work, that work is stopped.
        """
        self.dir.write(
            "halfway",
            """
            from twisted.internet import defer
            from pluginserver import Plugin
            from tests.test_background import SEEN

            class Halfway(Plugin):
                def start(self):
                    SEEN.append(self)
                    self.loop = self.every(0.01, lambda: None)
                    self.forever = self.spawn(defer.Deferred())
                    raise RuntimeError("no")
            """,
        )
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.assertIsNone(registry.get("halfway"))
        [plugin] = SEEN
        self.assertFalse(plugin.loop.running)  # type: ignore[attr-defined]
        self.assertTrue(plugin.forever.called)  # type: ignore[attr-defined]
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_stoppedInstanceRefusesNewWork(self) -> Any:
        """
        Once stopped, an instance cannot start work nobody would stop: a
        late handler of the old generation gets a RuntimeError, and the
        coroutine it passed is closed, not left unawaited.
        """
        registry = yield self.load("spawner", SPAWNER)
        old = instance(registry, "spawner")
        yield registry.reload("spawner")
        self.assertRaises(RuntimeError, old.every, 1, lambda: None)
        coroutine = old.wait()
        self.assertRaises(RuntimeError, old.spawn, coroutine)
        self.assertIsNone(coroutine.cr_frame)
        self.assertRaises(TypeError, instance(registry, "spawner").spawn, 3)


FORGETFUL = """
from twisted.internet import defer, reactor, task
from pluginserver import Plugin

class Forgetful(Plugin):
    # No stop(): the server ends what every() and spawn() started.
    def start(self):
        self.loop = self.every(0.5, lambda: None)
        self.slow = self.every(0.001, self.tick)
        self.spawn(self.forever())
        self.spawn(task.deferLater(reactor, 3600, lambda: None))

    async def tick(self):
        self.ticking = True
        await task.deferLater(reactor, 3600)

    async def forever(self):
        await defer.Deferred()

    def handle(self, request):
        return VERSION
"""


class BackgroundLeakTests(TestCase):
    """
    The sibling of L{tests.test_registry.LeakTests} for a plugin that writes
    no stop().
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_threeHundredReloadsWithoutStop(self) -> Any:
        """
        After 300 reloads of a plugin that starts loops and spawns work with
        every() and spawn() and never stops them, only the newest
        generation's loops run, only its spawned work is pending, no timer
        is left behind, and every older instance has been collected.
        """
        from twisted.internet.task import LoopingCall

        plugins = PluginDir(self)
        plugins.write("forgetful", FORGETFUL + "\nVERSION = 0\n")
        registry = plugins.registry(self)
        yield registry.load_all()
        # Census when the work is under way: an async tick is an asyncio
        # task, which runs on the loop's next turn.
        yield until(lambda: getattr(instance(registry, "forgetful"), "ticking", False))

        def census() -> dict[str, int]:
            gc.collect()
            objects = gc.get_objects()
            return {
                "timers": len(reactor.getDelayedCalls()),  # type: ignore[attr-defined]
                "loops": len([o for o in objects if isinstance(o, LoopingCall) and o.running]),
                "coroutines": len(
                    [
                        o
                        for o in objects
                        if type(o).__name__ == "coroutine"
                        and o.__qualname__ in ("Forgetful.tick", "Forgetful.forever")
                        and o.cr_frame is not None
                    ]
                ),
                "instances": len([o for o in objects if type(o).__name__ == "Forgetful"]),
            }

        before = census()
        self.assertEqual(before["instances"], 1)
        self.assertEqual(before["loops"], 2)
        generations = []
        for version in range(1, 301):
            generations.append(weakref.ref(instance(registry, "forgetful")))
            plugins.write("forgetful", FORGETFUL + f"\nVERSION = {version}\n")
            outcome = yield registry.reload("forgetful")
            self.assertTrue(outcome.success, outcome.error)
        self.assertEqual(answer(registry, "forgetful"), 300)
        newest = instance(registry, "forgetful")
        yield until(lambda: getattr(newest, "ticking", False))
        # A cancelled asyncio task lets go of its frames (and so of its
        # instance) on a later turn of the loop than the one it ended on.
        yield until(lambda: census()["instances"] == 1, timeout=5)
        after = census()
        self.assertEqual(after, before)
        self.assertEqual([g for g in generations if g() is not None], [])
        self.assertEqual(len(newest._pluginserver_background.tasks), 3)
        self.assertEqual(
            [loop.running for loop in newest._pluginserver_background.loops], [True] * 2
        )
        self.assertEqual(self.flushLoggedErrors(), [])
