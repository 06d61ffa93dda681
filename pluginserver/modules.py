# -*- test-case-name: tests.test_modules,tests.test_registry -*-
"""
The module machinery behind the plugin registry: finding, running,
rebuilding and forgetting the modules of one plugins directory.

Each plugin file is imported as a submodule of a synthetic package whose
C{__path__} is the plugins directory, so that C{importlib.reload} (and so
L{twisted.python.rebuild}) can find it again and plugins can share helper
modules through relative imports (C{from ._util import x}).  Bytecode
caching is off for these modules: a same-size edit within the same second
would otherwise be served from a stale C{.pyc}.

A load is made atomic against broken code in steps, each one a named
operation of L{PluginModules}: L{PluginModules.snapshot} notes what a failure
must put back; L{PluginModules.prepare} runs the new source in a scratch
module (and, on a reload, rebuilds the live module) in the import thread;
L{PluginModules.go_live} makes the result the served module;
L{PluginModules.restore} undoes the lot when anything fails.  The prepare
step is also there in its two halves, L{PluginModules.try_source} (the
scratch run alone) and L{PluginModules.finish} (the rebuild), for reloads
that several worker processes each try before any of them swaps.

Module bodies run in the import thread, never on the reactor thread: a module
that takes seconds to import does not hold up the requests of other plugins.

This module knows nothing of routes, generations or instances' lifecycles:
that is L{pluginserver.registry}'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import traceback
import types
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import attr
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python import components
from twisted.python.failure import Failure
from twisted.python.rebuild import rebuild
from twisted.python.threadpool import ThreadPool

from pluginserver.plugin import Plugin

log = Logger()

_T = TypeVar("_T")


class PluginLoadError(Exception):
    """
    A plugin could not be loaded; the message names the file and, where
    Python knows it, the line.
    """


class HelperLoadError(PluginLoadError):
    """
    A changed helper module (imported by plugins, not a plugin itself) could
    not be reloaded.

    @ivar helper: its file name.
    """

    def __init__(self, helper: str, message: str) -> None:
        super().__init__(f"helper {helper}: {message}")
        self.helper = helper


class SourceHashes:
    """
    The one record of which source each module of the package last ran: the
    SHA-256 of its file's bytes, by the module's full name.  What tells a
    changed plugin or helper from an unchanged one.
    """

    def __init__(self) -> None:
        self._digests: dict[str, str] = {}

    @staticmethod
    def of(source: bytes) -> str:
        """
        The digest of C{source}, as recorded.
        """
        return hashlib.sha256(source).hexdigest()

    def record(self, fullname: str, source: bytes) -> str:
        """
        Note that C{fullname} now runs C{source}; return its digest.
        """
        digest = self._digests[fullname] = self.of(source)
        return digest

    def get(self, fullname: str) -> str | None:
        """
        The digest of the source C{fullname} runs, or L{None} when none was
        recorded.
        """
        return self._digests.get(fullname)

    def set(self, fullname: str, digest: str | None) -> None:
        """
        Put back a digest L{get} gave (L{None}: forget C{fullname}), for a
        module that runs that source again.
        """
        if digest is None:
            self.forget(fullname)
        else:
            self._digests[fullname] = digest

    def changed(self, fullname: str, path: str, *, unreadable: bool = True) -> bool:
        """
        Whether C{path} now holds other source than the one C{fullname} last
        ran (C{True} when nothing was recorded for it).  C{unreadable} is the
        answer when the file cannot be read: a plugin's file that cannot be
        read is tried again (its load then says why it fails), a helper's is
        left alone (the plugins importing it keep the module they have).
        """
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError:
            return unreadable
        return self.of(source) != self._digests.get(fullname)

    def forget(self, fullname: str) -> None:
        """
        Forget C{fullname} (unloaded, or its first load failed).
        """
        self._digests.pop(fullname, None)

    def names(self) -> list[str]:
        """
        Every module with a recorded source (a copy: a module imported by a
        request meanwhile, on another thread, does not disturb the caller).
        """
        return list(self._digests)

    def clear(self) -> None:
        """
        Forget every module.
        """
        self._digests.clear()


class _NoCacheLoader(importlib.abc.SourceLoader):
    """
    Load plugin source without bytecode caching: a same-size edit within the
    same second would otherwise be served from a stale C{.pyc}.  It records
    every source it runs in the L{SourceHashes}, so that a change can be
    told.
    """

    def __init__(self, fullname: str, path: str, hashes: SourceHashes) -> None:
        self._fullname = fullname
        self._path = path
        self._hashes = hashes

    def get_filename(self, fullname: str) -> str:
        return self._path

    def get_data(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def get_code(self, fullname: str) -> types.CodeType:
        source = self.get_data(self._path)
        self._hashes.record(fullname, source)
        return compile(source, self._path, "exec", dont_inherit=True)


class _PluginFinder(importlib.abc.MetaPathFinder):
    """
    Find the modules of one synthetic package in its directory, and only
    there.
    """

    def __init__(self, package: str, directory: str, hashes: SourceHashes) -> None:
        self.package = package
        self.directory = directory
        self._hashes = hashes

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self.package + "."):
            return None
        parts = fullname[len(self.package) + 1 :].split(".")
        base = os.path.join(self.directory, *parts)
        if os.path.isfile(base + ".py"):
            return importlib.util.spec_from_file_location(
                fullname, base + ".py", loader=_NoCacheLoader(fullname, base + ".py", self._hashes)
            )
        init = os.path.join(base, "__init__.py")
        if os.path.isfile(init):
            return importlib.util.spec_from_file_location(
                fullname,
                init,
                loader=_NoCacheLoader(fullname, init, self._hashes),
                submodule_search_locations=[base],
            )
        return None


def describe_error(exc: BaseException, path: str, tb: types.TracebackType | None = None) -> str:
    """
    Name an exception raised while compiling or running a plugin's source:
    its type, message (when it has one: C{SystemExit: 3}, but plain
    C{KeyboardInterrupt}), and the file and line in the plugins directory
    that raised it, from C{tb} or else the exception's own traceback.
    """
    if isinstance(exc, SyntaxError):
        # str(SyntaxError) already says "(file.py, line N)".
        return f"{type(exc).__name__}: {exc}"
    where = ""
    for frame, lineno in traceback.walk_tb(tb or exc.__traceback__):
        filename = frame.f_code.co_filename
        if os.path.dirname(filename) == os.path.dirname(path):
            where = f" ({os.path.basename(filename)}, line {lineno})"
    message = str(exc)
    what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return what + where


def describe_failure(failure: Failure, path: str) -> str:
    """
    L{describe_error} for an exception a Deferred failed with.
    """
    if failure.value is None:
        return failure.getErrorMessage()
    return describe_error(failure.value, path, failure.getTracebackObject())


def plugin_class(module: types.ModuleType) -> type[Plugin]:
    """
    The one concrete L{Plugin} subclass a plugin module defines; raises
    L{PluginLoadError} when it defines none or several.
    """
    defined = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Plugin)
        and value is not Plugin
        and value.__module__ == module.__name__
    ]
    leaves = [c for c in defined if not any(o is not c and issubclass(o, c) for o in defined)]
    if not leaves:
        raise PluginLoadError("defines no Plugin subclass")
    if len(leaves) > 1:
        names = ", ".join(sorted(c.__name__ for c in leaves))
        raise PluginLoadError(f"defines more than one Plugin subclass ({names})")
    return leaves[0]


class _ImportThreadPool(ThreadPool):
    """
    The import thread: compiling, running and rebuilding plugin modules
    happens here, off the reactor thread.  Its thread is a daemon: a module
    body that never returns must not keep the process alive after the
    reactor has stopped.
    """

    def threadFactory(self, *args: Any, **kwargs: Any) -> threading.Thread:  # type: ignore[override]
        return threading.Thread(*args, daemon=True, **kwargs)


def _callInThread(f: Callable[..., _T], *args: Any) -> _T:
    """
    Call C{f} in a new thread and wait for it (for L{PluginModules.check},
    which runs with no reactor).

    Why a thread at all: a plugin's module body may raise
    C{KeyboardInterrupt} itself, and that is reported as the plugin's
    failure; a real Ctrl-C must still stop the command.  Signals are
    delivered to the main thread only, so here it interrupts the wait
    instead of the plugin's code.
    """
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, f(*args)))
        except BaseException as e:
            box.append((False, e))

    thread = threading.Thread(target=run, name="pluginserver-check", daemon=True)
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    result: _T = value
    return result


@attr.s(auto_attribs=True)
class Snapshot:
    """
    What a failed load of one plugin must put back, taken on the reactor
    thread before L{PluginModules.prepare} (see L{PluginModules.restore}).

    @ivar stem: the plugin's file stem.
    @ivar live: its live module; L{None} on a first load.
    @ivar namespace: a copy of the live module's globals (the serving
        generation's code reads them).
    @ivar digest: the hash of the source the live module runs.
    @ivar serving: the instance serving from the live module, if any, and
        C{servingClass} its class (rebuild moves instances to the new class).
    @ivar rebuilt: set by the import thread once it starts rebuilding the
        live module: only then must its globals be put back.
    """

    stem: str
    live: types.ModuleType | None
    namespace: dict[str, Any]
    digest: str | None
    serving: Plugin | None
    servingClass: type | None
    rebuilt: bool = False


@attr.s(auto_attribs=True, frozen=True)
class Tried:
    """
    A plugin's source run in a scratch module (L{PluginModules.try_source}):
    the module, the name of its plugin class and the hash of the source.
    """

    stem: str
    module: types.ModuleType
    className: str
    digest: str


@attr.s(auto_attribs=True, frozen=True)
class Prepared:
    """
    What the import thread made of a plugin's source: the module to serve
    (the scratch module itself on a first load, which is not live yet; the
    rebuilt live module on a reload), the name of its plugin class and the
    hash of its source.
    """

    stem: str
    module: types.ModuleType
    className: str
    digest: str
    first: bool


class PluginModules:
    """
    The modules of one plugins directory, as the submodules of a synthetic
    package, and the import thread their bodies run in.

    Every operation on one plugin's module is meant to be called with the
    caller's lock held (the registry's): two rebuilds must never overlap.

    @ivar hashes: which source each module runs.

    @param package: the synthetic package's name; L{ValueError} when a
        module of that name is already imported.
    @param directory: the plugins directory (absolute).
    @param reactor: the reactor whose thread calls these operations and
        receives their results.
    @param threadpool: a started thread pool to run module bodies in; by
        default one of one thread is made on first use and stopped in
        L{close}.
    """

    def __init__(
        self,
        package: str,
        directory: str,
        reactor: Any,
        threadpool: ThreadPool | None = None,
    ) -> None:
        if package in sys.modules:
            raise ValueError(f"module name {package!r} is already in use")
        self.package = package
        self.directory = directory
        self.hashes = SourceHashes()
        self._reactor = reactor
        self._threadpool = threadpool
        self._ownsThreadpool = threadpool is None
        self._finder = _PluginFinder(package, directory, self.hashes)
        pkg = types.ModuleType(package, f"pluginserver plugins from {directory}")
        pkg.__path__ = [directory]
        pkg.__spec__ = importlib.machinery.ModuleSpec(package, None, is_package=True)
        pkg.__spec__.submodule_search_locations = [directory]
        sys.modules[package] = pkg
        sys.meta_path.insert(0, self._finder)

    def fullname(self, stem: str) -> str:
        """
        The module name of the plugin file C{stem}.py.
        """
        return f"{self.package}.{stem}"

    def path(self, stem: str) -> str:
        """
        The path of the plugin file C{stem}.py.
        """
        return os.path.join(self.directory, stem + ".py")

    def live(self, stem: str) -> types.ModuleType | None:
        """
        The live module of C{stem}, or L{None} when it was never loaded.
        """
        return sys.modules.get(self.fullname(stem))

    # -- the import thread -------------------------------------------------

    def _inThread(self, f: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        """
        Run C{f} in the import thread; fire on the reactor thread with its
        result.  With the default pool of one thread, two module bodies
        could not overlap even without the caller's lock.
        """
        if self._threadpool is None:
            self._threadpool = _ImportThreadPool(
                minthreads=0, maxthreads=1, name=f"pluginserver-import {self.package}"
            )
            self._ownsThreadpool = True
            self._threadpool.start()
        return threads.deferToThreadPool(self._reactor, self._threadpool, f, *args)

    # -- one load: snapshot, prepare, go live (or restore) -----------------

    def snapshot(self, stem: str, serving: Plugin | None) -> Snapshot:
        """
        Note what a failed load of C{stem} must put back, while C{serving}
        (the instance serving from its live module, if any) serves.  On the
        reactor thread, so that no request changes the globals while they
        are copied.
        """
        live = self.live(stem)
        return Snapshot(
            stem=stem,
            live=live,
            namespace=dict(live.__dict__) if live is not None else {},
            digest=self.hashes.get(self.fullname(stem)),
            serving=serving,
            servingClass=type(serving) if serving is not None else None,
        )

    def prepare(self, snapshot: Snapshot) -> defer.Deferred[Prepared]:
        """
        Bring C{snapshot.stem}'s source up to date, in the import thread:
        compile and run it in a scratch module and, on a reload, rebuild
        the live module.  Fails with L{PluginLoadError}; then call
        L{restore}.

        Why a thread: both run the module's body, which may take as long as
        it likes (an import of a big library, a C{time.sleep} at top level);
        on the reactor thread every request of every plugin would wait for
        it.  One call does both, so the caller's lock serialises rebuilds.

        What the generation still serving may observe meanwhile: the rebuild
        re-runs the body in the live module's namespace, so while it serves,
        its module globals are rebound one by one as the new body runs, for
        as long as the body takes (they are the new ones from the rebuild to
        the swap in any case; a failed load puts the old ones back, on the
        reactor thread, in one go).  Its own class and methods stay its own,
        except for the moment between rebuild moving the serving instance to
        the new class and L{_prepare} moving it back (rebuild's last step, a
        walk over every loaded module, comes in between).

        A known limit of running rebuild off the reactor thread: that walk
        iterates over every module's namespace; one that gains a name on
        the reactor thread at that very moment (a first import inside a
        request) makes it fail with C{RuntimeError}, which fails this load
        like any other error (the old generation keeps serving; reload
        again).
        """
        return self._inThread(self._prepare, snapshot)

    def _prepare(self, snapshot: Snapshot) -> Prepared:
        """
        L{prepare}'s work, in the import thread: L{_tried}, then
        L{_finish}.
        """
        return self._finish(snapshot, self._tried(snapshot.stem), strict=False)

    def _tried(self, stem: str) -> Tried:
        """
        Compile and run C{stem}'s source in a scratch module and find its
        plugin class, making nothing live.  In the import thread.
        """
        scratch, digest = self._scratch(self.fullname(stem), self.path(stem))
        # Refuse a module without a plugin before it goes live.  The class
        # is found by its name in the new source: a reloaded module keeps
        # the names the new source no longer defines.
        return Tried(stem, scratch, plugin_class(scratch).__name__, digest)

    def _finish(self, snapshot: Snapshot, tried: Tried, strict: bool) -> Prepared:
        """
        Bring the live module up to the source L{_tried} ran: on a first
        load the scratch module itself, on a reload a rebuild of the live
        module.  In the import thread.

        @param strict: fail when the rebuild ran another source than the
            one tried (the file changed in between), rather than go on
            with it.
        """
        stem, live = snapshot.stem, snapshot.live
        fullname, path = self.fullname(stem), self.path(stem)
        if live is None:
            # First load: the checked scratch module becomes the live one
            # (on the reactor thread, in go_live), so the body runs once.
            return Prepared(stem, tried.module, tried.className, tried.digest, first=True)
        snapshot.rebuilt = True
        try:
            self._rebuild(live, path)
        finally:
            if snapshot.serving is not None and snapshot.servingClass is not None:
                # rebuild moved the serving instance to the new class; it
                # must keep running its own code until it is replaced.
                snapshot.serving.__class__ = snapshot.servingClass
        digest = self.hashes.get(fullname) or tried.digest
        if strict and digest != tried.digest:
            raise PluginLoadError(f"{os.path.basename(path)} changed while it was reloaded")
        return Prepared(stem, live, tried.className, digest, first=False)

    def try_source(self, stem: str) -> defer.Deferred[Tried]:
        """
        The first half of L{prepare}, alone: compile and run C{stem}'s
        current source in a scratch module, in the import thread, making
        nothing live (so nothing needs restoring when it fails).  Fails with
        L{PluginLoadError}.
        """
        return self._inThread(self._tried, stem)

    def finish(self, snapshot: Snapshot, tried: Tried) -> defer.Deferred[Prepared]:
        """
        The second half of L{prepare}, alone: bring C{snapshot.stem}'s live
        module up to the source C{tried} ran (see L{_finish}; strict: a
        file changed since it was tried fails).  Fails with
        L{PluginLoadError}; then call L{restore}.
        """
        return self._inThread(self._finish, snapshot, tried, True)

    def go_live(self, prepared: Prepared) -> type[Plugin]:
        """
        Make C{prepared}'s module the one served (on a first load it was a
        scratch module until now) and return its plugin class; raises
        L{PluginLoadError} when a reload left that name bound to something
        else.  On the reactor thread.
        """
        module = prepared.module
        if prepared.first:
            fullname = self.fullname(prepared.stem)
            sys.modules[fullname] = module
            setattr(sys.modules[self.package], prepared.stem, module)
            self.hashes.set(fullname, prepared.digest)
        cls = getattr(module, prepared.className, None)
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise PluginLoadError(
                f"{prepared.className} is no longer a Plugin subclass after reload"
            )
        return cls

    def restore(self, snapshot: Snapshot) -> None:
        """
        Undo what a failed load did to the live module, so the generation
        still serving runs exactly as before.  On the reactor thread: the
        namespace is emptied and refilled, which no request may see halfway.
        When the load failed before the rebuild (a syntax error, an
        exception in the scratch run), the namespace is left as it is, with
        whatever the serving generation changed in it meanwhile.  After a
        failed first load the module is forgotten: the next try starts
        afresh.
        """
        live = snapshot.live
        if live is None:
            self.forget(snapshot.stem)
            return
        if snapshot.rebuilt:
            live.__dict__.clear()
            live.__dict__.update(snapshot.namespace)
        if snapshot.digest is not None:
            self.hashes.set(self.fullname(snapshot.stem), snapshot.digest)
        if snapshot.serving is not None and snapshot.servingClass is not None:
            snapshot.serving.__class__ = snapshot.servingClass

    def forget(self, stem: str) -> None:
        """
        Take C{stem}'s module out of the import system (unloaded, or its
        first load failed).
        """
        fullname = self.fullname(stem)
        sys.modules.pop(fullname, None)
        self.hashes.forget(fullname)
        package = sys.modules.get(self.package)
        if package is not None and hasattr(package, stem):
            delattr(package, stem)

    # -- helpers, checks -----------------------------------------------------

    def refresh_helpers(self, plugins: Collection[str]) -> defer.Deferred[list[str]]:
        """
        Rebuild every helper module (a module of the package that is not one
        of the C{plugins}, the stems of the plugins being served) whose
        source changed, each checked in a scratch module first, in the
        import thread.  Fires with their names, or fails with
        L{HelperLoadError} naming the first one that failed.  (L{prepare}
        says what the plugins using a helper may observe while it is
        rebuilt.)
        """
        return self._inThread(self._refreshHelpers, {self.fullname(s) for s in plugins})

    def _refreshHelpers(self, plugins: Collection[str]) -> list[str]:
        """
        L{refresh_helpers}'s work, in the import thread; C{plugins} are full
        module names.
        """
        changed = self._changedHelpers(plugins)
        for fullname in changed:
            module = sys.modules[fullname]
            path = module.__file__ or ""
            try:
                self._scratch(fullname, path)
                self._rebuild(module, path)
            except PluginLoadError as e:
                raise HelperLoadError(os.path.basename(path), str(e)) from None
            log.info("Helper module {module} reloaded", module=fullname)
        return changed

    def _changedHelpers(self, plugins: Collection[str]) -> list[str]:
        """
        The helper modules whose source changed since they ran, sorted.
        """
        changed = []
        for fullname in self.hashes.names():
            module = sys.modules.get(fullname)
            if fullname in plugins or module is None:
                continue
            path = getattr(module, "__file__", None)
            if path is not None and self.hashes.changed(fullname, path, unreadable=False):
                changed.append(fullname)
        return sorted(changed)

    def check(self, stem: str) -> type[Plugin]:
        """
        Run C{stem}'s current source in a scratch module and return its
        plugin class, making nothing live; raises L{PluginLoadError}.
        Synchronous, for C{--check}, which runs with no reactor; the module
        body still runs in a thread of its own (see L{_callInThread}).
        """
        scratch, _ = _callInThread(self._scratch, self.fullname(stem), self.path(stem))
        return plugin_class(scratch)

    # -- running a module's body ----------------------------------------------

    def _scratch(self, fullname: str, path: str) -> tuple[types.ModuleType, str]:
        """
        Compile and run the current source of C{path} in a fresh module that
        nothing else sees; return it and the hash of its source.  Raises
        L{PluginLoadError} naming file and line, whatever the module body
        raised (C{sys.exit()} included).  Runs in the import thread.
        """
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as e:
            raise PluginLoadError(f"cannot read {path}: {e.strerror}") from None
        module = types.ModuleType(fullname)
        module.__file__ = path
        module.__package__ = fullname.rpartition(".")[0]
        module.__loader__ = _NoCacheLoader(fullname, path, self.hashes)
        module.__spec__ = importlib.util.spec_from_file_location(
            fullname, path, loader=module.__loader__
        )
        try:
            code = compile(source, path, "exec", dont_inherit=True)
            exec(code, module.__dict__)
        except BaseException as e:
            # Plugin code: SystemExit, KeyboardInterrupt and the like fail
            # this plugin, not the server.  (No signal reaches this code:
            # it runs in a thread, and signals go to the main thread.)
            raise PluginLoadError(describe_error(e, path)) from None
        return module, self.hashes.of(source)

    def _rebuild(self, module: types.ModuleType, path: str) -> None:
        """
        Run C{module}'s current source again in its own namespace (rebuild:
        classes and instances are moved to the new code).  Raises
        L{PluginLoadError}.  Runs in the import thread.
        """
        try:
            rebuild(module, doLog=0)
        except (dataclasses.FrozenInstanceError, attr.exceptions.FrozenInstanceError) as e:
            # The module was reloaded; rebuild then failed to move an
            # instance of a frozen class (a module-level frozen dataclass or
            # attrs value) to the new class.  Old instances keep their old
            # class, which the registry does not need: it makes a new one.
            log.warn(
                "Reloaded {module}; old instances of a frozen class keep the old code ({error})",
                module=module.__name__,
                error=f"{type(e).__name__}: {e}",
            )
        except BaseException as e:
            # The module body runs again inside rebuild: whatever it raises
            # (sys.exit() included) fails this plugin alone.
            raise PluginLoadError(describe_error(e, path)) from None
        finally:
            # rebuild leaves ALLOW_DUPLICATES on when it raises.
            components.ALLOW_DUPLICATES = False

    def close(self) -> None:
        """
        Forget the synthetic package and its modules, and stop the import
        thread made here.  Idempotent.
        """
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        for fullname in [
            m for m in sys.modules if m == self.package or m.startswith(self.package + ".")
        ]:
            del sys.modules[fullname]
        self.hashes.clear()
        pool, self._threadpool = self._threadpool, None
        if pool is not None and self._ownsThreadpool and not pool.working:
            # Idle (close runs with the caller's lock held, or with nothing
            # loaded): stopping joins its thread at once.  A busy one is a
            # module body that never returned; its thread is a daemon, left
            # alone.
            pool.stop()
