# -*- test-case-name: tests.test_process,tests.test_service -*-
"""
The server as a twistd service: it owns the settings, the plugin registry,
the thread pool for blocking plugins and the listeners, and it ties their
lifetimes together.

Start: the listeners bind in C{privilegedStartService} (so a low port can be
bound before twistd drops privileges), then the plugins load in
C{startService}, before the reactor serves a single request.

Stop: stop listening, let in-flight requests finish (bounded by
C{shutdown_timeout}), then stop every plugin and the thread pool.

SIGHUP re-reads the configuration and reloads every plugin in-process.
"""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Callable, Generator
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import ILogObserver, Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from pluginserver.config import ConfigError, Settings
from pluginserver.metrics import Metrics
from pluginserver.registry import PluginRegistry, ReloadReport
from pluginserver.site import PluginServerSite
from pluginserver.tls import TLSConfigError, load_context_factory, tls_endpoint
from pluginserver.web import PluginServerResource

log = Logger()


class _DaemonThreadPool(ThreadPool):
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


class _Listener(StreamServerEndpointService):
    """
    One listener, named by its endpoint string; a failure to listen raises
    L{ListenError} at start-up rather than being logged and forgotten.
    """

    _raiseSynchronously = True

    def __init__(self, description: str, origin: str, reactor: Any, factory: Site) -> None:
        endpoint, self.tls = tls_endpoint(reactor, description)
        super().__init__(endpoint, factory)
        self.description = description
        self.origin = origin
        self._reactor = reactor

    def reload_certificate(self) -> None:
        """
        Read this TLS listener's key and certificate again; new connections
        get the new pair.  Raises L{TLSConfigError} and keeps the old pair
        when the new one does not load.
        """
        if self.tls is not None:
            self.tls.current = load_context_factory(self._reactor, self.description)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            # The reason first: a daemonizing twistd shows its parent only
            # the first 100 bytes of the message.
            socketError = getattr(e, "socketError", None)
            reason = getattr(socketError, "strerror", None) or str(e)
            raise ListenError(f"{self.description}: {reason} ({self.origin})") from None


class PluginServerService(MultiService):
    """
    The whole server.

    @param settings: the configuration in force at start.
    @param reload_settings: re-reads the configuration (for SIGHUP and
        C{/reload/all}); raises L{ConfigError}.
    @param reactor: the reactor to listen, time and thread with.
    @param exitOnListenError: raise L{SystemExit} (one clean line, no
        traceback) rather than L{ListenError} when a listener fails; twistd
        in the foreground wants the former, a daemonizing twistd the latter
        (it reports the exception's text to the waiting parent).
    """

    def __init__(
        self,
        settings: Settings,
        reload_settings: Callable[[], Settings],
        reactor: Any,
        package: str = "pluginserver_plugins",
        exitOnListenError: bool = True,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._reloadSettings = reload_settings
        self._reactor = reactor
        self._exitOnListenError = exitOnListenError
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
        self.threadpool = _DaemonThreadPool(
            minthreads=0, maxthreads=settings.threads, name="pluginserver"
        )
        self.resource = PluginServerResource(self, reactor, self.threadpool, self.metrics)
        self.site = PluginServerSite(
            self.resource,
            logPath=settings.access_log,
            timeout=settings.idle_timeout,
            reactor=reactor,
        )
        self.site.displayTracebacks = False
        self.site.metrics = self.metrics
        self._applyLimits(settings)
        self._previousHup: Any = None
        self._previousUsr1: Any = None
        origin = settings.listen_origin
        if origin != "--listen":
            origin = f"{origin} in {settings.path}"
        for description in settings.listen:
            _Listener(description, origin, reactor, self.site).setServiceParent(self)

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
        try:
            new = self._reloadSettings()
        except ConfigError as e:
            failures["config"] = str(e)
            log.error("Configuration not reloaded: {error}", error=str(e))
        else:
            self._applySettings(new)
        for listener in self:
            if isinstance(listener, _Listener) and listener.tls is not None:
                try:
                    listener.reload_certificate()
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
        report: ReloadReport = yield self._registry.reload_all(
            self._settings.plugin_params, self._settings, everything
        )
        log.info(
            "Reloaded: {loaded} serving, added {added}, removed {removed}, failed {failed}",
            loaded=len(report.loaded),
            added=report.added,
            removed=report.removed,
            failed=sorted(report.failed),
        )
        result: tuple[ReloadReport, dict[str, str]] = (report, failures)
        return result

    def _applySettings(self, new: Settings) -> None:
        old = self._settings
        if new.listen != old.listen:
            log.warn("Listeners changed in {path}: they take effect on restart", path=new.path)
        if new.plugins_dir != old.plugins_dir:
            log.warn("[paths] plugins changed in {path}: it takes effect on restart", path=new.path)
        self._applyLimits(new)
        self.threadpool.adjustPoolsize(maxthreads=new.threads)
        if new.access_log != old.access_log:
            self.site.set_access_log(new.access_log)
        self._settings = new
        self._registry.start_timeout = new.start_timeout
        self.resource.configure(new)

    def _applyLimits(self, settings: Settings) -> None:
        self.site.timeOut = settings.idle_timeout
        self.site.max_body = settings.max_body
        self.site.header_timeout = settings.header_timeout

    # -- lifecycle -------------------------------------------------------------

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            log.critical("Cannot listen on {error}", error=str(e))
            self._stopListeners()
            if self._exitOnListenError:
                raise SystemExit(f"pluginserver: cannot listen on {e}") from None
            raise

    def _stopListeners(self) -> None:
        for listener in list(self):
            port = getattr(listener, "_waitingForPort", None)
            if port is not None:
                port.addCallback(lambda p: p.stopListening()).addErrback(lambda f: None)

    def startService(self) -> None:
        self._previousHup = signal.signal(signal.SIGHUP, self._onHup)
        self._previousUsr1 = signal.signal(signal.SIGUSR1, self._onUsr1)
        self.threadpool.start()
        # Everything made so far (modules, the site) lives as long as the
        # process: keep it out of the cyclic collector's full passes, which
        # would walk it again and again under load.  Plugins come after:
        # a replaced generation must stay collectable.
        gc.freeze()
        d = self._registry.load_all()
        d.addCallback(self._loaded)
        d.addErrback(lambda f: log.failure("Loading plugins failed", f))
        super().startService()

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

    def _reloadOnHup(self) -> None:
        log.info("SIGHUP: reloading configuration and every plugin")
        self.reload_all(everything=True).addErrback(
            lambda f: log.failure("Reload on SIGHUP failed", f)
        )

    @defer.inlineCallbacks
    def stopService(self) -> Generator[defer.Deferred[Any], Any, None]:
        if self._previousHup is not None:
            signal.signal(signal.SIGHUP, self._previousHup)
            self._previousHup = None
        if self._previousUsr1 is not None:
            signal.signal(signal.SIGUSR1, self._previousUsr1)
            self._previousUsr1 = None
        yield super().stopService()  # stop listening
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
