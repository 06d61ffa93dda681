# -*- test-case-name: tests.test_process,tests.test_service -*-
"""
The server as a twistd service: it owns the settings, the plugin registry,
the thread pool for blocking plugins and the listeners, and it ties their
lifetimes together.

Start: the listeners bind in C{privilegedStartService} (so a low port can be
bound before twistd drops privileges), then the plugins load in
C{startService}, before the reactor serves a single request: their module
bodies run in the registry's import thread, and the listeners accept no
connection until the load has finished.

Stop: stop listening, let in-flight requests finish (bounded by
C{shutdown_timeout}), then stop every plugin and the thread pool.

SIGHUP re-reads the configuration and reloads every plugin in-process.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.internet.process import reapAllProcesses
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from pluginserver import aioport, coroutines
from pluginserver.config import ConfigError, Settings
from pluginserver.metrics import Metrics
from pluginserver.notify import notify_systemd
from pluginserver.registry import PluginRegistry, ReloadReport
from pluginserver.security import audit_reload
from pluginserver.site import PluginServerSite
from pluginserver.tls import (
    NO_CLIENT_AUTH,
    ClientAuth,
    SwappableContextFactory,
    TLSConfigError,
    listen_backlog,
    load_context_factory,
    tls_endpoint,
)
from pluginserver.web import PluginServerResource

log = Logger()


class DaemonThreadPool(ThreadPool):
    """
    The pool of blocking plugins: its threads do not hold the process
    open after a stop (a handler that never returns must not stop the
    server from ending within shutdown_timeout).
    """

    def threadFactory(self, *args: Any, **kwargs: Any) -> threading.Thread:  # type: ignore[override]
        return threading.Thread(*args, daemon=True, **kwargs)


class ListenError(Exception):
    """
    A listener could not be started; the message names it and the reason.
    """


class Listener(Service):
    """
    One listener, named by its endpoint string.  It binds in
    C{privilegedStartService} (before twistd drops privileges) and raises
    L{ListenError} there when it cannot, rather than logging and forgetting
    it; it accepts connections only once told the server is ready.
    """

    def __init__(
        self,
        description: str,
        origin: str,
        reactor: Any,
        factory: Site,
        client: ClientAuth = NO_CLIENT_AUTH,
        endpoint: tuple[Any, SwappableContextFactory | None] | None = None,
    ) -> None:
        """
        @param description: the Twisted endpoint string.
        @param origin: where it was configured, for messages.
        @param factory: the site it serves.
        @param client: the client certificates a TLS listener asks for.
        @param endpoint: the endpoint to listen with and its swappable TLS
            context factory (L{None} for plain HTTP), when it is not the
            one C{description} makes (a worker process adopts a socket its
            supervisor bound: L{pluginserver.workers}).
        """
        made, self.tls = endpoint or tls_endpoint(reactor, description, client)
        # An IStreamServerEndpoint (typed loosely: mypy cannot call a zope
        # Interface's methods without the mypy-zope plugin).
        self.endpoint: Any = made
        self.description = description
        self.origin = origin
        self._factory = factory
        self._reactor = reactor
        self._ready = False
        # The loop accepting the port's connections, once it does.
        self._serving: aioport.Serving | None = None
        # An IListeningPort (typed loosely: mypy cannot call a zope
        # Interface's methods without the mypy-zope plugin).
        self.port: Any = None

    def reload_certificate(self, client: ClientAuth = NO_CLIENT_AUTH) -> None:
        """
        Read this TLS listener's key and certificate (and the client CA)
        again; new connections get the new pair.  Raises L{TLSConfigError}
        and keeps the old pair when the new one does not load.
        """
        if self.tls is not None:
            self.tls.current = load_context_factory(self._reactor, self.description, client)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failures: list[Failure] = []
        self.endpoint.listen(self._factory).addCallbacks(self._listening, failures.append)
        if failures:
            e = failures[0].value
            # The reason first: a daemonizing twistd shows its parent only
            # the first 100 bytes of the message.
            socketError = getattr(e, "socketError", None)
            reason = getattr(socketError, "strerror", None) or str(e)
            raise ListenError(f"{self.description}: {reason} ({self.origin})")

    def _listening(self, port: Any) -> None:
        self.port = port
        if not self._ready:
            # Bound, but taking no connection yet: clients wait in the
            # listen backlog until the plugins have started.  (Twisted has
            # no public interface to pause accepting on a listening port;
            # its ports are FileDescriptors, whose stopReading does it.)
            port.stopReading()

    def accept(self) -> None:
        """
        The server is ready: take connections from now on; on the asyncio
        reactor, with the loop's own transports (L{pluginserver.aioport}).
        """
        self._ready = True
        port = self.port
        if port is not None and port.connected and not port.disconnecting:
            if aioport.servable(self._reactor, port):
                self._serving = aioport.serve(
                    self._reactor, port, port.factory, listen_backlog(self.description)
                )
            else:
                port.startReading()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.stop()
        if port is None:
            return None
        stopped: defer.Deferred[None] = defer.maybeDeferred(port.stopListening)
        return stopped


def privileged_start(service: MultiService, exitOnListenError: bool) -> None:
    """
    C{service}'s C{privilegedStartService}, which binds its L{Listener}
    children; when one cannot listen, close those that did and stop
    start-up with one line (L{SystemExit} when C{exitOnListenError}, else
    the L{ListenError}).
    """
    try:
        MultiService.privilegedStartService(service)
    except ListenError as e:
        log.critical("Cannot listen on {error}", error=str(e))
        for listener in service:
            if isinstance(listener, Listener) and listener.port is not None:
                listener.port.stopListening()
                listener.port = None
        if exitOnListenError:
            raise SystemExit(f"pluginserver: cannot listen on {e}") from None
        raise


class PluginServerService(MultiService):
    """
    The whole server but its listeners: the settings, the plugin registry,
    the thread pool of blocking plugins, the resource and the site; its
    L{Listener}s are its children (L{pluginserver.tap.makeService} adds
    them), and they take connections once every plugin has started.

    @param settings: the configuration in force at start.
    @param reload_settings: re-reads the configuration (for SIGHUP and
        C{/reload/all}); raises L{ConfigError}.
    @param reactor: the reactor to listen, time and thread with.
    @param exitOnListenError: raise L{SystemExit} (one clean line, no
        traceback) rather than L{ListenError} when a listener fails; twistd
        in the foreground wants the former, a daemonizing twistd the latter
        (it reports the exception's text to the waiting parent).
    @param notify: tells systemd of the service's state (L{notify_systemd}).
    """

    def __init__(
        self,
        settings: Settings,
        reload_settings: Callable[[], Settings],
        reactor: Any,
        package: str = "pluginserver_plugins",
        exitOnListenError: bool = True,
        notify: Callable[..., object] = notify_systemd,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._reloadSettings = reload_settings
        self._reactor = reactor
        self._exitOnListenError = exitOnListenError
        self._notifySystemd = notify
        self.metrics = Metrics(
            lambda: {name: p.generation for name, p in self._registry.plugins.items()}
        )
        self._registry = PluginRegistry(
            settings.plugins_dir,
            settings.plugin_params,
            settings,
            package=package,
            observe=self.metrics.reload_outcome,
            start_timeout=settings.start_timeout,
            reactor=reactor,
        )
        self.threadpool = DaemonThreadPool(
            minthreads=0, maxthreads=settings.threads, name="pluginserver"
        )
        self.resource = PluginServerResource(self, reactor, self.threadpool, self.metrics)
        # A generation that stops serving ends the streams it answered.
        self._registry.retired = self.resource.streams.end
        self.site = PluginServerSite(
            self.resource,
            logPath=settings.access_log,
            timeout=settings.idle_timeout,
            reactor=reactor,
        )
        self.site.displayTracebacks = False
        self.site.metrics = self.metrics
        self.site.configure(settings)
        self._previousHup: Any = None
        self._previousUsr1: Any = None
        self._stopping = False

    logObserver: Any = None
    """
    A log observer for twistd to log through instead of its own (JSON lines
    for [server] log_format = json), or L{None}.
    """

    def setServiceParent(self, parent: Any) -> Any:
        # twistd makes the application, sets us as its service, then starts
        # logging through the application's ILogObserver component if it
        # has one: the documented way for an application to choose it.
        result = super().setServiceParent(parent)
        if self.logObserver is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.logObserver)
        return result

    # -- the Runtime the web layer sees --------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def registry(self) -> PluginRegistry:
        return self._registry

    @property
    def stopping(self) -> bool:
        return self._stopping

    @defer.inlineCallbacks
    def reload_all(
        self, everything: bool = False
    ) -> Generator[defer.Deferred[Any], Any, tuple[ReloadReport, dict[str, str]]]:
        """
        Re-read the configuration and the TLS certificates, and reload every
        plugin that changed (every plugin, when C{everything}).  Fires with
        C{(report, failures)}: failures maps C{"config"} or a listener to its
        error; what failed keeps its old state (configuration, certificate)
        and the rest still reloads.
        """
        failures: dict[str, str] = {}
        new = self.reread_settings(failures)
        if new is not None:
            self.apply_settings(new)
        self.reload_certificates(failures)
        report: ReloadReport = yield self._registry.reload_all(
            self._settings.plugin_params, self._settings, everything
        )
        self.log_reload(report)
        result: tuple[ReloadReport, dict[str, str]] = (report, failures)
        return result

    def reread_settings(self, failures: dict[str, str]) -> Settings | None:
        """
        Read the configuration file again (for a reload); L{None}, with
        the error under C{failures["config"]} and logged, when it is wrong
        (the settings in force stay).
        """
        try:
            return self._reloadSettings()
        except ConfigError as e:
            failures["config"] = str(e)
            log.error("Configuration not reloaded: {error}", error=str(e))
            return None

    def apply_settings(self, new: Settings) -> None:
        """
        Take re-read settings into use, logging their warnings.
        """
        self._applySettings(new)
        for warning in new.warnings:
            log.warn("{warning}", warning=warning)

    def reload_certificates(self, failures: dict[str, str]) -> None:
        """
        Read every TLS listener's key and certificate again; one that does
        not load keeps its old pair and its error goes under its listener
        in C{failures}.
        """
        for listener in self:
            if isinstance(listener, Listener) and listener.tls is not None:
                try:
                    listener.reload_certificate(ClientAuth.of(self._settings))
                except TLSConfigError as e:
                    failures[listener.description] = str(e)
                    log.error(
                        "Certificate of {listener} not reloaded, the old one keeps "
                        "serving: {error}",
                        listener=listener.description,
                        error=str(e),
                    )
                else:
                    log.info("Certificate of {listener} reloaded", listener=listener.description)

    def log_reload(self, report: ReloadReport) -> None:
        """
        Log the outcome of a reload of every plugin.
        """
        log.info(
            "Reloaded: {loaded} serving, added {added}, removed {removed}, failed {failed}",
            loaded=len(report.loaded),
            added=report.added,
            removed=report.removed,
            failed=sorted(report.failed),
        )

    def _applySettings(self, new: Settings) -> None:
        old = self._settings
        if new.listen != old.listen:
            log.warn("Listeners changed in {path}: they take effect on restart", path=new.path)
        if new.plugins_dir != old.plugins_dir:
            log.warn("[paths] plugins changed in {path}: it takes effect on restart", path=new.path)
        if new.uvloop != old.uvloop:
            log.warn("[server] uvloop changed in {path}: it takes effect on restart", path=new.path)
        self.site.configure(new)
        self.threadpool.adjustPoolsize(maxthreads=new.threads)
        if new.access_log != old.access_log:
            self.site.set_access_log(new.access_log)
        self._settings = new
        self._registry.start_timeout = new.start_timeout
        self.resource.configure(new)

    # -- lifecycle -------------------------------------------------------------

    def privilegedStartService(self) -> None:
        privileged_start(self, self._exitOnListenError)

    def _listeners(self) -> list[Listener]:
        return [service for service in self if isinstance(service, Listener)]

    def startService(self) -> None:
        self._previousHup = signal.signal(signal.SIGHUP, self._onHup)
        self._previousUsr1 = signal.signal(signal.SIGUSR1, self._onUsr1)
        self.threadpool.start()
        # Everything made so far (modules, the site) lives as long as the
        # process: keep it out of the cyclic collector's full passes, which
        # would walk it again and again under load.  Plugins come after:
        # a replaced generation must stay collectable.
        gc.freeze()
        if coroutines.on_uvloop():
            # libuv takes SIGCHLD over the first time asyncio starts a
            # subprocess on uvloop (a plugin's asyncio.create_subprocess_exec),
            # and Twisted's processes (reactor.spawnProcess, utils.getProcess*)
            # would then never be seen ending: look for them once a second.
            TimerService(1.0, reapAllProcesses).setServiceParent(self)
        super().startService()
        for warning in self._settings.warnings:
            log.warn("{warning}", warning=warning)
        if coroutines.asyncio_loop() is None:
            log.warn(
                "Running on {reactor} (chosen with twistd -r): plugin coroutines can "
                "await Deferreds only; one that awaits an asyncio awaitable fails "
                "with a logged error naming this reactor",
                reactor=coroutines.reactor_name(),
            )
        else:
            log.info("Running on {reactor}", reactor=coroutines.describe_reactor())
        # Ready means ready: the listeners are bound but take no connection
        # until every plugin that loads at start-up has started (module
        # bodies run in the registry's import thread, after the reactor
        # started), so a client never sees a 404 for a plugin about to exist.
        d = self._registry.load_all()
        d.addCallback(self._loaded)
        d.addErrback(lambda f: log.failure("Loading plugins failed", f))
        d.addBoth(lambda _: self._ready())

    def _ready(self) -> None:
        if not self.running:
            return  # stopped while the plugins loaded
        for listener in self._listeners():
            listener.accept()
        self._notify("READY=1")

    def _notify(self, *states: str) -> None:
        try:
            self._notifySystemd(*states)
        except OSError as e:
            log.warn("Cannot notify systemd ({states}): {error}", states=states, error=e)

    def _loaded(self, report: ReloadReport) -> None:
        log.info(
            "Serving {count} plugins from {directory}: {names}",
            count=len(report.loaded),
            directory=self._registry.directory,
            names=", ".join(report.loaded),
        )

    def _onHup(self, signum: int, frame: Any) -> None:
        # Signal handlers run between two bytecodes of whatever the reactor
        # was doing: hand the work to the reactor instead.
        self._reactor.callFromThread(self._reloadOnHup)

    def _onUsr1(self, signum: int, frame: Any) -> None:
        # logrotate moved the access log: open it afresh.  twistd rotates
        # its own log on SIGUSR1 too: keep doing that.
        self._reactor.callFromThread(self.site.set_access_log, self._settings.access_log)
        if callable(self._previousUsr1):
            self._previousUsr1(signum, frame)

    def _auditHup(self, result: tuple[ReloadReport, dict[str, str]]) -> None:
        report, failures = result
        failed = {**report.failed, **failures}
        audit_reload("signal", None, "all", not failed, failed)

    def _reloadOnHup(self) -> None:
        log.info("SIGHUP: reloading configuration and every plugin")
        self._notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        d = self.reload_all(everything=True)
        d.addCallback(self._auditHup)
        d.addErrback(lambda f: log.failure("Reload on SIGHUP failed", f))
        d.addBoth(lambda _: self._notify("READY=1") if not self._stopping else None)

    @defer.inlineCallbacks
    def stopService(self) -> Generator[defer.Deferred[Any], Any, None]:
        self._stopping = True
        self._notify("STOPPING=1")
        if self._previousHup is not None:
            signal.signal(signal.SIGHUP, self._previousHup)
            self._previousHup = None
        if self._previousUsr1 is not None:
            signal.signal(signal.SIGUSR1, self._previousUsr1)
            self._previousUsr1 = None
        yield super().stopService()  # stop listening
        # Streams would never finish by themselves: they end now, cleanly,
        # and the drain waits only for the other requests.
        self.resource.streams.end_all()
        yield self._drain(self._settings.shutdown_timeout)
        yield self._registry.stop_all()
        if self.threadpool.started:
            busy = len(self.threadpool.working)
            if busy:
                # A blocking handler cannot be interrupted; its threads are
                # daemonic, so the process ends without waiting for them.
                log.warn(
                    "Stopping with {count} blocking handlers still running",
                    count=busy,
                )
            else:
                self.threadpool.stop()
        log.info("pluginserver stopped")

    @defer.inlineCallbacks
    def _drain(self, timeout: float) -> Generator[defer.Deferred[Any], Any, None]:
        """
        Wait until no request is in flight, or C{timeout} seconds.
        """
        waited = 0.0
        step = 0.05
        while self.site.inflight > 0 and waited < timeout:
            yield task.deferLater(self._reactor, step, lambda: None)
            waited += step
        if self.site.inflight > 0:
            log.warn(
                "Stopping with {count} requests still in flight after {timeout} s",
                count=self.site.inflight,
                timeout=timeout,
            )
