"""
Tests for L{pluginserver.registry}: discovery, loading, atomic reload,
generations and the plugins' start/stop lifecycle.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python import components
from twisted.trial.unittest import TestCase

from pluginserver.plugin import PluginRequest
from pluginserver.registry import PluginRegistry
from tests.helpers import PluginDir, plugin_source

GET = PluginRequest(method="GET")


def answer(registry: PluginRegistry, name: str) -> Any:
    loaded = registry.get(name)
    assert loaded is not None, f"{name} is not loaded"
    return loaded.handle(GET)


class LoadTests(TestCase):
    def setUp(self) -> None:
        self.dir = PluginDir(self)

    @defer.inlineCallbacks
    def test_loadsEveryPluginFile(self) -> Any:
        self.dir.write("hello", plugin_source("{'hello': 'world'}"))
        self.dir.write("other", plugin_source("'other'"))
        registry = self.dir.registry(self)
        report = yield registry.load_all()
        self.assertEqual(report.loaded, ["hello", "other"])
        self.assertEqual(report.added, ["hello", "other"])
        self.assertEqual(report.failed, {})
        self.assertEqual(answer(registry, "hello"), {"hello": "world"})
        loaded = registry.get("hello")
        assert loaded is not None
        self.assertEqual(loaded.generation, 1)
        self.assertEqual(loaded.file, self.dir.path and loaded.file)
        self.assertTrue(loaded.file.endswith("hello.py"))
        self.assertEqual(loaded.methods, frozenset({"GET", "HEAD", "POST"}))

    @defer.inlineCallbacks
    def test_reservedAndInvalidNamesRefused(self) -> Any:
        for name in ("plugins", "reload", "metrics", "class"):
            self.dir.write(name, plugin_source("1"))
        with open(f"{self.dir.path}/not-an-identifier.py", "w") as f:
            f.write(plugin_source("1"))
        self.dir.write("ok", plugin_source("1"))
        registry = self.dir.registry(self)
        report = yield registry.load_all()
        self.assertEqual(report.loaded, ["ok"])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    @defer.inlineCallbacks
    def test_helperModulesAreNotRoutes(self) -> Any:
        self.dir.write("_util", "def word():\n    return 'from helper'\n")
        self.dir.write("user", plugin_source("word()", extra="from ._util import word\n"))
        registry = self.dir.registry(self)
        report = yield registry.load_all()
        self.assertEqual(report.loaded, ["user"])
        self.assertEqual(answer(registry, "user"), "from helper")

    @defer.inlineCallbacks
    def test_classAttributeNameIsTheRoute(self) -> Any:
        self.dir.write(
            "file_name",
            "from pluginserver import Plugin\n"
            "class P(Plugin):\n    name = 'pretty'\n"
            "    def handle(self, request):\n        return self.name\n",
        )
        registry = self.dir.registry(self)
        report = yield registry.load_all()
        self.assertEqual(report.loaded, ["pretty"])
        self.assertEqual(answer(registry, "pretty"), "pretty")

    @defer.inlineCallbacks
    def test_moduleWithoutPluginFails(self) -> Any:
        self.dir.write("empty", "x = 1\n")
        registry = self.dir.registry(self)
        report = yield registry.load_all()
        self.assertEqual(report.loaded, [])
        self.assertIn("defines no Plugin subclass", report.failed["empty"])

    @defer.inlineCallbacks
    def test_paramsAndConfigReachThePlugin(self) -> Any:
        self.dir.write("p", plugin_source("(self.params, self.config)"))
        registry = self.dir.registry(self, params={"p": {"x": 1}}, config="cfg")
        yield registry.load_all()
        self.assertEqual(answer(registry, "p"), ({"x": 1}, "cfg"))


class ReloadTests(TestCase):
    def setUp(self) -> None:
        self.dir = PluginDir(self)

    @defer.inlineCallbacks
    def test_sameSizeEditInTheSameSecondIsSeen(self) -> Any:
        """
        Bytecode caching would serve a same-size edit made within the same
        second from a stale .pyc; the registry must not.
        """
        self.dir.write("p", plugin_source("'AAAA'"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        for word in ("BBBB", "CCCC", "DDDD"):
            self.dir.write("p", plugin_source(repr(word)))
            outcome = yield registry.reload("p")
            self.assertTrue(outcome.success, outcome.error)
            self.assertEqual(answer(registry, "p"), word)
        loaded = registry.get("p")
        assert loaded is not None
        self.assertEqual(loaded.generation, 4)

    @defer.inlineCallbacks
    def test_syntaxErrorKeepsTheOldGeneration(self) -> Any:
        self.dir.write("p", plugin_source("'old'"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.dir.write("p", "from pluginserver import Plugin\n\ndef broken(:\n")
        outcome = yield registry.reload("p")
        self.assertFalse(outcome.success)
        self.assertEqual(outcome.generation, 1)
        assert outcome.error is not None
        self.assertTrue(outcome.error.startswith("SyntaxError: "), outcome.error)
        self.assertIn("(p.py, line 3)", outcome.error)
        self.assertEqual(answer(registry, "p"), "old")
        self.assertFalse(components.ALLOW_DUPLICATES)

    @defer.inlineCallbacks
    def test_importTimeErrorLeavesTheLiveModuleUntouched(self) -> Any:
        self.dir.write("p", plugin_source("VALUE", extra="VALUE = 'old'\n"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        loaded = registry.get("p")
        assert loaded is not None
        import sys

        live = sys.modules[loaded.module]
        self.dir.write("p", plugin_source("VALUE", extra="VALUE = 'new'\n1 / 0\n"))
        outcome = yield registry.reload("p")
        self.assertFalse(outcome.success)
        self.assertEqual(outcome.error, "ZeroDivisionError: division by zero (p.py, line 3)")
        self.assertEqual(live.VALUE, "old")
        self.assertEqual(answer(registry, "p"), "old")

    @defer.inlineCallbacks
    def test_failingStartKeepsTheOldInstanceServing(self) -> Any:
        self.dir.write("p", plugin_source("'old'"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.dir.write(
            "p",
            "from pluginserver import Plugin\n"
            "class P(Plugin):\n"
            "    def start(self):\n        raise RuntimeError('no database')\n"
            "    def handle(self, request):\n        return 'new'\n",
        )
        outcome = yield registry.reload("p")
        self.assertFalse(outcome.success)
        self.assertIn("start() failed: RuntimeError: no database (p.py, line 4)", outcome.error)
        self.assertEqual(answer(registry, "p"), "old")
        self.assertEqual(registry.get("p").generation, 1)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_unknownNameRaisesKeyError(self) -> Any:
        registry = self.dir.registry(self)
        yield registry.load_all()
        yield self.assertFailure(registry.reload("nope"), KeyError)

    @defer.inlineCallbacks
    def test_aNewFileCanBeReloadedByName(self) -> Any:
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.dir.write("late", plugin_source("'late'"))
        outcome = yield registry.reload("late")
        self.assertTrue(outcome.success)
        self.assertEqual(answer(registry, "late"), "late")

    @defer.inlineCallbacks
    def test_inFlightRequestsFinishOnTheirGeneration(self) -> Any:
        """
        A request that started on one generation keeps running that
        generation's code, even though rebuild replaced the class.
        """
        self.dir.write("p", plugin_source("'old'"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        old = registry.get("p")
        assert old is not None
        self.dir.write("p", plugin_source("'new'"))
        yield registry.reload("p")
        self.assertEqual(old.handle(GET), "old")
        self.assertEqual(answer(registry, "p"), "new")

    @defer.inlineCallbacks
    def test_changedHelperIsReloaded(self) -> Any:
        self.dir.write("_util", "def word():\n    return 'one'\n")
        self.dir.write("user", plugin_source("word()", extra="from ._util import word\n"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.dir.write("_util", "def word():\n    return 'two'\n")
        outcome = yield registry.reload("user")
        self.assertTrue(outcome.success, outcome.error)
        self.assertEqual(answer(registry, "user"), "two")
        self.dir.write("_util", "def word():\n    return 'six'\n")
        report = yield registry.reload_all()
        self.assertEqual(report.failed, {})
        self.assertEqual(answer(registry, "user"), "six")

    @defer.inlineCallbacks
    def test_brokenHelperIsReportedAndPluginsKeepServing(self) -> Any:
        self.dir.write("_util", "def word():\n    return 'one'\n")
        self.dir.write("user", plugin_source("word()", extra="from ._util import word\n"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.dir.write("_util", "def word(:\n")
        report = yield registry.reload_all()
        self.assertIn("_util.py", report.failed)
        self.assertIn("SyntaxError", report.failed["_util.py"])
        self.assertEqual(answer(registry, "user"), "one")


class ReloadAllTests(TestCase):
    def setUp(self) -> None:
        self.dir = PluginDir(self)

    @defer.inlineCallbacks
    def test_addsRemovesAndReloadsChanged(self) -> Any:
        self.dir.write("keep", plugin_source("'keep'"))
        self.dir.write("gone", plugin_source("'gone'"))
        self.dir.write("edit", plugin_source("'v1'"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.dir.remove("gone")
        self.dir.write("new", plugin_source("'new'"))
        self.dir.write("edit", plugin_source("'v2'"))
        report = yield registry.reload_all()
        self.assertEqual(report.loaded, ["edit", "keep", "new"])
        self.assertEqual(report.added, ["new"])
        self.assertEqual(report.removed, ["gone"])
        self.assertEqual(report.failed, {})
        self.assertIsNone(registry.get("gone"))
        self.assertEqual(answer(registry, "new"), "new")
        self.assertEqual(answer(registry, "edit"), "v2")
        self.assertEqual(registry.get("keep").generation, 1)  # type: ignore[union-attr]
        self.assertEqual(registry.get("edit").generation, 2)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_oneBrokenFileDoesNotStopTheOthers(self) -> Any:
        self.dir.write("a", plugin_source("'a1'"))
        self.dir.write("b", plugin_source("'b1'"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.dir.write("a", "def (\n")
        self.dir.write("b", plugin_source("'b2'"))
        self.dir.write("c", plugin_source("'c'"))
        report = yield registry.reload_all()
        self.assertEqual(list(report.failed), ["a"])
        self.assertEqual(report.added, ["c"])
        self.assertEqual(answer(registry, "a"), "a1")
        self.assertEqual(answer(registry, "b"), "b2")

    @defer.inlineCallbacks
    def test_changedParamsMakeANewGeneration(self) -> Any:
        self.dir.write("p", plugin_source("self.params"))
        registry = self.dir.registry(self, params={"p": {"x": 1}})
        yield registry.load_all()
        report = yield registry.reload_all(params={"p": {"x": 2}})
        self.assertEqual(report.failed, {})
        self.assertEqual(answer(registry, "p"), {"x": 2})
        self.assertEqual(registry.get("p").generation, 2)  # type: ignore[union-attr]


LIFECYCLE = """
from twisted.internet import reactor, task
from pluginserver import Plugin

class P(Plugin):
    def start(self):
        self.config["started"].append(self)
        self.loop = task.LoopingCall(lambda: None)
        self.loop.start(60)
        self.config["loops"].append(self.loop)

    def stop(self):
        self.config["stopped"].append(self)
        self.loop.stop()

    def handle(self, request):
        return VERSION
"""


class LifecycleTests(TestCase):
    def setUp(self) -> None:
        self.dir = PluginDir(self)
        self.record: dict[str, list[Any]] = {"started": [], "stopped": [], "loops": []}

    def write(self, version: int) -> None:
        self.dir.write("life", LIFECYCLE + f"\nVERSION = {version}\n")

    @defer.inlineCallbacks
    def test_stopRunsOnceForEachReplacedInstance(self) -> Any:
        self.write(1)
        registry = self.dir.registry(self, config=self.record)
        yield registry.load_all()
        for version in (2, 3, 4):
            self.write(version)
            outcome = yield registry.reload("life")
            self.assertTrue(outcome.success, outcome.error)
        self.assertEqual(answer(registry, "life"), 4)
        self.assertEqual(len(self.record["started"]), 4)
        self.assertEqual(self.record["stopped"], self.record["started"][:3])
        running = [loop for loop in self.record["loops"] if loop.running]
        self.assertEqual(running, [self.record["loops"][-1]])
        yield registry.stop_all()
        self.assertEqual(self.record["stopped"], self.record["started"])
        self.assertFalse(any(loop.running for loop in self.record["loops"]))

    @defer.inlineCallbacks
    def test_removedPluginIsStopped(self) -> Any:
        self.write(1)
        registry = self.dir.registry(self, config=self.record)
        yield registry.load_all()
        self.dir.remove("life")
        report = yield registry.reload_all()
        self.assertEqual(report.removed, ["life"])
        self.assertEqual(len(self.record["stopped"]), 1)
        self.assertFalse(self.record["loops"][0].running)

    @defer.inlineCallbacks
    def test_asyncStartAndStop(self) -> Any:
        self.dir.write(
            "a",
            "from twisted.internet import defer\n"
            "from pluginserver import Plugin\n"
            "class A(Plugin):\n"
            "    async def start(self):\n"
            "        await defer.succeed(None)\n"
            "        self.config['started'].append(self)\n"
            "    async def stop(self):\n"
            "        self.config['stopped'].append(self)\n"
            "    def handle(self, request):\n        return 'a'\n",
        )
        registry = self.dir.registry(self, config=self.record)
        yield registry.load_all()
        self.assertEqual(len(self.record["started"]), 1)
        yield registry.stop_all()
        self.assertEqual(len(self.record["stopped"]), 1)

    @defer.inlineCallbacks
    def test_failingStopIsLoggedAndTheSwapHappens(self) -> Any:
        self.dir.write(
            "s",
            "from pluginserver import Plugin\n"
            "class S(Plugin):\n"
            "    def stop(self):\n        raise ValueError('stop failed')\n"
            "    def handle(self, request):\n        return 1\n",
        )
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.dir.write("s", plugin_source("2"))
        outcome = yield registry.reload("s")
        self.assertTrue(outcome.success)
        self.assertEqual(answer(registry, "s"), 2)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


LEAKY = """
from twisted.internet import task, threads
from pluginserver import Plugin

class Leaky(Plugin):
    def start(self):
        self.loop = task.LoopingCall(lambda: None)
        self.loop.start(0.5)
        return threads.deferToThread(sum, [VERSION, 1])

    def stop(self):
        self.loop.stop()

    def handle(self, request):
        return VERSION
"""


class LeakTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_threeHundredReloadsLeaveNothingBehind(self) -> Any:
        """
        After 300 reloads of a plugin that starts a LoopingCall and a
        thread-pool task, no timer, thread, file descriptor, module or
        instance of an old generation is left.
        """
        import gc
        import os
        import sys
        import threading

        from twisted.internet import reactor

        plugins = PluginDir(self)
        plugins.write("leaky", LEAKY + "\nVERSION = 0\n")
        registry = plugins.registry(self)
        yield registry.load_all()
        # Warm up: the reactor's thread pool starts its workers once.
        for version in (1, 2):
            plugins.write("leaky", LEAKY + f"\nVERSION = {version}\n")
            yield registry.reload("leaky")

        def census() -> Any:
            gc.collect()
            loaded = registry.get("leaky")
            assert loaded is not None
            package = loaded.module.rpartition(".")[0]
            return {
                "timers": len(reactor.getDelayedCalls()),
                "threads": threading.active_count(),
                "fds": len(os.listdir("/proc/self/fd")),
                "modules": len([m for m in sys.modules if m.startswith(package)]),
                "instances": len([o for o in gc.get_objects() if type(o).__name__ == "Leaky"]),
            }

        before = census()
        self.assertEqual(before["instances"], 1)
        for version in range(3, 303):
            plugins.write("leaky", LEAKY + f"\nVERSION = {version}\n")
            outcome = yield registry.reload("leaky")
            self.assertTrue(outcome.success, outcome.error)
        self.assertEqual(answer(registry, "leaky"), 302)
        self.assertEqual(census(), before)


class RestoreTests(TestCase):
    @defer.inlineCallbacks
    def test_failedStartAfterRebuildLeavesTheOldGenerationUntouched(self) -> Any:
        """
        The live module is rebuilt before the new instance starts; when
        start() fails, the old generation must still see its own globals
        and its own class.
        """
        plugins = PluginDir(self)
        plugins.write(
            "p",
            "from pluginserver import Plugin\nWORD = 'one'\n"
            "class P(Plugin):\n"
            "    def handle(self, request):\n        return self.word()\n"
            "    def word(self):\n        return WORD\n",
        )
        registry = plugins.registry(self)
        yield registry.load_all()
        old = registry.get("p")
        assert old is not None
        oldClass = type(old.instance)
        plugins.write(
            "p",
            "from pluginserver import Plugin\nWORD = 'two'\n"
            "class P(Plugin):\n"
            "    def start(self):\n        raise RuntimeError('no')\n"
            "    def handle(self, request):\n        return self.word()\n"
            "    def word(self):\n        return 'new ' + WORD\n",
        )
        outcome = yield registry.reload("p")
        self.assertFalse(outcome.success)
        self.assertIs(type(old.instance), oldClass)
        self.assertEqual(answer(registry, "p"), "one")
        # The next good edit is seen as a change and loads.
        plugins.write(
            "p",
            "from pluginserver import Plugin\nWORD = 'three'\n"
            "class P(Plugin):\n"
            "    def handle(self, request):\n        return WORD\n",
        )
        report = yield registry.reload_all()
        self.assertEqual(report.failed, {})
        self.assertEqual(answer(registry, "p"), "three")

    @defer.inlineCallbacks
    def test_failedFirstLoadCanBeRetried(self) -> Any:
        plugins = PluginDir(self)
        plugins.write(
            "p",
            "from pluginserver import Plugin\n"
            "class P(Plugin):\n"
            "    def start(self):\n        raise RuntimeError('not yet')\n"
            "    def handle(self, request):\n        return 1\n",
        )
        registry = plugins.registry(self)
        report = yield registry.load_all()
        self.assertIn("start() failed", report.failed["p"])
        plugins.write("p", plugin_source("2"))
        report = yield registry.reload_all()
        self.assertEqual((report.added, report.failed), (["p"], {}))
        self.assertEqual(answer(registry, "p"), 2)

    @defer.inlineCallbacks
    def test_changedConfigMakesANewGeneration(self) -> Any:
        plugins = PluginDir(self)
        plugins.write("p", plugin_source("self.config"))
        registry = plugins.registry(self, config={"custom": 1})
        yield registry.load_all()
        report = yield registry.reload_all(config={"custom": 1})
        self.assertEqual(registry.get("p").generation, 1)  # type: ignore[union-attr]
        report = yield registry.reload_all(config={"custom": 2})
        self.assertEqual(report.failed, {})
        self.assertEqual(answer(registry, "p"), {"custom": 2})
        self.assertEqual(registry.get("p").generation, 2)  # type: ignore[union-attr]


WORDY = """
from twisted.internet import defer
from pluginserver import Plugin

class W(Plugin):
    def start(self):
        return self.config.get("gate")

    def handle(self, request):
        return self.word()

    def word(self):
        return WORD
"""


class GenerationIsolationTests(TestCase):
    @defer.inlineCallbacks
    def test_oldGenerationKeepsItsMethodsWhileTheNewOneStarts(self) -> Any:
        """
        rebuild moves instances to the new class; the serving instance is
        moved back, so requests on it (and those arriving while the new
        generation's start() runs) run its own code.
        """
        plugins = PluginDir(self)
        record: dict[str, Any] = {"gate": None}
        plugins.write("w", WORDY.replace("return WORD", "return 'old'"))
        registry = plugins.registry(self, config=record)
        yield registry.load_all()
        old = registry.get("w")
        assert old is not None
        record["gate"] = defer.Deferred()
        plugins.write("w", WORDY.replace("return WORD", "return 'new'"))
        reloading = registry.reload("w")
        self.assertNoResult(reloading)
        self.assertEqual(answer(registry, "w"), "old")
        self.assertEqual(old.handle(GET), "old")
        record["gate"].callback(None)
        outcome = yield reloading
        self.assertTrue(outcome.success)
        self.assertEqual(answer(registry, "w"), "new")
        self.assertEqual(old.handle(GET), "old")

    @defer.inlineCallbacks
    def test_moduleWithAFrozenDataclassReloads(self) -> Any:
        plugins = PluginDir(self)
        source = (
            "from dataclasses import dataclass\n"
            "from pluginserver import Plugin\n"
            "@dataclass(frozen=True)\n"
            "class Opts:\n    word: str = WORD\n"
            "DEFAULTS = Opts()\n"
            "class F(Plugin):\n"
            "    def handle(self, request):\n        return DEFAULTS.word\n"
        )
        plugins.write("fz", "WORD = 'one'\n" + source)
        registry = plugins.registry(self)
        yield registry.load_all()
        plugins.write("fz", "WORD = 'two'\n" + source)
        outcome = yield registry.reload("fz")
        self.assertTrue(outcome.success, outcome.error)
        self.assertEqual(answer(registry, "fz"), "two")
        self.assertFalse(components.ALLOW_DUPLICATES)

    @defer.inlineCallbacks
    def test_startThatNeverFinishesIsCutOff(self) -> Any:
        plugins = PluginDir(self)
        plugins.write("ok", plugin_source("'ok'"))
        plugins.write(
            "hang",
            "from twisted.internet import defer\n"
            "from pluginserver import Plugin\n"
            "class H(Plugin):\n"
            "    def start(self):\n        return defer.Deferred()\n"
            "    def handle(self, request):\n        return 1\n",
        )
        registry = plugins.registry(self)
        registry.start_timeout = 0.2
        report = yield registry.load_all()
        self.assertEqual(report.failed, {"hang": "start() did not finish within 0.2 s"})
        # The lock is free again: later reloads run.
        plugins.remove("hang")
        outcome = yield registry.reload("ok")
        self.assertTrue(outcome.success)
