"""
Tests for L{pluginserver.registry}: discovery, loading, atomic reload,
generations and the plugins' start/stop lifecycle, through the registry.
The module machinery on its own is tested in L{tests.test_modules}.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.python import components
from twisted.trial.unittest import TestCase

from pluginserver.plugin import PluginRequest
from pluginserver.registry import PluginRegistry, route_name_error
from tests.helpers import PluginDir, ServerCase, plugin_source

GET = PluginRequest(method="GET")


def answer(registry: PluginRegistry, name: str) -> Any:
    loaded = registry.get(name)
    assert loaded is not None, f"{name} is not loaded"
    return loaded.handle(GET)


@defer.inlineCallbacks
def until(condition: Callable[[], bool], timeout: float = 10.0) -> Any:
    """
    Wait, with the reactor running, until C{condition()} holds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        yield task.deferLater(reactor, 0.01, lambda: None)


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
        self.assertEqual(loaded.file, os.path.join(os.path.abspath(self.dir.path), "hello.py"))
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
    def test_routeNameRuleIsTheSameForLoadAndCheck(self) -> Any:
        """
        A class that names a reserved route, or one that is not a path
        segment, is refused by a load and by C{--check} alike, with the same
        words.
        """
        for stem, name in (("reserved", "health"), ("slashed", "a/b"), ("dotted", ".x")):
            self.dir.write(
                stem,
                "from pluginserver import Plugin\n"
                f"class P(Plugin):\n    name = {name!r}\n"
                "    def handle(self, request):\n        return 1\n",
            )
        self.dir.write("ok", plugin_source("1"))
        registry = self.dir.registry(self)
        report = yield registry.load_all()
        expected = {
            "dotted": "route name '.x' is reserved or not a valid path segment",
            "reserved": "route name 'health' is reserved or not a valid path segment",
            "slashed": "route name 'a/b' is reserved or not a valid path segment",
        }
        self.assertEqual((report.loaded, report.failed), (["ok"], expected))
        checked = PluginRegistry(self.dir.path, {}, package=f"_check_{os.getpid()}_{id(self)}")
        self.addCleanup(checked.close)
        self.assertEqual(
            checked.check_all(),
            {
                "dotted": (".x", expected["dotted"]),
                "ok": ("ok", None),
                "reserved": ("health", expected["reserved"]),
                "slashed": ("a/b", expected["slashed"]),
            },
        )

    def test_routeNameError(self) -> None:
        for good in ("hello", "v1.2", "a-b_c", "_x", "9"):
            self.assertIsNone(route_name_error(good), good)
        for bad in ("plugins", "reload", "metrics", "health", "", "-x", "a/b", "é"):
            self.assertEqual(
                route_name_error(bad),
                f"route name {bad!r} is reserved or not a valid path segment",
            )

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
        self.config.setdefault("starting", []).append(self)
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
        # The module is rebuilt in the import thread: wait until the new
        # generation's start() is running.
        yield until(lambda: len(record.get("starting", [])) == 2)
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


def exiting_plugin(method: str, raising: str) -> str:
    """
    A plugin whose C{method} (C{__init__}, C{start} or C{stop}) runs
    C{raising}, a statement that raises a BaseException.
    """
    head = "import sys\nfrom pluginserver import Plugin\nclass P(Plugin):\n"
    if method == "__init__":
        body = (
            f"    def __init__(self, *args):\n        super().__init__(*args)\n        {raising}\n"
        )
    else:
        body = f"    def {method}(self):\n        {raising}\n"
    return head + body + "    def handle(self, request):\n        return 'new'\n"


def source(plugins: PluginDir, stem: str) -> str:
    """
    The current source of C{stem}.py.
    """
    with open(os.path.join(plugins.path, stem + ".py")) as f:
        return f.read()


class Stop(BaseException):
    """
    A BaseException of a plugin's own, neither Exception nor one of Python's.
    """


class ContainmentTests(TestCase):
    """
    Whatever a plugin raises, any BaseException included, in its module
    body, a helper's, __init__, start() or stop(), fails that plugin alone.
    """

    def setUp(self) -> None:
        self.dir = PluginDir(self)

    @defer.inlineCallbacks
    def test_moduleBodyBaseExceptionFailsThatPluginAlone(self) -> Any:
        self.dir.write("exits", "import sys\nsys.exit(3)\n" + plugin_source("1"))
        self.dir.write("bare", "import sys\nsys.exit()\n" + plugin_source("1"))
        self.dir.write("interrupted", "\nraise KeyboardInterrupt\n" + plugin_source("1"))
        self.dir.write("own", "from tests.test_registry import Stop\nraise Stop('mine')\n")
        self.dir.write("good", plugin_source("'good'"))
        registry = self.dir.registry(self)
        expected = {
            "exits": "SystemExit: 3 (exits.py, line 2)",
            "bare": "SystemExit (bare.py, line 2)",
            "interrupted": "KeyboardInterrupt (interrupted.py, line 2)",
            "own": "Stop: mine (own.py, line 2)",
        }
        report = yield registry.load_all()
        self.assertEqual((report.loaded, report.failed), (["good"], expected))
        self.assertEqual(answer(registry, "good"), "good")
        # And again on /reload/all and /reload/<name>.
        report = yield registry.reload_all()
        self.assertEqual((report.loaded, report.failed), (["good"], expected))
        outcome = yield registry.reload("exits")
        self.assertEqual(
            (outcome.success, outcome.generation, outcome.error),
            (False, None, "SystemExit: 3 (exits.py, line 2)"),
        )
        self.assertEqual(answer(registry, "good"), "good")

    def test_checkAllReportsABaseException(self) -> None:
        """
        C{--check} runs every module body too: sys.exit() there is that
        plugin's failure, not the end of the check.
        """
        self.dir.write("exits", "import sys\nsys.exit(3)\n" + plugin_source("1"))
        self.dir.write("good", plugin_source("'good'"))
        registry = PluginRegistry(self.dir.path, {}, package=f"_check_{os.getpid()}_{id(self)}")
        self.addCleanup(registry.close)
        self.assertEqual(
            registry.check_all(),
            {"exits": (None, "SystemExit: 3 (exits.py, line 2)"), "good": ("good", None)},
        )

    @defer.inlineCallbacks
    def test_moduleBodyBaseExceptionOnReloadKeepsTheOldGeneration(self) -> Any:
        self.dir.write("p", plugin_source("VALUE", extra="VALUE = 'old'\n"))
        self.dir.write("other", plugin_source("'other v1'"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.dir.write(
            "p", plugin_source("VALUE", extra="VALUE = 'new'\nimport sys\nsys.exit(3)\n")
        )
        self.dir.write("other", plugin_source("'other v2'"))
        outcome = yield registry.reload("p")
        self.assertEqual(
            (outcome.success, outcome.generation, outcome.error),
            (False, 1, "SystemExit: 3 (p.py, line 4)"),
        )
        self.assertEqual(answer(registry, "p"), "old")
        report = yield registry.reload_all()
        self.assertEqual(report.failed, {"p": "SystemExit: 3 (p.py, line 4)"})
        self.assertEqual(answer(registry, "p"), "old")
        self.assertEqual(answer(registry, "other"), "other v2")
        self.assertFalse(components.ALLOW_DUPLICATES)

    @defer.inlineCallbacks
    def test_baseExceptionWhileRebuildingPutsTheOldGlobalsBack(self) -> Any:
        """
        The scratch run passes and the body then raises SystemExit when
        rebuild runs it again in the live module: the live module's
        globals are put back and ALLOW_DUPLICATES is off again.
        """
        self.dir.write("_count", "runs = 0\n")
        self.dir.write(
            "p",
            "import sys\nfrom . import _count\n_count.runs += 1\n"
            "if _count.runs == 3:\n    sys.exit(7)\n"
            "VALUE = _count.runs\n" + plugin_source("VALUE"),
        )
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.assertEqual(answer(registry, "p"), 1)
        self.dir.write("p", source(self.dir, "p") + "\n# edited\n")
        outcome = yield registry.reload("p")  # scratch: run 2, rebuild: run 3
        self.assertEqual(
            (outcome.success, outcome.generation, outcome.error),
            (False, 1, "SystemExit: 7 (p.py, line 5)"),
        )
        self.assertEqual(answer(registry, "p"), 1)
        self.assertFalse(components.ALLOW_DUPLICATES)
        outcome = yield registry.reload("p")  # runs 4 and 5
        self.assertTrue(outcome.success, outcome.error)
        self.assertEqual(answer(registry, "p"), 5)

    @defer.inlineCallbacks
    def test_helperModuleBodyBaseException(self) -> Any:
        """
        A helper whose body raises SystemExit fails the plugins importing
        it (first load) or is reported under its file name (changed helper),
        and every other plugin loads and serves.
        """
        self.dir.write("_broken", "import sys\nsys.exit(4)\n")
        self.dir.write("user", plugin_source("1", extra="from . import _broken\n"))
        self.dir.write("_util", "def word():\n    return 'one'\n")
        self.dir.write("other", plugin_source("word()", extra="from ._util import word\n"))
        registry = self.dir.registry(self)
        report = yield registry.load_all()
        self.assertEqual(report.loaded, ["other"])
        self.assertEqual(report.failed, {"user": "SystemExit: 4 (_broken.py, line 2)"})
        self.dir.write("_util", "raise KeyboardInterrupt\ndef word():\n    return 'two'\n")
        report = yield registry.reload_all()
        self.assertEqual(
            report.failed,
            {
                "user": "SystemExit: 4 (_broken.py, line 2)",
                "_util.py": "helper _util.py: KeyboardInterrupt (_util.py, line 1)",
            },
        )
        self.assertEqual(answer(registry, "other"), "one")
        outcome = yield registry.reload("other")
        self.assertEqual(
            (outcome.success, outcome.generation, outcome.error),
            (False, 1, "helper _util.py: KeyboardInterrupt (_util.py, line 1)"),
        )
        self.assertEqual(answer(registry, "other"), "one")

    @defer.inlineCallbacks
    def test_initBaseException(self) -> Any:
        self.dir.write("first", exiting_plugin("__init__", "sys.exit(3)"))
        self.dir.write("p", plugin_source("'old'"))
        self.dir.write("good", plugin_source("'good'"))
        registry = self.dir.registry(self)
        report = yield registry.load_all()
        self.assertEqual(report.failed, {"first": "SystemExit: 3 (first.py, line 6)"})
        self.assertEqual(report.loaded, ["good", "p"])
        self.dir.write("p", exiting_plugin("__init__", "raise KeyboardInterrupt"))
        outcome = yield registry.reload("p")
        self.assertEqual(
            (outcome.success, outcome.generation, outcome.error),
            (False, 1, "KeyboardInterrupt (p.py, line 6)"),
        )
        self.assertEqual(answer(registry, "p"), "old")

    @defer.inlineCallbacks
    def test_startBaseException(self) -> Any:
        self.dir.write("exits", exiting_plugin("start", "sys.exit(3)"))
        self.dir.write("p", plugin_source("'old'"))
        self.dir.write(
            "coro",
            "from pluginserver import Plugin\n"
            "from tests.test_registry import Stop\n"
            "class C(Plugin):\n"
            "    async def start(self):\n        raise Stop('async')\n"
            "    def handle(self, request):\n        return 1\n",
        )
        self.dir.write("good", plugin_source("'good'"))
        registry = self.dir.registry(self)
        report = yield registry.load_all()
        self.assertEqual(
            report.failed,
            {
                "coro": "start() failed: Stop: async (coro.py, line 5)",
                "exits": "start() failed: SystemExit: 3 (exits.py, line 5)",
            },
        )
        self.assertEqual(report.loaded, ["good", "p"])
        self.dir.write("p", exiting_plugin("start", "raise KeyboardInterrupt"))
        outcome = yield registry.reload("p")
        self.assertEqual(
            (outcome.success, outcome.generation, outcome.error),
            (False, 1, "start() failed: KeyboardInterrupt (p.py, line 5)"),
        )
        self.assertEqual(answer(registry, "p"), "old")
        self.assertEqual(answer(registry, "good"), "good")

    @defer.inlineCallbacks
    def test_oldGenerationsStopBaseExceptionIsStillASuccess(self) -> Any:
        """
        The new generation serves: the reload succeeded, whatever the old
        one's stop() raised.
        """
        self.dir.write("s", exiting_plugin("stop", "sys.exit(3)"))
        self.dir.write(
            "a",
            "from pluginserver import Plugin\n"
            "class A(Plugin):\n"
            "    async def stop(self):\n        raise KeyboardInterrupt\n"
            "    def handle(self, request):\n        return 1\n",
        )
        registry = self.dir.registry(self)
        yield registry.load_all()
        self.dir.write("s", plugin_source("2"))
        outcome = yield registry.reload("s")
        self.assertEqual((outcome.success, outcome.generation), (True, 2))
        self.assertEqual(answer(registry, "s"), 2)
        self.dir.write("a", plugin_source("2"))
        report = yield registry.reload_all()
        self.assertEqual(report.failed, {})
        self.assertEqual(registry.get("a").generation, 2)  # type: ignore[union-attr]
        self.assertEqual(answer(registry, "a"), 2)
        self.assertEqual(len(self.flushLoggedErrors(SystemExit)), 1)
        self.assertEqual(len(self.flushLoggedErrors(KeyboardInterrupt)), 1)

    @defer.inlineCallbacks
    def test_stopAllStopsEveryPluginWhateverOneRaises(self) -> Any:
        record: dict[str, list[str]] = {"stopped": []}
        stopping = (
            "from pluginserver import Plugin\n"
            "class P(Plugin):\n"
            "    def stop(self):\n        self.config['stopped'].append(self.name)\n"
            "    def handle(self, request):\n        return 1\n"
        )
        self.dir.write("a", stopping)
        self.dir.write("b", exiting_plugin("stop", "sys.exit(3)"))
        self.dir.write(
            "c",
            exiting_plugin("stop", "raise Stop()").replace(
                "import sys\n", "import sys\nfrom tests.test_registry import Stop\n"
            ),
        )
        self.dir.write("d", stopping)
        registry = self.dir.registry(self, config=record)
        report = yield registry.load_all()
        self.assertEqual(report.loaded, ["a", "b", "c", "d"])
        yield registry.stop_all()
        self.assertEqual(record["stopped"], ["a", "d"])
        self.assertEqual(registry.plugins, {})
        self.assertEqual(len(self.flushLoggedErrors(SystemExit, Stop)), 2)


class ImportThreadTests(TestCase):
    """
    Module bodies run in the import thread, never on the reactor thread.
    """

    def setUp(self) -> None:
        self.dir = PluginDir(self)

    @defer.inlineCallbacks
    def test_moduleBodiesRunOffTheReactorThread(self) -> Any:

        record = "import threading\nTHREAD = threading.current_thread()\n"
        self.dir.write("_util", record)
        self.dir.write(
            "p",
            "from . import _util\n"
            + record
            + plugin_source("(THREAD, _util.THREAD)", extra="from . import _util\n"),
        )
        registry = self.dir.registry(self)
        yield registry.load_all()
        main = threading.main_thread()
        self.assertIs(threading.current_thread(), main)  # the reactor's
        own, helper = answer(registry, "p")
        self.assertIsNot(own, main)
        self.assertIsNot(helper, main)
        # A reload (scratch and rebuild) and a changed helper.
        self.dir.write("_util", record + "# edited\n")
        self.dir.write("p", source(self.dir, "p") + "# edited\n")
        outcome = yield registry.reload("p")
        self.assertTrue(outcome.success, outcome.error)
        self.assertEqual(registry.get("p").generation, 2)  # type: ignore[union-attr]
        own2, helper2 = answer(registry, "p")
        self.assertIsNot(own2, main)
        self.assertIsNot(helper2, main)

    @defer.inlineCallbacks
    def test_theReactorRunsWhileAModuleImports(self) -> Any:
        """
        A module body that sleeps 0.5 s, loaded and reloaded: the reactor
        keeps ticking every 10 ms, and the other plugins keep answering.
        """
        slow = "import time\ntime.sleep(0.5)\n" + plugin_source("'slow'")
        self.dir.write("fast", plugin_source("'fast'"))
        registry = self.dir.registry(self)
        yield registry.load_all()
        ticks: list[float] = []
        answers: list[Any] = []

        def tick() -> None:
            ticks.append(time.monotonic())
            answers.append(answer(registry, "fast"))

        loop = task.LoopingCall(tick)
        loop.start(0.01)
        self.addCleanup(lambda: loop.running and loop.stop())
        self.dir.write("slow", slow)
        began = time.monotonic()
        report = yield registry.reload_all()  # first load: one run
        self.assertEqual(report.added, ["slow"])
        self.dir.write("slow", slow + "# edited\n")
        outcome = yield registry.reload("slow")  # scratch and rebuild: two
        self.assertTrue(outcome.success, outcome.error)
        took = time.monotonic() - began
        loop.stop()
        self.assertGreater(took, 1.5)
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        self.assertLess(max(gaps), 0.1, f"the reactor stalled for {max(gaps):.3f} s")
        self.assertGreater(len(ticks), 50)
        self.assertEqual(set(answers), {"fast"})

    @defer.inlineCallbacks
    def test_loadsAreSerialised(self) -> Any:
        """
        Reloads asked for at once run one after the other: two module
        bodies (and so two rebuilds) never run at the same time.
        """
        body = (
            "import time\nfrom . import _log\n"
            "_log.events.append(('in', __name__))\ntime.sleep(0.1)\n"
            "_log.events.append(('out', __name__))\n"
        )
        self.dir.write("_log", "events = []\n")
        for stem in ("a", "b", "c"):
            self.dir.write(stem, body + plugin_source(repr(stem)))
        registry = self.dir.registry(self)
        yield registry.load_all()
        for stem in ("a", "b", "c"):
            self.dir.write(stem, body + plugin_source(repr(stem)) + "# edited\n")
        outcomes = yield defer.gatherResults(
            [registry.reload("a"), registry.reload_all(), registry.reload("c")]
        )
        self.assertTrue(outcomes[0].success)
        self.assertEqual(outcomes[1].failed, {})

        events = sys.modules[registry.get("a").module.rpartition(".")[0] + "._log"].events  # type: ignore[union-attr]
        # in, out, in, out, ...: never two ins in a row.
        self.assertEqual([kind for kind, _ in events], ["in", "out"] * (len(events) // 2))


class MissingDirectoryTests(TestCase):
    """
    A plugins directory that is gone (rm -rf) or unreadable is reported;
    the loaded plugins keep serving.
    """

    @defer.inlineCallbacks
    def test_removedDirectoryIsReportedAndPluginsKeepServing(self) -> Any:

        plugins = PluginDir(self)
        plugins.write("p", plugin_source("'p'"))
        plugins.write("q", plugin_source("'q'"))
        registry = plugins.registry(self)
        yield registry.load_all()
        shutil.rmtree(plugins.path)
        missing = f"{registry.directory}: No such file or directory"
        report = yield registry.reload_all()
        self.assertEqual(
            (report.loaded, report.added, report.removed, report.failed),
            (["p", "q"], [], [], {"plugins directory": missing}),
        )
        self.assertEqual(answer(registry, "p"), "p")
        outcome = yield registry.reload("p")
        self.assertEqual(
            (outcome.name, outcome.success, outcome.generation, outcome.error),
            ("p", False, 1, f"plugins directory {missing}"),
        )
        self.assertEqual(answer(registry, "p"), "p")
        yield self.assertFailure(registry.reload("nope"), KeyError)
        # Back again: reloads work as before.
        import os

        os.makedirs(plugins.path)
        plugins.write("p", plugin_source("'p2'"))
        report = yield registry.reload_all()
        self.assertEqual((report.loaded, report.removed, report.failed), (["p"], ["q"], {}))
        self.assertEqual(answer(registry, "p"), "p2")

    @defer.inlineCallbacks
    def test_directoryReplacedByAFile(self) -> Any:
        import shutil

        plugins = PluginDir(self)
        plugins.write("p", plugin_source("'p'"))
        registry = plugins.registry(self)
        yield registry.load_all()
        shutil.rmtree(plugins.path)
        with open(plugins.path, "w") as f:
            f.write("")
        self.addCleanup(os.remove, plugins.path)
        report = yield registry.reload_all()
        self.assertEqual(
            report.failed, {"plugins directory": f"{registry.directory}: Not a directory"}
        )
        self.assertEqual(answer(registry, "p"), "p")


class MissingDirectoryRouteTests(ServerCase):
    """
    What an HTTP client sees: a clear failure, not an internal error.
    """

    @defer.inlineCallbacks
    def test_reloadRoutesAnswerCleanly(self) -> Any:

        self.dir.write("p", plugin_source("'p'"))
        yield self.serve()
        shutil.rmtree(self.dir.path)
        missing = f"{self.registry.directory}: No such file or directory"
        status, _, body = yield self.call("GET", "/reload/all")
        self.assertEqual(status, 500)
        self.assertEqual(
            body,
            {
                "status": "All plugins reloaded",
                "loaded_plugins": ["p"],
                "added": [],
                "removed": [],
                "failed": {"plugins directory": missing},
            },
        )
        status, _, body = yield self.call("GET", "/reload/p")
        self.assertEqual(
            (status, body),
            (
                500,
                {
                    "reloaded": "p",
                    "success": False,
                    "generation": 1,
                    "error": f"plugins directory {missing}",
                },
            ),
        )
        status, _, body = yield self.call("GET", "/reload/nope")
        self.assertEqual(status, 404)
        status, _, body = yield self.call("GET", "/p")
        self.assertEqual((status, body), (200, "p"))
