# -*- test-case-name: tests.test_registry -*-
"""
The route table of one plugins directory: which generation of which plugin
serves each route, and the lifecycle of their instances.

Each plugin file in the plugins directory is a module (files whose name
starts with C{_} are helpers, imported by plugins, not routes); its one
L{Plugin} subclass serves the route named by its C{name} attribute, or else
by the file's stem (unless the class names another once made: the one hook
for that is L{Plugin.construct}, which the registry calls to make every
instance).  The modules themselves (finding, running, rebuilding,
restoring them, and the import thread their bodies run in) are
L{pluginserver.modules}'s.

A load is a short sequence of steps (L{PluginRegistry._load}): prepare the
module (its source is run in a scratch module first, so a syntax error or an
exception while the module body runs leaves the live module and the serving
instance untouched), make the instance, start it, swap it in, stop the old
one.  Each successful load is a new numbered generation; a failed one puts
the live module back as it was.  The module body runs in the import thread;
everything else runs on the reactor thread.  Loads are serialised by one
lock; requests are not.

A reload may also be made in two steps (L{PluginRegistry.prepare_reload},
then L{PluginRegistry.commit_reload} or L{PluginRegistry.abort_reload}):
every new source runs in a scratch module first, nothing that serves
changing, and the swaps come only at the commit.  Worker processes use it
(L{pluginserver.workers}) so that a reload swaps in every worker or in none.

Whatever a plugin raises (any L{BaseException}: C{sys.exit()},
C{KeyboardInterrupt}, ...) in its module body, C{__init__}, C{start()} or
C{stop()} fails that plugin alone.

The registry knows nothing of HTTP: it hands out L{LoadedPlugin}s.
"""

from __future__ import annotations

import keyword
import os
import time
import types
from collections.abc import Callable, Generator, Mapping
from typing import Any

import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from pluginserver import coroutines
from pluginserver.config import RESERVED_ROUTES, ROUTE_NAME
from pluginserver.declared import Declared, check_declaration
from pluginserver.keys import KeySet, as_keys
from pluginserver.modules import (
    HelperLoadError,
    PluginLoadError,
    PluginModules,
    Tried,
    describe_error,
    describe_failure,
)
from pluginserver.plugin import Plugin, stop_background

__all__ = [
    "DIRECTORY_KEY",
    "RESERVED_NAMES",
    "DirectoryError",
    "HelperLoadError",
    "LoadedPlugin",
    "PendingReload",
    "PluginLoadError",
    "PluginRegistry",
    "ReloadOutcome",
    "ReloadReport",
    "route_name",
    "route_name_error",
]

RESERVED_NAMES = RESERVED_ROUTES
"""Route names the server keeps for itself (declared with the configuration,
which refuses them as documents routes too)."""

_ROUTE_NAME = ROUTE_NAME

log = Logger()

DIRECTORY_KEY = "plugins directory"
"""The key of C{/reload/all}'s C{failed} when the directory cannot be read."""


def route_name(cls: type[Plugin], stem: str) -> str:
    """
    The route a plugin class serves: its C{name} attribute, or else the stem
    of the file it came from (unless its L{Plugin.construct} names another).
    """
    return cls.name if isinstance(cls.name, str) and cls.name else stem


def route_name_error(name: str) -> str | None:
    """
    The route-name rule: why C{name} cannot be a plugin's route (the server
    keeps it for itself, or it is not one path segment), or L{None} when it
    can.
    """
    if name in RESERVED_NAMES or not _ROUTE_NAME.match(name):
        return f"route name {name!r} is reserved or not a valid path segment"
    return None


def _declaration(cls: type[Plugin]) -> Declared | None:
    """
    C{cls}'s C{args} declaration, checked before the plugin is made or
    started, so that a wrong one fails the load (reported by C{/reload}
    and C{--check}) rather than the first request; L{None} when it declares
    none, so that requests to it pay nothing.
    """
    args = getattr(cls, "args", None)
    if args is None:
        return None
    try:
        return check_declaration(args)
    except ValueError as e:
        raise PluginLoadError(f"args: {e}") from None


class DirectoryError(PluginLoadError):
    """
    The plugins directory cannot be listed (removed, not a directory, not
    readable); the message names it and the reason.  Nothing was loaded or
    unloaded: the plugins already loaded keep serving.
    """


# Slots: read on every request (see SecurityPolicy's note).
@attr.s(auto_attribs=True, frozen=True, eq=False, slots=True)
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
    own_key: KeySet | None = None
    declared: Declared | None = None
    """The plugin's checked C{args} declaration; L{None} when it has none."""

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


@attr.s(auto_attribs=True, eq=False)
class PendingReload:
    """
    A reload split in two (L{PluginRegistry.prepare_reload}, then
    L{PluginRegistry.commit_reload} or L{PluginRegistry.abort_reload}), so
    that several processes can each prepare it before any of them swaps:
    once prepared, every new source has run in a scratch module and
    nothing that serves has changed.  The registry's lock is held from the
    prepare to the commit or abort.

    @ivar name: the plugin asked for (route name or file stem), or L{None}
        for the whole directory.
    @ivar tried: the plugin files to load or reload at commit, by stem,
        each with its source as run in a scratch module.
    @ivar current: the generation serving each of those stems now
        (L{None}: none), so that the caller may number the next one.
    @ivar removed: the plugins to unload at commit (their file is gone).
    @ivar failed: what will not be (re)loaded, by plugin name (or helper
        file, or L{DIRECTORY_KEY}), with its error; it keeps its state.
    @ivar outcome: for one plugin, the outcome already known when nothing
        is to be done at commit (the directory could not be read, or its
        source failed).
    """

    name: str | None
    everything: bool
    params: tuple[Mapping[str, Mapping[str, Any]], Any]
    tried: dict[str, Tried] = attr.ib(factory=dict)
    current: dict[str, int | None] = attr.ib(factory=dict)
    removed: list[LoadedPlugin] = attr.ib(factory=list)
    failed: dict[str, str] = attr.ib(factory=dict)
    outcome: ReloadOutcome | None = None
    prepared: bool = False
    aborted: bool = False
    locked: bool = False

    @property
    def ready(self) -> bool:
        """
        Whether committing would change anything: for one plugin, that its
        source ran (or its file was removed, which unloads it); for the
        directory, always (unless it could not be read).
        """
        if self.name is not None:
            return self.outcome is None
        return DIRECTORY_KEY not in self.failed


class _AbortedError(Exception):
    """
    A reload being prepared was aborted meanwhile.
    """


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
        return coroutines.run(result)
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


class PluginRegistry:
    """
    The plugins of one directory, by route name.

    @ivar directory: the plugins directory.

    @param observe: called with a plugin's name and C{True} or C{False} after
        each load or reload of it succeeds or fails (for metrics).
    @param retired: called with each L{LoadedPlugin} that stops serving
        (replaced by a new generation, removed, or stopped with the
        server), right before its C{stop()} runs, so that what was started
        for it elsewhere ends with it (the web layer's open streams); it
        may return a Deferred, which C{stop()} waits for (up to
        C{start_timeout}); also the attribute C{retired}, which may be set
        after construction.
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
        retired: Callable[[LoadedPlugin], Any] | None = None,
        start_timeout: float = 30.0,
        reactor: Any = None,
        threadpool: ThreadPool | None = None,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self._params = params
        self._config = config
        self._clock = clock
        self._observe = observe or (lambda name, success: None)
        self.retired: Callable[[LoadedPlugin], Any] = retired or (lambda loaded: None)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.start_timeout = start_timeout
        self._byName: dict[str, LoadedPlugin] = {}
        self._lock = defer.DeferredLock()
        self._modules = PluginModules(package, self.directory, reactor, threadpool)
        self.stamp: Callable[[str, LoadedPlugin | None], tuple[int, float] | None] = (
            lambda stem, previous: None
        )
        """
        Gives the number and load time of the next generation of the plugin
        in C{stem}.py (replacing C{previous}, or L{None}), or L{None} for
        the usual ones (the next number, from 1; the clock).  A worker
        process sets it so that every worker numbers its generations alike.
        """
        self._pending: PendingReload | None = None

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

        A file named after a reserved route or a documents tree (C{[paths]
        documents}) is refused here, whatever route its class names: only
        those names, not the whole route-name rule (L{route_name_error}),
        since a file whose stem is no valid route may still name a valid
        one in its class.
        """
        stems = []
        documents = self._documentRoutes()
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
            if stem in documents:
                log.error(
                    "Plugin file {file} refused: /{name} is a documents tree "
                    "([paths] documents in the configuration)",
                    file=os.path.join(self.directory, entry),
                    name=stem,
                )
                continue
            stems.append(stem)
        return stems

    def _documentRoutes(self) -> frozenset[str]:
        """
        The routes of the configuration's documents trees (C{[paths]
        documents}): reserved for them, so that no plugin shadows a tree.
        The configuration is L{Settings} in the server; in tests it may be
        anything, or nothing.
        """
        trees = getattr(self._config, "documents", None) or ()
        return frozenset(route for route, _ in trees)

    def _documentsError(self, name: str) -> str | None:
        """
        Why C{name} cannot be a plugin's route because a documents tree
        has it, or L{None}.
        """
        if name in self._documentRoutes():
            return f"route /{name} is a documents tree ([paths] documents in the configuration)"
        return None

    def _byStem(self, stem: str) -> LoadedPlugin | None:
        for loaded in self._byName.values():
            if loaded.stem == stem:
                return loaded
        return None

    # -- loading ---------------------------------------------------------

    def _bounded(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """
        C{d}, cancelled after C{start_timeout} seconds: a plugin whose start()
        or stop() never finishes must not hold every later reload (and the
        shutdown) behind it.
        """
        return coroutines.bounded(d, self.start_timeout, self._reactor)

    def _paramsFor(self, stem: str, name: str) -> Mapping[str, Any]:
        return self._params.get(name) or self._params.get(stem) or {}

    def _refreshHelpers(self) -> defer.Deferred[list[str]]:
        """
        Rebuild the helper modules that changed (see
        L{PluginModules.refresh_helpers}); the served plugins are not
        helpers.
        """
        return self._modules.refresh_helpers({p.stem for p in self._byName.values()})

    @defer.inlineCallbacks
    def _load(
        self, stem: str, tried: Tried | None = None
    ) -> Generator[defer.Deferred[Any], Any, LoadedPlugin]:
        """
        Load or reload C{stem}: a new generation, started and swapped in,
        or L{PluginLoadError} with the old generation untouched.  The module
        body runs in the import thread (L{PluginModules.prepare});
        everything after it runs here, on the reactor thread.

        @param tried: the new source already run in a scratch module (by
            L{prepare_reload}); then only the rest of the load is done
            (L{PluginModules.finish}).
        """
        previous = self._byStem(stem)
        snapshot = self._modules.snapshot(stem, previous.instance if previous else None)
        try:
            if tried is None:
                prepared = yield self._modules.prepare(snapshot)
            else:
                prepared = yield self._modules.finish(snapshot, tried)
            cls = self._modules.go_live(prepared)
            name = self._claimRoute(stem, route_name(cls, stem))
            declared = _declaration(cls)
            params = self._paramsFor(stem, name)
            instance, name = yield self._start(cls, stem, name, params, self._modules.path(stem))
        except PluginLoadError:
            self._modules.restore(snapshot)
            raise
        loaded = self._generation(
            stem, name, cls, instance, params, prepared.digest, previous, declared
        )
        self._swapIn(loaded, previous)
        if previous is not None:
            # Never fails: the new generation serves whatever the old one's
            # stop() does.
            yield self._stopOne(previous)
        return loaded

    def _claimRoute(self, stem: str, name: str) -> str:
        """
        Check that the plugin of C{stem}.py may serve the route C{name}, and
        give it back; L{PluginLoadError} when the route-name rule refuses it
        or another file serves it.
        """
        error = route_name_error(name) or self._documentsError(name)
        if error is not None:
            raise PluginLoadError(error)
        other = self._byName.get(name)
        if other is not None and other.stem != stem:
            raise PluginLoadError(f"route /{name} is already served by {other.file}")
        return name

    @defer.inlineCallbacks
    def _start(
        self, cls: type[Plugin], stem: str, name: str, params: Mapping[str, Any], path: str
    ) -> Generator[defer.Deferred[Any], Any, tuple[Plugin, str]]:
        """
        Make an instance of C{cls} (through L{Plugin.construct}) and start it
        (within C{start_timeout}); give back the instance and the route it
        serves.  L{PluginLoadError} naming file and line when either step
        fails.

        C{name} is the route the class or the file names, already checked.
        A class that names its route only once made (the old server's
        plugins: see L{Plugin.construct}) has the route it gives checked here
        the same way, before it starts; when that route is refused, the
        instance is stopped at once, so that what its constructor set going
        ends with it.
        """
        try:
            instance, route = cls.construct(name, params, self._config)
        except BaseException as e:
            # Plugin code on the reactor thread: Twisted's SIGINT and
            # SIGTERM handlers never raise into it, so anything caught
            # here was raised by the plugin itself.
            raise PluginLoadError(describe_error(e, path)) from None
        if route != name:
            try:
                if not isinstance(route, str):
                    raise PluginLoadError(f"route {route!r} is not a string")
                self._claimRoute(stem, route)
            except PluginLoadError:
                yield _settled(self._bounded(_maybe_async(instance.stop)))
                yield self._stopBackground(name, 0, instance)
                raise
        started = yield _settled(self._bounded(_maybe_async(instance.start)))
        if started is not None:
            # What start() set going with every()/spawn() before it failed.
            yield self._stopBackground(name, 0, instance)
            if started.failure.check(defer.TimeoutError):
                raise PluginLoadError(f"start() did not finish within {self.start_timeout:g} s")
            raise PluginLoadError("start() failed: " + describe_failure(started.failure, path))
        return instance, route

    def _generation(
        self,
        stem: str,
        name: str,
        cls: type[Plugin],
        instance: Plugin,
        params: Mapping[str, Any],
        digest: str,
        previous: LoadedPlugin | None,
        declared: Declared | None = None,
    ) -> LoadedPlugin:
        """
        The next generation of C{stem}'s plugin: C{instance}, started, with
        what it serves and how (C{declared}: its checked C{args}).
        """
        methods = {m.upper() for m in cls.methods}
        if "GET" in methods:
            methods.add("HEAD")
        generation, loadedAt = self.stamp(stem, previous) or (
            (previous.generation + 1) if previous else 1,
            self._clock(),
        )
        return LoadedPlugin(
            name=name,
            stem=stem,
            module=self._modules.fullname(stem),
            file=self._modules.path(stem),
            generation=generation,
            loaded_at=loadedAt,
            instance=instance,
            params=params,
            handle=instance.handle,
            stop=instance.stop,
            methods=frozenset(methods),
            blocking=bool(cls.blocking),
            source_hash=digest,
            auth_mode=str(params.get("auth", "global")),
            own_key=as_keys(params.get("apikey")) if params.get("auth") == "plugin" else None,
            declared=declared,
        )

    def _swapIn(self, loaded: LoadedPlugin, previous: LoadedPlugin | None) -> None:
        """
        Make C{loaded} serve its route in place of C{previous} (whose route
        it frees when the new class names another).
        """
        if previous is not None and previous.name != loaded.name:
            del self._byName[previous.name]
        self._byName[loaded.name] = loaded
        self._observe(loaded.name, True)
        log.info(
            "Plugin {plugin} generation {generation} loaded from {file}",
            plugin=loaded.name,
            generation=loaded.generation,
            file=loaded.file,
        )

    @defer.inlineCallbacks
    def _stopBackground(
        self, name: str, generation: int, instance: Plugin
    ) -> Generator[defer.Deferred[Any], Any, None]:
        """
        End what C{instance} started with every() and spawn(), waiting (up
        to C{start_timeout}) until the cancelled work has ended, so that
        the next generation starts with nothing of the old one running.
        """
        ended = yield _settled(self._bounded(stop_background(instance)))
        if ended is not None:
            log.error(
                "Plugin {plugin} generation {generation}: background work still "
                "running {timeout} s after it was cancelled",
                plugin=name,
                generation=generation,
                timeout=self.start_timeout,
            )

    @defer.inlineCallbacks
    def _stopOne(self, loaded: LoadedPlugin) -> Generator[defer.Deferred[Any], Any, None]:
        """
        Call C{loaded}'s C{stop()}; log, never raise, whatever it does
        (any L{BaseException}, or not finishing in time), so that a swap
        still succeeds and the other plugins are still stopped.

        L{retired} is told first: what it ends (streams reading from the
        instance) ends while the instance still works, and stop() does not
        pull anything from under it.
        """
        ended = yield _settled(self._bounded(defer.maybeDeferred(self.retired, loaded)))
        if ended is not None:
            log.failure(
                "Plugin {plugin} generation {generation}: ending what it served failed",
                ended.failure,
                plugin=loaded.name,
                generation=loaded.generation,
            )
        stopped = yield _settled(self._bounded(_maybe_async(loaded.stop)))
        # Whatever stop() did: what the instance started with every() and
        # spawn() ends now, so that a forgotten stop() leaks nothing.
        yield self._stopBackground(loaded.name, loaded.generation, loaded.instance)
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
        self._modules.forget(loaded.stem)
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
            file=self._modules.path(stem),
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

    def _locate(self, name: str) -> tuple[LoadedPlugin | None, str, str, ReloadOutcome | None]:
        """
        What reloading C{name} (a route name or a file stem) is about: the
        generation serving it (or L{None}), its file's stem and path, and
        the failed outcome when the directory cannot be read; L{KeyError}
        when there is no such plugin.  Reloads in one step and in two
        decide this alike.
        """
        current = self._byName.get(name) or self._byStem(name)
        stem = current.stem if current else name
        path = self._modules.path(stem)
        try:
            if current is None:
                if stem not in self.discover() or not os.path.isfile(path):
                    raise KeyError(name)
            else:
                self._listDirectory()
        except DirectoryError as e:
            if current is None:
                raise KeyError(name) from None
            error = self._failed(stem, f"{DIRECTORY_KEY} {e}")
            failed = ReloadOutcome(current.name, False, current.generation, error)
            return current, stem, path, failed
        return current, stem, path, None

    @staticmethod
    def _loadFailed(name: str, current: LoadedPlugin | None, error: str) -> ReloadOutcome:
        """
        The outcome of a reload of C{name} whose new source failed: the
        generation serving it, if any, keeps serving.
        """
        return ReloadOutcome(
            current.name if current else name,
            False,
            current.generation if current else None,
            error,
        )

    @defer.inlineCallbacks
    def _reloadOne(self, name: str) -> Generator[defer.Deferred[Any], Any, ReloadOutcome]:
        current, stem, path, failed = self._locate(name)
        if failed is not None:
            return failed
        if current is not None and not os.path.isfile(path):
            yield self._unload(current)
            return ReloadOutcome(current.name, False, None, "plugin file was removed")
        try:
            yield self._refreshHelpers()
            loaded: LoadedPlugin = yield self._load(stem)
        except PluginLoadError as e:
            return self._loadFailed(name, current, self._failed(stem, str(e)))
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
            changedHelpers: list[str] = yield self._refreshHelpers()
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
        return self._modules.hashes.changed(current.module, current.file)

    # -- reloads in two steps (worker processes) ------------------------------

    @defer.inlineCallbacks
    def prepare_reload(
        self,
        name: str | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        config: Any = None,
        everything: bool = False,
    ) -> Generator[defer.Deferred[Any], Any, PendingReload]:
        """
        The first step of a reload made in two: what L{reload} (one plugin,
        by C{name}) or L{reload_all} (C{name} L{None}; C{params}, C{config}
        and C{everything} as there) would do up to the swap, without
        changing what serves: find what to load and unload, bring changed
        helper modules up to date (as any reload does first), and run each
        new plugin source in a scratch module (in the import thread).  A
        source that fails is logged and counted as a failed load, as in
        L{reload}.

        The registry's lock is held until L{commit_reload} or
        L{abort_reload}.  Fails with L{KeyError} when there is no plugin
        C{name} (and releases the lock).
        """
        pending = PendingReload(name, everything, (self._params, self._config))
        self._pending = pending
        yield self._lock.acquire()
        pending.locked = True
        if pending.aborted:  # aborted while it waited for the lock
            self._release(pending)
            raise _AbortedError()
        try:
            if name is None:
                yield self._prepareAll(pending, params, config)
            else:
                yield self._prepareOne(pending, name)
        except BaseException:
            if not pending.aborted:  # else abort_reload put them back already
                self._restoreParams(pending)
            self._release(pending)
            raise
        pending.prepared = True
        return pending

    def _release(self, pending: PendingReload) -> None:
        if pending.locked:
            pending.locked = False
            self._lock.release()
        if self._pending is pending:
            self._pending = None

    def _restoreParams(self, pending: PendingReload) -> None:
        self._params, self._config = pending.params

    def _checkAborted(self, pending: PendingReload) -> None:
        if pending.aborted:
            raise _AbortedError()

    @defer.inlineCallbacks
    def _prepareOne(
        self, pending: PendingReload, name: str
    ) -> Generator[defer.Deferred[Any], Any, None]:
        # What _reloadOne decides before its load, in the same order.
        current, stem, path, failed = self._locate(name)
        if failed is not None:
            pending.outcome = failed
            return
        if current is not None and not os.path.isfile(path):
            pending.removed.append(current)
            return
        pending.current[stem] = current.generation if current else None
        try:
            yield self._refreshHelpers()
            self._checkAborted(pending)
            pending.tried[stem] = yield self._modules.try_source(stem)
        except PluginLoadError as e:
            pending.outcome = self._loadFailed(name, current, self._failed(stem, str(e)))
        self._checkAborted(pending)

    @defer.inlineCallbacks
    def _prepareAll(
        self,
        pending: PendingReload,
        params: Mapping[str, Mapping[str, Any]] | None,
        config: Any,
    ) -> Generator[defer.Deferred[Any], Any, None]:
        # What _reloadAll decides before its loads, in the same order.
        oldParams = self._params
        configChanged = pending.everything or (config is not None and config != self._config)
        if params is not None:
            self._params = params
        if config is not None:
            self._config = config
        try:
            stems = self.discover()
        except DirectoryError as e:
            log.error(
                "Plugins directory cannot be read, every plugin keeps serving: {error}",
                error=str(e),
            )
            pending.failed[DIRECTORY_KEY] = str(e)
            return
        pending.removed = [p for p in self._byName.values() if p.stem not in stems]
        try:
            changedHelpers: list[str] = yield self._refreshHelpers()
            helpersChanged = bool(changedHelpers)
        except HelperLoadError as e:
            pending.failed[e.helper] = str(e)
            log.error("{error}", error=str(e))
            helpersChanged = False
        for stem in stems:
            self._checkAborted(pending)
            current = self._byStem(stem)
            if current is not None and not self._needsReload(
                current, oldParams, helpersChanged or configChanged
            ):
                continue
            pending.current[stem] = current.generation if current else None
            try:
                pending.tried[stem] = yield self._modules.try_source(stem)
            except PluginLoadError as e:
                pending.failed[current.name if current else stem] = self._failed(stem, str(e))
        self._checkAborted(pending)

    @defer.inlineCallbacks
    def commit_reload(
        self, skip: Mapping[str, str] | None = None
    ) -> Generator[defer.Deferred[Any], Any, ReloadOutcome | ReloadReport]:
        """
        The second step of the reload L{prepare_reload} prepared: unload
        what is gone, then for each tried source rebuild the live module,
        make the instance, start it and swap it in, as L{reload} or
        L{reload_all} would (a step that fails leaves that plugin's old
        generation serving, as there; a file changed since it was tried
        fails).  Fires with their answer: a L{ReloadOutcome} for one
        plugin, a L{ReloadReport} for the directory.  Releases the lock.

        @param skip: plugin files (by stem) not to load after all, with the
            reason (their source failed in another process): each is
            reported failed with it.
        @raise RuntimeError: nothing is prepared.
        """
        pending = self._pending
        if pending is None or not pending.prepared or pending.aborted:
            raise RuntimeError("no reload is prepared")
        skip = skip or {}
        try:
            if pending.name is not None:
                result: ReloadOutcome | ReloadReport = yield self._commitOne(pending, skip)
            else:
                result = yield self._commitAll(pending, skip)
        finally:
            self._release(pending)
        return result

    @defer.inlineCallbacks
    def _commitOne(
        self, pending: PendingReload, skip: Mapping[str, str]
    ) -> Generator[defer.Deferred[Any], Any, ReloadOutcome]:
        if pending.outcome is not None:
            return pending.outcome
        if pending.removed:
            gone = pending.removed[0]
            yield self._unload(gone)
            return ReloadOutcome(gone.name, False, None, "plugin file was removed")
        ((stem, tried),) = pending.tried.items()
        current = self._byStem(stem)
        name = current.name if current else stem
        generation = current.generation if current else None
        if stem in skip:
            return ReloadOutcome(name, False, generation, skip[stem])
        try:
            loaded: LoadedPlugin = yield self._load(stem, tried)
        except PluginLoadError as e:
            return ReloadOutcome(name, False, generation, self._failed(stem, str(e)))
        return ReloadOutcome(loaded.name, True, loaded.generation)

    @defer.inlineCallbacks
    def _commitAll(
        self, pending: PendingReload, skip: Mapping[str, str]
    ) -> Generator[defer.Deferred[Any], Any, ReloadReport]:
        failed = dict(pending.failed)
        if DIRECTORY_KEY in failed:
            return ReloadReport(sorted(self._byName), [], [], failed)
        added: list[str] = []
        removed: list[str] = []
        for loaded in pending.removed:
            if self._byName.get(loaded.name) is loaded:
                yield self._unload(loaded)
                removed.append(loaded.name)
        for stem, tried in pending.tried.items():
            current = self._byStem(stem)
            key = current.name if current else stem
            if stem in skip:
                failed[key] = skip[stem]
                continue
            try:
                loaded = yield self._load(stem, tried)
            except PluginLoadError as e:
                failed[key] = self._failed(stem, str(e))
                continue
            if current is None:
                added.append(loaded.name)
        return ReloadReport(sorted(self._byName), added, removed, failed)

    def abort_reload(self) -> None:
        """
        Drop the reload L{prepare_reload} prepared (or is preparing: it then
        stops at its next step and fails), changing nothing more and
        releasing the lock at once.  Helper modules already brought up to
        date stay so, as after any reload whose plugins failed.
        """
        pending = self._pending
        if pending is None:
            return
        pending.aborted = True
        self._restoreParams(pending)
        self._release(pending)

    def check_all(self) -> dict[str, tuple[str | None, str | None]]:
        """
        Compile and run every plugin file in a scratch module, as a load
        would, without making anything live or starting anything.  Maps
        each plugin's stem to its route name and its error (L{None} when it
        would load).  Synchronous (C{--check} runs with no reactor); each
        module body still runs in a thread of its own
        (L{PluginModules.check}).  Raises L{DirectoryError} when the
        directory cannot be listed.
        """
        results: dict[str, tuple[str | None, str | None]] = {}
        for stem in self.discover():
            try:
                cls = self._modules.check(stem)
            except PluginLoadError as e:
                results[stem] = (None, str(e))
                continue
            name = route_name(cls, stem)
            error = route_name_error(name) or self._documentsError(name)
            if error is None:
                try:
                    _declaration(cls)
                except PluginLoadError as e:
                    error = str(e)
            results[stem] = (name, error)
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
        self._modules.close()
