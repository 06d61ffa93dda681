"""
Tests for L{pluginserver.modules}: the module machinery on its own, with no
registry, routes or instances' lifecycles.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import types
from typing import Any

from twisted.internet import defer, reactor
from twisted.python import components
from twisted.trial.unittest import TestCase

from pluginserver.modules import (
    HelperLoadError,
    PluginLoadError,
    PluginModules,
    SourceHashes,
    describe_error,
    plugin_class,
)
from pluginserver.plugin import Plugin
from tests.helpers import PluginDir, plugin_source

_packages = itertools.count()

RECORDING = (
    "import threading\n"
    "from . import _log\n"
    "_log.runs.append(threading.current_thread())\n"
    "WORD = {word!r}\n"
    "class P(Plugin):\n"
    "    def handle(self, request):\n"
    "        return WORD\n"
)
"""A plugin whose body notes the thread it runs in, each time it runs."""


class ModulesCase(TestCase):
    """
    A plugins directory and the L{PluginModules} of it, closed when the test
    ends.
    """

    def setUp(self) -> None:
        self.dir = PluginDir(self)
        self.modules = PluginModules(
            f"_test_modules_{os.getpid()}_{next(_packages)}",
            os.path.abspath(self.dir.path),
            reactor,
        )
        self.addCleanup(self.modules.close)
        self.dir.write("_log", "runs = []\n")

    def write(self, word: str, stem: str = "p") -> None:
        self.dir.write(stem, "from pluginserver import Plugin\n" + RECORDING.format(word=word))

    def runs(self) -> list[threading.Thread]:
        """
        The threads the plugin's body ran in, one per run.
        """
        runs: list[threading.Thread] = sys.modules[self.modules.fullname("_log")].runs
        return runs

    @defer.inlineCallbacks
    def load(self, stem: str = "p", serving: Plugin | None = None) -> Any:
        """
        Prepare C{stem} and make it live, as a successful load does; fire
        with its plugin class.
        """
        prepared = yield self.modules.prepare(self.modules.snapshot(stem, serving))
        return self.modules.go_live(prepared)


class LoadTests(ModulesCase):
    @defer.inlineCallbacks
    def test_firstLoadMakesTheScratchModuleLive(self) -> Any:
        """
        On a first load the checked scratch module itself becomes the live
        module: the body runs once, and nothing is live before go_live.
        """
        self.write("one")
        fullname = self.modules.fullname("p")
        snapshot = self.modules.snapshot("p", None)
        self.assertIsNone(snapshot.live)
        prepared = yield self.modules.prepare(snapshot)
        self.assertTrue(prepared.first)
        self.assertNotIn(fullname, sys.modules)
        self.assertIsNone(self.modules.hashes.get(fullname))
        cls = self.modules.go_live(prepared)
        self.assertIs(sys.modules[fullname], prepared.module)
        self.assertIs(sys.modules[self.modules.package].p, prepared.module)
        self.assertIs(cls, prepared.module.P)
        self.assertEqual(self.modules.hashes.get(fullname), prepared.digest)
        self.assertEqual(len(self.runs()), 1)

    @defer.inlineCallbacks
    def test_scratchRunFailureLeavesTheLiveModuleUntouched(self) -> Any:
        """
        A body that raises fails in the scratch module: the live module is
        not rebuilt (its globals and recorded source are as they were), and
        restore leaves it so.
        """
        self.write("one")
        yield self.load()
        live = self.modules.live("p")
        assert live is not None
        before = dict(live.__dict__)
        digest = self.modules.hashes.get(live.__name__)
        self.dir.write("p", plugin_source("WORD", extra="WORD = 'two'\nimport sys\nsys.exit(3)\n"))
        snapshot = self.modules.snapshot("p", None)
        failure = yield self.assertFailure(self.modules.prepare(snapshot), PluginLoadError)
        self.assertEqual(str(failure), "SystemExit: 3 (p.py, line 4)")
        self.assertFalse(snapshot.rebuilt)
        self.modules.restore(snapshot)
        self.assertEqual(live.__dict__, before)
        self.assertEqual(self.modules.hashes.get(live.__name__), digest)
        self.assertIs(self.modules.live("p"), live)

    @defer.inlineCallbacks
    def test_failedFirstLoadIsForgotten(self) -> Any:
        """
        Restoring after a failed first load (here, the class check of
        go_live passed but a later step failed) forgets the module.
        """
        self.write("one")
        fullname = self.modules.fullname("p")
        snapshot = self.modules.snapshot("p", None)
        self.modules.go_live((yield self.modules.prepare(snapshot)))
        self.modules.restore(snapshot)
        self.assertNotIn(fullname, sys.modules)
        self.assertFalse(hasattr(sys.modules[self.modules.package], "p"))
        self.assertIsNone(self.modules.hashes.get(fullname))

    @defer.inlineCallbacks
    def test_rebuildThenRestorePutsTheGlobalsBack(self) -> Any:
        """
        A reload rebuilds the live module in place (the serving instance
        keeps its own class); restoring puts back the old globals, the old
        recorded source and the instance's class.
        """
        self.write("one")
        cls = yield self.load()
        serving = cls("p", {}, None)
        live = self.modules.live("p")
        assert live is not None
        before = dict(live.__dict__)
        digest = self.modules.hashes.get(live.__name__)
        self.write("two")
        snapshot = self.modules.snapshot("p", serving)
        prepared = yield self.modules.prepare(snapshot)
        self.assertFalse(prepared.first)
        self.assertIs(prepared.module, live)
        self.assertTrue(snapshot.rebuilt)
        self.assertEqual(live.WORD, "two")
        self.assertIs(type(serving), cls)
        self.assertNotEqual(self.modules.hashes.get(live.__name__), digest)
        self.modules.restore(snapshot)
        self.assertEqual(live.__dict__, before)
        self.assertEqual(live.WORD, "one")
        self.assertIs(type(serving), cls)
        self.assertEqual(self.modules.hashes.get(live.__name__), digest)

    @defer.inlineCallbacks
    def test_exceptionWhileRebuildingIsAPluginLoadError(self) -> Any:
        """
        A body that passes in the scratch module and raises when rebuild
        runs it again fails with L{PluginLoadError}, and leaves
        ALLOW_DUPLICATES off.
        """
        self.dir.write("_count", "runs = 0\n")
        source = (
            "from . import _count\n_count.runs += 1\n"
            "if _count.runs == 3:\n    raise KeyboardInterrupt\n" + plugin_source("1")
        )
        self.dir.write("p", source)
        yield self.load()
        self.dir.write("p", source + "# edited\n")
        snapshot = self.modules.snapshot("p", None)
        failure = yield self.assertFailure(self.modules.prepare(snapshot), PluginLoadError)
        self.assertEqual(str(failure), "KeyboardInterrupt (p.py, line 4)")
        self.assertTrue(snapshot.rebuilt)
        self.assertFalse(components.ALLOW_DUPLICATES)

    @defer.inlineCallbacks
    def test_classThatIsNoLongerAPlugin(self) -> Any:
        """
        go_live refuses a reloaded module whose plugin class's name is bound
        to something else in the live module.
        """
        self.write("one")
        yield self.load()
        self.write("two")
        prepared = yield self.modules.prepare(self.modules.snapshot("p", None))
        prepared.module.P = 1
        self.assertRaises(PluginLoadError, self.modules.go_live, prepared)

    @defer.inlineCallbacks
    def test_forget(self) -> Any:
        self.write("one")
        yield self.load()
        self.modules.forget("p")
        self.assertIsNone(self.modules.live("p"))
        self.assertIsNone(self.modules.hashes.get(self.modules.fullname("p")))
        self.assertFalse(hasattr(sys.modules[self.modules.package], "p"))

    def test_packageNameInUse(self) -> None:
        self.assertRaises(ValueError, PluginModules, self.modules.package, self.dir.path, reactor)

    def test_closeForgetsThePackage(self) -> None:
        self.modules.close()
        self.assertNotIn(self.modules.package, sys.modules)
        self.assertEqual(self.modules.hashes.names(), [])
        self.modules.close()  # idempotent


class ImportThreadTests(ModulesCase):
    @defer.inlineCallbacks
    def test_bodiesRunOffTheReactorThread(self) -> Any:
        """
        The scratch run, the rebuild and a helper's rebuild all run in the
        import thread; so does C{check}'s scratch run.
        """
        main = threading.main_thread()
        self.assertIs(threading.current_thread(), main)  # the reactor's
        self.dir.write("_util", "import threading\nTHREAD = threading.current_thread()\n")
        for word in ("one", "two"):  # a first load; then a scratch run and a rebuild
            self.dir.write(
                "p",
                "from pluginserver import Plugin\nfrom . import _util\n"
                + RECORDING.format(word=word),
            )
            yield self.load()
        self.dir.write("_util", "import threading\nTHREAD = threading.current_thread()\n#\n")
        self.modules.check("p")  # scratch, in a thread of its own
        helpers = yield self.modules.refresh_helpers(["p"])
        self.assertEqual(helpers, [self.modules.fullname("_util")])
        self.assertEqual(len(self.runs()), 4)
        self.assertNotIn(main, self.runs())
        self.assertIsNot(sys.modules[self.modules.fullname("_util")].THREAD, main)

    def test_checkMakesNothingLive(self) -> None:
        self.write("one")
        self.assertEqual(self.modules.check("p").__name__, "P")
        self.assertIsNone(self.modules.live("p"))
        self.dir.write("broken", "def (\n")
        error = self.assertRaises(PluginLoadError, self.modules.check, "broken")
        self.assertIn("(broken.py, line 1)", str(error))


class HelperTests(ModulesCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        super().setUp()
        self.dir.write("_util", "def word():\n    return 'one'\n")
        self.dir.write("user", plugin_source("word()", extra="from ._util import word\n"))
        yield self.load("user")
        self.helper = self.modules.fullname("_util")

    @defer.inlineCallbacks
    def test_unchangedHelpersAreLeftAlone(self) -> Any:
        self.assertEqual((yield self.modules.refresh_helpers(["user"])), [])

    @defer.inlineCallbacks
    def test_changedHelperIsRebuilt(self) -> Any:
        self.dir.write("_util", "def word():\n    return 'two'\n")
        changed = yield self.modules.refresh_helpers(["user"])
        self.assertEqual(changed, [self.helper])
        self.assertEqual(sys.modules[self.helper].word(), "two")
        self.assertEqual((yield self.modules.refresh_helpers(["user"])), [])

    @defer.inlineCallbacks
    def test_pluginsAreNotHelpers(self) -> Any:
        """
        A changed plugin is reloaded as a plugin, not refreshed as a
        helper; a module not named as a plugin is a helper.
        """
        self.dir.write("user", plugin_source("'edited'"))
        self.assertEqual((yield self.modules.refresh_helpers(["user"])), [])
        changed = yield self.modules.refresh_helpers([])
        self.assertEqual(changed, [self.modules.fullname("user")])

    @defer.inlineCallbacks
    def test_brokenHelperNamesItsFile(self) -> Any:
        self.dir.write("_util", "def word(:\n")
        failure = yield self.assertFailure(self.modules.refresh_helpers(["user"]), HelperLoadError)
        self.assertEqual(failure.helper, "_util.py")
        self.assertTrue(str(failure).startswith("helper _util.py: SyntaxError: "))
        self.assertEqual(sys.modules[self.helper].word(), "one")

    @defer.inlineCallbacks
    def test_removedHelperIsNotAChange(self) -> Any:
        """
        A helper whose file is gone is left as it is: the plugins importing
        it keep the module they have.
        """
        self.dir.remove("_util")
        self.assertEqual((yield self.modules.refresh_helpers(["user"])), [])
        self.assertEqual(sys.modules[self.helper].word(), "one")


class SourceHashesTests(TestCase):
    def setUp(self) -> None:
        self.hashes = SourceHashes()
        self.path = self.mktemp()
        with open(self.path, "wb") as f:
            f.write(b"x = 1\n")

    def test_recordAndChanged(self) -> None:
        digest = self.hashes.record("m", b"x = 1\n")
        self.assertEqual(digest, SourceHashes.of(b"x = 1\n"))
        self.assertEqual(self.hashes.get("m"), digest)
        self.assertFalse(self.hashes.changed("m", self.path))
        with open(self.path, "wb") as f:
            f.write(b"x = 2\n")
        self.assertTrue(self.hashes.changed("m", self.path))

    def test_unrecordedIsChanged(self) -> None:
        self.assertTrue(self.hashes.changed("m", self.path))

    def test_unreadableFile(self) -> None:
        self.hashes.record("m", b"x = 1\n")
        os.remove(self.path)
        self.assertTrue(self.hashes.changed("m", self.path))
        self.assertFalse(self.hashes.changed("m", self.path, unreadable=False))

    def test_setForgetAndNames(self) -> None:
        digest = self.hashes.record("m", b"x = 1\n")
        self.hashes.record("n", b"y = 1\n")
        self.assertEqual(sorted(self.hashes.names()), ["m", "n"])
        self.hashes.forget("m")
        self.assertIsNone(self.hashes.get("m"))
        self.hashes.set("m", digest)
        self.assertEqual(self.hashes.get("m"), digest)
        self.hashes.set("m", None)
        self.assertEqual(self.hashes.names(), ["n"])
        self.hashes.clear()
        self.assertEqual(self.hashes.names(), [])


class PluginClassTests(TestCase):
    def module(self, source: str) -> types.ModuleType:
        module = types.ModuleType("m")
        exec(source, module.__dict__)
        return module

    def test_theLeafSubclass(self) -> None:
        module = self.module(
            "from pluginserver import Plugin\n"
            "class Base(Plugin):\n    pass\n"
            "class Leaf(Base):\n    pass\n"
        )
        self.assertIs(plugin_class(module), module.Leaf)

    def test_importedPluginClassesDoNotCount(self) -> None:
        module = self.module("from pluginserver import Plugin\n")
        error = self.assertRaises(PluginLoadError, plugin_class, module)
        self.assertEqual(str(error), "defines no Plugin subclass")

    def test_severalAreRefused(self) -> None:
        module = self.module(
            "from pluginserver import Plugin\n"
            "class B(Plugin):\n    pass\n"
            "class A(Plugin):\n    pass\n"
        )
        error = self.assertRaises(PluginLoadError, plugin_class, module)
        self.assertEqual(str(error), "defines more than one Plugin subclass (A, B)")


class DescribeErrorTests(TestCase):
    def test_namesTheLineInThePluginsDirectory(self) -> None:
        path = os.path.abspath(os.path.join(self.mktemp(), "p.py"))
        code = compile("\n\nraise SystemExit(3)\n", path, "exec")
        error = self.assertRaises(SystemExit, exec, code, {})
        self.assertEqual(describe_error(error, path), "SystemExit: 3 (p.py, line 3)")

    def test_noMessage(self) -> None:
        self.assertEqual(describe_error(KeyboardInterrupt(), "/nowhere/p.py"), "KeyboardInterrupt")

    def test_syntaxError(self) -> None:
        error = self.assertRaises(SyntaxError, compile, "def (\n", "/plugins/p.py", "exec")
        described = describe_error(error, "/plugins/p.py")
        self.assertTrue(described.startswith("SyntaxError: "), described)
        self.assertIn("(p.py, line 1)", described)
