# -*- test-case-name: tests.test_registry -*-
"""
Discover, load, reload and stop plugin modules.

Each plugin file in the plugins directory is imported as a submodule of a
synthetic package whose C{__path__} is that directory, so that
C{importlib.reload} (and so L{twisted.python.rebuild}) can find it again and
plugins can share helper modules through relative imports
(C{from ._util import x}; files whose name starts with C{_} are helpers, not
routes).

A reload is atomic against broken code: the new source is compiled and run in
a scratch module first, so a syntax error or an exception while the module
body runs leaves the live module and the serving instance untouched.  Only
then is the live module rebuilt and a new instance constructed and started;
it replaces the old one, whose C{stop()} runs after the swap.  Each
successful load is a new numbered generation.

Module bodies (a plugin's, a helper's; scratch run and rebuild alike) run in
the registry's import thread, never on the reactor thread: a module that
takes seconds to import does not hold up the requests of other plugins.
Everything after that (constructing, starting, swapping, stopping) runs on
the reactor thread.  Loads are serialised by one lock; requests are not.

Whatever a plugin raises (any L{BaseException}: C{sys.exit()},
C{KeyboardInterrupt}, ...) in its module body, C{__init__}, C{start()} or
C{stop()} fails that plugin alone.

The registry knows nothing of HTTP: it hands out L{LoadedPlugin}s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.abc
import importlib.util
import keyword
import os
import re
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar

import attr
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python import components
from twisted.python.failure import Failure
from twisted.python.rebuild import rebuild
from twisted.python.threadpool import ThreadPool

from pluginserver.plugin import Plugin

RESERVED_NAMES = frozenset({"plugins", "reload", "metrics", "health"})
"""Route names the server keeps for itself."""

_ROUTE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

log = Logger()

_T = TypeVar("_T")

DIRECTORY_KEY = "plugins directory"
"""The key of C{/reload/all}'s C{failed} when the directory cannot be read."""


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


class DirectoryError(PluginLoadError):
    """
    The plugins directory cannot be listed (removed, not a directory, not
    readable); the message names it and the reason.  Nothing was loaded or
    unloaded: the plugins already loaded keep serving.
    """


@attr.s(auto_attribs=True, frozen=True, eq=False)
class LoadedPlugin:
    """
    One generation of one plugin: the instance serving its route, and where
    it came from.  C{handle} is bound when the generation is made, so that
    requests keep running this generation's code even after a rebuild has
    replaced the class of the instance.
    """

    name: str
    stem: str
    module: str
    file: str
    generation: int
    loaded_at: float
    instance: Plugin
    params: Mapping[str, Any]
    handle: Callable[..., Any]
    stop: Callable[[], Any]
    methods: frozenset[str]
    blocking: bool
    source_hash: str
    auth_mode: str = "global"
    own_key: str | None = None

    @property
    def auth(self) -> str:
        """
        The plugin's auth mode from its params: C{global}, C{plugin} or
        C{none}; C{global} when not given.
        """
        return self.auth_mode

    def describe(self) -> dict[str, Any]:
        """
        A JSON-ready description, as C{/plugins} shows it.
        """
        return {
            "route": "/" + self.name,
            "module": self.module,
            "file": self.file,
            "generation": self.generation,
            "loaded_at": self.loaded_at,
            "auth": self.auth,
        }


@attr.s(auto_attribs=True, frozen=True)
class ReloadOutcome:
    """
    The result of reloading one plugin.  On failure C{generation} is the one
    still serving (L{None} when none is).
    """

    name: str
    success: bool
    generation: int | None
    error: str | None = None


@attr.s(auto_attribs=True, frozen=True)
class ReloadReport:
    """
    The result of reloading the whole directory.
    """

    loaded: list[str]
    added: list[str]
    removed: list[str]
    failed: dict[str, str]


class _NoCacheLoader(importlib.abc.SourceLoader):
    """
    Load plugin source without bytecode caching: a same-size edit within the
    same second would otherwise be served from a stale C{.pyc}.  It records
    the hash of every source it runs so the registry can tell what changed.
    """

    def __init__(self, fullname: str, path: str, seen: dict[str, str]) -> None:
        self._fullname = fullname
        self._path = path
        self._seen = seen

    def get_filename(self, fullname: str) -> str:
        return self._path

    def get_data(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def get_code(self, fullname: str) -> types.CodeType:
        source = self.get_data(self._path)
        self._seen[fullname] = _hash(source)
        return compile(source, self._path, "exec", dont_inherit=True)


class _PluginFinder(importlib.abc.MetaPathFinder):
    """
    Find the modules of one synthetic package in its directory, and only
    there.
    """

    def __init__(self, package: str, directory: str, seen: dict[str, str]) -> None:
        self.package = package
        self.directory = directory
        self._seen = seen

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
                fullname, base + ".py", loader=_NoCacheLoader(fullname, base + ".py", self._seen)
            )
        init = os.path.join(base, "__init__.py")
        if os.path.isfile(init):
            return importlib.util.spec_from_file_location(
                fullname,
                init,
                loader=_NoCacheLoader(fullname, init, self._seen),
                submodule_search_locations=[base],
            )
        return None


def _hash(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()


def _describe_error(exc: BaseException, path: str, tb: types.TracebackType | None = None) -> str:
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


def _describe_failure(failure: Failure, path: str) -> str:
    """
    L{_describe_error} for an exception a Deferred failed with.
    """
    if failure.value is None:
        return failure.getErrorMessage()
    return _describe_error(failure.value, path, failure.getTracebackObject())


def _plugin_class(module: types.ModuleType) -> type[Plugin]:
    """
    The one concrete L{Plugin} subclass a plugin module defines.
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


def _maybe_async(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """
    Call C{f}; whether it returns a value, a Deferred or a coroutine, or
    raises, give back a Deferred.
    """
    try:
        result = f(*args)
    except BaseException:
        return defer.fail()
    if isinstance(result, types.CoroutineType):
        return defer.Deferred.fromCoroutine(result)
    return defer.maybeDeferred(lambda: result)


@attr.s(auto_attribs=True, frozen=True)
class _Failed:
    """
    A plugin call's failure, carried as a value (see L{_settled}).
    """

    failure: Failure


def _settled(d: defer.Deferred[Any]) -> defer.Deferred[_Failed | None]:
    """
    Fire with L{None} when C{d} succeeds and with a L{_Failed} when it fails,
    never failing itself.

    A plugin's C{start()} or C{stop()} may fail with any L{BaseException}
    (C{SystemExit}, C{KeyboardInterrupt}, ...).  Yielded as a failure,
    inlineCallbacks would throw it into the registry's own generators, where
    only a C{except BaseException} would stop it, and that would also swallow
    the C{GeneratorExit} of a generator being closed.  As a value it never
    unwinds the registry's code.
    """
    return d.addCallbacks(lambda _: None, _Failed)


class _ImportThreadPool(ThreadPool):
    """
    The registry's import thread: compiling, running and rebuilding plugin
    modules happens here, off the reactor thread.  Its thread is a daemon:
    a module body that never returns must not keep the process alive after
    the reactor has stopped.
    """

    def threadFactory(self, *args: Any, **kwargs: Any) -> threading.Thread:  # type: ignore[override]
        return threading.Thread(*args, daemon=True, **kwargs)


def _callInThread(f: Callable[..., _T], *args: Any) -> _T:
    """
    Call C{f} in a new thread and wait for it (for L{PluginRegistry.check_all},
    which runs with no reactor).

    Why a thread at all: a plugin's module body may raise
    C{KeyboardInterrupt} itself, and the registry reports that as the
    plugin's failure; a real Ctrl-C must still stop the command.  Signals are
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


@attr.s(auto_attribs=True, frozen=True)
class _Prepared:
    """
    What the import thread made of a plugin's source: the module to serve
    (the scratch module itself on a first load, which is not live yet; the
    rebuilt live module on a reload), the name of its plugin class and the
    hash of its source.
    """

    module: types.ModuleType
    className: str
    digest: str
    first: bool


@attr.s(auto_attribs=True)
class _Attempt:
    """
    How far the import thread got with one load: whether it started
    rebuilding the live module (so a failure must put its globals back).
    """

    rebuilt: bool = False


class PluginRegistry:
    """
    The plugins of one directory, by route name.

    @ivar directory: the plugins directory.

    @param observe: called with a plugin's name and C{True} or C{False} after
        each load or reload of it succeeds or fails (for metrics).
    @param start_timeout: seconds a plugin's start() or stop() may take.
    @param reactor: the reactor whose thread runs everything but module
        bodies.
    @param threadpool: a started thread pool to run module bodies in; by
        default the registry makes its own, of one thread, on first use and
        stops it in L{close}.
    """

    def __init__(
        self,
        directory: str,
        params: Mapping[str, Mapping[str, Any]],
        config: Any = None,
        package: str = "pluginserver_plugins",
        clock: Callable[[], float] = time.time,
        observe: Callable[[str, bool], None] | None = None,
        start_timeout: float = 30.0,
        reactor: Any = None,
        threadpool: ThreadPool | None = None,
    ) -> None:
        if package in sys.modules:
            raise ValueError(f"module name {package!r} is already in use")
        self.directory = os.path.abspath(directory)
        self._params = params
        self._config = config
        self._package = package
        self._clock = clock
        self._observe = observe or (lambda name, success: None)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._threadpool = threadpool
        self._ownsThreadpool = threadpool is None
        self.start_timeout = start_timeout
        self._seen: dict[str, str] = {}
        self._byName: dict[str, LoadedPlugin] = {}
        self._lock = defer.DeferredLock()
        self._finder = _PluginFinder(package, self.directory, self._seen)
        pkg = types.ModuleType(package, f"pluginserver plugins from {self.directory}")
        pkg.__path__ = [self.directory]
        pkg.__spec__ = importlib.machinery.ModuleSpec(package, None, is_package=True)
        pkg.__spec__.submodule_search_locations = [self.directory]
        sys.modules[package] = pkg
        sys.meta_path.insert(0, self._finder)

    # -- lookups (hot path) ---------------------------------------------

    def get(self, name: str) -> LoadedPlugin | None:
        """
        The generation serving C{name}, or L{None}.
        """
        return self._byName.get(name)

    @property
    def plugins(self) -> Mapping[str, LoadedPlugin]:
        """
        Every serving plugin by route name (a read-only view).
        """
        return types.MappingProxyType(self._byName)

    # -- the import thread -------------------------------------------------

    def _inThread(self, f: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        """
        Run C{f} in the import thread; fire on the reactor thread with its
        result.  Only called with the lock held, so one load at a time uses
        it (and with the default pool of one thread, two rebuilds could not
        overlap anyway).
        """
        if self._threadpool is None:
            self._threadpool = _ImportThreadPool(
                minthreads=0, maxthreads=1, name=f"pluginserver-import {self._package}"
            )
            self._ownsThreadpool = True
            self._threadpool.start()
        return threads.deferToThreadPool(self._reactor, self._threadpool, f, *args)

    # -- discovery -------------------------------------------------------

    def _listDirectory(self) -> list[str]:
        """
        The names in the plugins directory; L{DirectoryError} when it cannot
        be listed.
        """
        try:
            return os.listdir(self.directory)
        except OSError as e:
            raise DirectoryError(f"{self.directory}: {e.strerror or e}") from None

    def discover(self) -> list[str]:
        """
        The stems of the plugin files in the directory, sorted; files that
        cannot be plugins are logged and left out.  Raises L{DirectoryError}
        when the directory cannot be listed.
        """
        stems = []
        for entry in sorted(self._listDirectory()):
            if not entry.endswith(".py"):
                continue
            stem = entry[:-3]
            if stem.startswith("_"):
                continue  # helper module, imported by plugins
            if not stem.isidentifier() or keyword.iskeyword(stem):
                log.error(
                    "Plugin file {file} refused: its name must be a Python identifier",
                    file=os.path.join(self.directory, entry),
                )
                continue
            if stem in RESERVED_NAMES:
                log.error(
                    "Plugin file {file} refused: {name!r} is a reserved route name",
                    file=os.path.join(self.directory, entry),
                    name=stem,
                )
                continue
            stems.append(stem)
        return stems

    def _byStem(self, stem: str) -> LoadedPlugin | None:
        for loaded in self._byName.values():
            if loaded.stem == stem:
                return loaded
        return None

    # -- loading ---------------------------------------------------------

    def _fullname(self, stem: str) -> str:
        return f"{self._package}.{stem}"

    def _path(self, stem: str) -> str:
        return os.path.join(self.directory, stem + ".py")

    def _scratch(self, fullname: str, path: str) -> tuple[types.ModuleType, str]:
        """
        Compile and run the current source of C{path} in a fresh module that
        nothing else sees.  Raises L{PluginLoadError} naming file and line,
        whatever the module body raised (C{sys.exit()} included).  Runs in
        the import thread.
        """
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as e:
            raise PluginLoadError(f"cannot read {path}: {e.strerror}") from None
        module = types.ModuleType(fullname)
        module.__file__ = path
        module.__package__ = fullname.rpartition(".")[0]
        module.__loader__ = _NoCacheLoader(fullname, path, self._seen)
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
            raise PluginLoadError(_describe_error(e, path)) from None
        return module, _hash(source)

    def _changedHelpers(self) -> list[str]:
        """
        The helper modules (imported by plugins from the plugins directory,
        not plugins themselves) whose source changed since they ran.
        """
        plugins = {self._fullname(p.stem) for p in self._byName.values()}
        changed = []
        for fullname, digest in list(self._seen.items()):
            if fullname in plugins or fullname not in sys.modules:
                continue
            path = getattr(sys.modules[fullname], "__file__", None)
            if path is None:
                continue
            try:
                with open(path, "rb") as f:
                    current = _hash(f.read())
            except OSError:
                continue
            if current != digest:
                changed.append(fullname)
        return sorted(changed)

    def _refreshHelpers(self) -> list[str]:
        """
        Rebuild every changed helper module, each checked in a scratch
        module first.  Returns their names.  Runs in the import thread (see
        L{_prepare} for what the plugins using a helper may observe while it
        is rebuilt).
        """
        changed = self._changedHelpers()
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

    def _rebuild(self, module: types.ModuleType, path: str) -> None:
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
            raise PluginLoadError(_describe_error(e, path)) from None
        finally:
            # rebuild leaves ALLOW_DUPLICATES on when it raises.
            components.ALLOW_DUPLICATES = False

    def _prepare(
        self,
        stem: str,
        live: types.ModuleType | None,
        serving: Plugin | None,
        servingClass: type | None,
        attempt: _Attempt,
    ) -> _Prepared:
        """
        Bring C{stem}'s source up to date, in the import thread: compile and
        run it in a scratch module and, on a reload, rebuild the C{live}
        module.  Raises L{PluginLoadError}.

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
        except for the moment between rebuild moving C{serving} to the new
        class and the C{finally} below moving it back (rebuild's last
        step, a walk over every loaded module, comes in between).

        A known limit of running rebuild off the reactor thread: that walk
        iterates over every module's namespace; one that gains a name on
        the reactor thread at that very moment (a first import inside a
        request) makes it fail with C{RuntimeError}, which fails this load
        like any other error (the old generation keeps serving; reload
        again).
        """
        fullname = self._fullname(stem)
        path = self._path(stem)
        scratch, digest = self._scratch(fullname, path)
        # Refuse a module without a plugin before it goes live.  The class
        # is found by its name in the new source: a reloaded module keeps
        # the names the new source no longer defines.
        className = _plugin_class(scratch).__name__
        if live is None:
            # First load: the checked scratch module becomes the live one
            # (on the reactor thread, in _load), so the body runs once.
            return _Prepared(scratch, className, digest, first=True)
        attempt.rebuilt = True
        try:
            self._rebuild(live, path)
        finally:
            if serving is not None and servingClass is not None:
                # rebuild moved the serving instance to the new class; it
                # must keep running its own code until it is replaced.
                serving.__class__ = servingClass
        return _Prepared(live, className, self._seen.get(fullname, digest), first=False)

    def _restore(
        self,
        stem: str,
        live: types.ModuleType | None,
        saved: tuple[dict[str, Any], str | None, type | None] | None,
        previous: LoadedPlugin | None,
        rebuilt: bool = True,
    ) -> None:
        """
        Undo what a failed load did to the live module, so the generation
        still serving runs exactly as before.  On the reactor thread: the
        namespace is emptied and refilled, which no request may see halfway.
        When the load failed before the rebuild (C{rebuilt} false: a syntax
        error, an exception in the scratch run), the namespace is left as it
        is, with whatever the serving generation changed in it meanwhile.
        """
        fullname = self._fullname(stem)
        if live is None or saved is None:
            # A failed first load: forget the module, the next try starts
            # afresh.
            sys.modules.pop(fullname, None)
            self._seen.pop(fullname, None)
            package = sys.modules.get(self._package)
            if package is not None and hasattr(package, stem):
                delattr(package, stem)
            return
        namespace, digest, oldClass = saved
        if rebuilt:
            live.__dict__.clear()
            live.__dict__.update(namespace)
        if digest is not None:
            self._seen[fullname] = digest
        if previous is not None and oldClass is not None:
            previous.instance.__class__ = oldClass

    def _bounded(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """
        C{d}, cancelled after C{start_timeout} seconds: a plugin whose start()
        or stop() never finishes must not hold every later reload (and the
        shutdown) behind it.
        """
        return d.addTimeout(self.start_timeout, self._reactor)

    def _paramsFor(self, stem: str, name: str) -> Mapping[str, Any]:
        return self._params.get(name) or self._params.get(stem) or {}

    @defer.inlineCallbacks
    def _load(self, stem: str) -> Generator[defer.Deferred[Any], Any, LoadedPlugin]:
        """
        Load or reload C{stem}: a new generation, started and swapped in,
        or L{PluginLoadError} with the old generation untouched.  The module
        body runs in the import thread (L{_prepare}); everything after it
        runs here, on the reactor thread.
        """
        previous = self._byStem(stem)
        fullname = self._fullname(stem)
        path = self._path(stem)
        live = sys.modules.get(fullname)
        # What a failure after the rebuild must put back: the live module's
        # globals (the old generation's code reads them) and the class of
        # the old instance (rebuild moves instances to the new class).
        servingClass = previous.instance.__class__ if previous is not None else None
        saved = (
            (dict(live.__dict__), self._seen.get(fullname), servingClass)
            if live is not None
            else None
        )
        attempt = _Attempt()
        try:
            prepared: _Prepared = yield self._inThread(
                self._prepare,
                stem,
                live,
                previous.instance if previous is not None else None,
                servingClass,
                attempt,
            )
            module = prepared.module
            if prepared.first:
                sys.modules[fullname] = module
                setattr(sys.modules[self._package], stem, module)
                self._seen[fullname] = prepared.digest
            cls = getattr(module, prepared.className, None)
            if not (isinstance(cls, type) and issubclass(cls, Plugin)):
                raise PluginLoadError(
                    f"{prepared.className} is no longer a Plugin subclass after reload"
                )
            name = cls.name if isinstance(cls.name, str) and cls.name else stem
            if not _ROUTE_NAME.match(name) or name in RESERVED_NAMES:
                raise PluginLoadError(
                    f"route name {name!r} is reserved or not a valid path segment"
                )
            other = self._byName.get(name)
            if other is not None and other.stem != stem:
                raise PluginLoadError(f"route /{name} is already served by {other.file}")
            params = self._paramsFor(stem, name)
            try:
                instance = cls(name, params, self._config)
            except BaseException as e:
                # Plugin code on the reactor thread: Twisted's SIGINT and
                # SIGTERM handlers never raise into it, so anything caught
                # here was raised by the plugin itself.
                raise PluginLoadError(_describe_error(e, path)) from None
            started = yield _settled(self._bounded(_maybe_async(instance.start)))
            if started is not None:
                if started.failure.check(defer.TimeoutError):
                    raise PluginLoadError(f"start() did not finish within {self.start_timeout:g} s")
                raise PluginLoadError("start() failed: " + _describe_failure(started.failure, path))
        except PluginLoadError:
            self._restore(stem, live, saved, previous, attempt.rebuilt)
            raise
        methods = {m.upper() for m in cls.methods}
        if "GET" in methods:
            methods.add("HEAD")
        loaded = LoadedPlugin(
            name=name,
            stem=stem,
            module=module.__name__,
            file=path,
            generation=(previous.generation + 1) if previous else 1,
            loaded_at=self._clock(),
            instance=instance,
            params=params,
            handle=instance.handle,
            stop=instance.stop,
            methods=frozenset(methods),
            blocking=bool(cls.blocking),
            source_hash=prepared.digest,
            auth_mode=str(params.get("auth", "global")),
            own_key=(str(params.get("apikey") or "") or None)
            if params.get("auth") == "plugin"
            else None,
        )
        if previous is not None and previous.name != name:
            del self._byName[previous.name]
        self._byName[name] = loaded
        self._observe(name, True)
        log.info(
            "Plugin {plugin} generation {generation} loaded from {file}",
            plugin=name,
            generation=loaded.generation,
            file=loaded.file,
        )
        if previous is not None:
            # Never fails: the new generation serves whatever the old one's
            # stop() does.
            yield self._stopOne(previous)
        return loaded

    @defer.inlineCallbacks
    def _stopOne(self, loaded: LoadedPlugin) -> Generator[defer.Deferred[Any], Any, None]:
        """
        Call C{loaded}'s C{stop()}; log, never raise, whatever it does
        (any L{BaseException}, or not finishing in time), so that a swap
        still succeeds and the other plugins are still stopped.
        """
        stopped = yield _settled(self._bounded(_maybe_async(loaded.stop)))
        if stopped is None:
            return
        if stopped.failure.check(defer.TimeoutError):
            log.error(
                "Plugin {plugin} generation {generation}: stop() did not finish within {timeout} s",
                plugin=loaded.name,
                generation=loaded.generation,
                timeout=self.start_timeout,
            )
        else:
            log.failure(
                "Plugin {plugin} generation {generation}: stop() failed",
                stopped.failure,
                plugin=loaded.name,
                generation=loaded.generation,
            )

    @defer.inlineCallbacks
    def _unload(self, loaded: LoadedPlugin) -> Generator[defer.Deferred[Any], Any, None]:
        del self._byName[loaded.name]
        fullname = self._fullname(loaded.stem)
        sys.modules.pop(fullname, None)
        self._seen.pop(fullname, None)
        pkg = sys.modules.get(self._package)
        if pkg is not None and hasattr(pkg, loaded.stem):
            delattr(pkg, loaded.stem)
        log.info(
            "Plugin {plugin} generation {generation} removed",
            plugin=loaded.name,
            generation=loaded.generation,
        )
        yield self._stopOne(loaded)

    def _failed(self, stem: str, error: str) -> str:
        current = self._byStem(stem)
        self._observe(current.name if current else stem, False)
        log.error(
            "Plugin {plugin} failed to load from {file}: {error}; "
            "generation {generation} keeps serving",
            plugin=current.name if current else stem,
            file=self._path(stem),
            error=error,
            generation=current.generation if current else None,
        )
        return error

    # -- public operations -------------------------------------------------

    def reload(self, name: str) -> defer.Deferred[ReloadOutcome]:
        """
        Reload one plugin (by route name or file stem) from its file, and any
        helper module that changed.  Fires with a L{ReloadOutcome}; fails
        with L{KeyError} when there is no such plugin.  When the plugins
        directory cannot be read, a loaded plugin keeps serving (it is not
        unloaded) and the outcome says why it was not reloaded.
        """
        return self._lock.run(self._reloadOne, name)

    @defer.inlineCallbacks
    def _reloadOne(self, name: str) -> Generator[defer.Deferred[Any], Any, ReloadOutcome]:
        current = self._byName.get(name) or self._byStem(name)
        stem = current.stem if current else name
        try:
            if current is None:
                if stem not in self.discover() or not os.path.isfile(self._path(stem)):
                    raise KeyError(name)
            else:
                self._listDirectory()
        except DirectoryError as e:
            if current is None:
                raise KeyError(name) from None
            error = self._failed(stem, f"{DIRECTORY_KEY} {e}")
            return ReloadOutcome(current.name, False, current.generation, error)
        if current is not None and not os.path.isfile(self._path(stem)):
            yield self._unload(current)
            return ReloadOutcome(current.name, False, None, "plugin file was removed")
        try:
            yield self._inThread(self._refreshHelpers)
            loaded: LoadedPlugin = yield self._load(stem)
        except PluginLoadError as e:
            self._failed(stem, str(e))
            return ReloadOutcome(
                current.name if current else name,
                False,
                current.generation if current else None,
                str(e),
            )
        return ReloadOutcome(loaded.name, True, loaded.generation)

    def reload_all(
        self,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        config: Any = None,
        everything: bool = False,
    ) -> defer.Deferred[ReloadReport]:
        """
        Bring the registry in line with the directory (and, when given, new
        params and config): reload changed plugins (every plugin, when
        C{everything}), load new files, unload removed ones.  One failure
        does not stop the others.  When the directory cannot be read,
        nothing changes and C{failed} says so under L{DIRECTORY_KEY}.
        """
        return self._lock.run(self._reloadAll, params, config, everything)

    @defer.inlineCallbacks
    def _reloadAll(
        self,
        params: Mapping[str, Mapping[str, Any]] | None,
        config: Any,
        everything: bool = False,
    ) -> Generator[defer.Deferred[Any], Any, ReloadReport]:
        oldParams = self._params
        configChanged = everything or (config is not None and config != self._config)
        if params is not None:
            self._params = params
        if config is not None:
            self._config = config
        failed: dict[str, str] = {}
        try:
            stems = self.discover()
        except DirectoryError as e:
            # Removed (rm -rf), replaced or unreadable: that is not a reason
            # to unload every plugin.  They keep serving; the answer says
            # why nothing was reloaded.
            log.error(
                "Plugins directory cannot be read, every plugin keeps serving: {error}",
                error=str(e),
            )
            failed[DIRECTORY_KEY] = str(e)
            return ReloadReport(sorted(self._byName), [], [], failed)
        added: list[str] = []
        removed: list[str] = []
        for loaded in list(self._byName.values()):
            if loaded.stem not in stems:
                yield self._unload(loaded)
                removed.append(loaded.name)
        try:
            changedHelpers: list[str] = yield self._inThread(self._refreshHelpers)
            helpersChanged = bool(changedHelpers)
        except HelperLoadError as e:
            # Plugins keep serving their current generation; new and changed
            # plugin files are still tried below.
            failed[e.helper] = str(e)
            log.error("{error}", error=str(e))
            helpersChanged = False
        for stem in stems:
            current = self._byStem(stem)
            if current is not None and not self._needsReload(
                current, oldParams, helpersChanged or configChanged
            ):
                continue
            try:
                loaded = yield self._load(stem)
            except PluginLoadError as e:
                failed[current.name if current else stem] = self._failed(stem, str(e))
                continue
            if current is None:
                added.append(loaded.name)
        return ReloadReport(sorted(self._byName), added, removed, failed)

    def _needsReload(
        self,
        current: LoadedPlugin,
        oldParams: Mapping[str, Mapping[str, Any]],
        force: bool,
    ) -> bool:
        if force:  # a helper module or the configuration changed
            return True
        if self._paramsFor(current.stem, current.name) != current.params:
            return True
        try:
            with open(current.file, "rb") as f:
                return _hash(f.read()) != current.source_hash
        except OSError:
            return True

    def check_all(self) -> dict[str, tuple[str | None, str | None]]:
        """
        Compile and run every plugin file in a scratch module, as a load
        would, without making anything live or starting anything.  Maps
        each plugin's stem to its route name and its error (L{None} when it
        would load).  Synchronous (C{--check} runs with no reactor); each
        module body still runs in a thread of its own (see L{_callInThread}).
        Raises L{DirectoryError} when the directory cannot be listed.
        """
        results: dict[str, tuple[str | None, str | None]] = {}
        for stem in self.discover():
            try:
                scratch, _ = _callInThread(self._scratch, self._fullname(stem), self._path(stem))
                cls = _plugin_class(scratch)
            except PluginLoadError as e:
                results[stem] = (None, str(e))
                continue
            name = cls.name if isinstance(cls.name, str) and cls.name else stem
            if not _ROUTE_NAME.match(name) or name in RESERVED_NAMES:
                error = f"route name {name!r} is reserved or not a valid path segment"
                results[stem] = (name, error)
            else:
                results[stem] = (name, None)
        return results

    def params_for(self, stem: str, name: str) -> Mapping[str, Any]:
        """
        The params of the plugin in C{stem}.py serving C{name}.
        """
        return self._paramsFor(stem, name)

    def load_all(self) -> defer.Deferred[ReloadReport]:
        """
        Load every plugin in the directory (the first load).
        """
        return self.reload_all()

    def stop_all(self) -> defer.Deferred[None]:
        """
        Stop and unload every plugin, and take the synthetic package out of
        the import system.  Every plugin's stop() runs, whatever the others'
        do.
        """
        return self._lock.run(self._stopAll)

    @defer.inlineCallbacks
    def _stopAll(self) -> Generator[defer.Deferred[Any], Any, None]:
        for loaded in list(self._byName.values()):
            yield self._unload(loaded)
        self.close()

    def close(self) -> None:
        """
        Forget the synthetic package and its modules, and stop the import
        thread the registry made.  Idempotent.
        """
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        for fullname in [
            m for m in sys.modules if m == self._package or m.startswith(self._package + ".")
        ]:
            del sys.modules[fullname]
        self._seen.clear()
        pool, self._threadpool = self._threadpool, None
        if pool is not None and self._ownsThreadpool and not pool.working:
            # Idle (close runs with the lock held, or with nothing loaded):
            # stopping joins its thread at once.  A busy one is a module
            # body that never returned; its thread is a daemon, left alone.
            pool.stop()
