# -*- test-case-name: tests.test_workers -*-
"""
Worker processes: C{[server] workers = int:N} (or C{--workers N}) with N > 1.

The twistd process becomes a L{Supervisor} that serves no HTTP itself.  It
binds every configured listener (C{tcp:}, C{ssl:}, C{unix:}, C{systemd:})
in C{privilegedStartService}, before twistd drops privileges, and never
accepts on them; it starts N worker processes with C{reactor.spawnProcess},
handing each the listening sockets through C{childFDs}.  A worker
(L{run_worker}, run as C{python -m pluginserver.worker}) runs the very
service a single process runs (L{pluginserver.service.PluginServerService})
on the same reactor, but its listeners adopt those sockets
(C{IReactorSocket.adoptStreamPort}); an C{ssl:} listener's TLS is applied
in the worker, from the same key and certificate.  The kernel hands each
new connection to whichever worker accepts it first.

Supervisor and worker talk AMP (L{twisted.protocols.amp}) over two of the
worker's pipes (the supervisor writes to the worker's descriptor
L{AMP_IN}, the worker answers on L{AMP_OUT}).  The worker's log events come
to the supervisor as JSON lines on its standard output and join the
supervisor's log, marked with the worker's number; anything it writes to
its standard error is logged line by line.

Reloads reach every worker in two steps.  The supervisor asks each worker
to prepare (L{PrepareReload}: re-read the configuration, bring helper
modules up to date and run each new plugin source in a scratch module,
changing nothing that serves); only when every worker prepared does it ask
them to commit (L{CommitReload}: rebuild, construct, start, swap), each
numbering the new generations alike (the supervisor gives the numbers).  A
source that fails, a worker that fails to answer within C{start_timeout}
or exits meanwhile: every worker aborts (L{AbortReload}) and none swaps.  A
worker asked for a reload by a request (C{/reload/...}) or a SIGHUP hands it
to the supervisor (L{Reload}), which answers with every worker's outcome.
C{/metrics} on any worker is the supervisor's sum of every worker's counts
(L{ClusterMetrics}, L{CollectMetrics}).

A worker that dies is restarted (at most once a second per worker); one
that fails during the supervisor's start-up stops the whole server with its
reason.  SIGTERM and SIGINT stop the supervisor's listeners and then every
worker gracefully (each lets its requests finish and stops its plugins).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, ClassVar

import attr
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer, error, protocol, stdio, task
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.process import reapAllProcesses
from twisted.internet.unix import Port as UNIXPort
from twisted.logger import (
    ILogObserver,
    Logger,
    eventFromJSON,
    globalLogBeginner,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from pluginserver import coroutines
from pluginserver.config import ConfigError, Settings
from pluginserver.metrics import Metrics
from pluginserver.notify import notify_systemd
from pluginserver.registry import PendingReload, ReloadOutcome, ReloadReport
from pluginserver.service import Listener, PluginServerService, privileged_start
from pluginserver.tls import ClientAuth, SwappableContextFactory, is_tls, load_context_factory

log = Logger()

AMP_IN = 3
"""The worker's descriptor its supervisor's AMP commands arrive on."""

AMP_OUT = 4
"""The worker's descriptor its AMP boxes leave on."""

FIRST_SOCKET = 5
"""The worker's descriptor of the first listening socket; the others follow."""

RESTART_INTERVAL = 1.0
"""Seconds between two starts of one worker, at least: a crash loop cannot spin."""

STATUS_TIMEOUT = 5.0
"""Seconds the supervisor waits for a worker's status or counts."""

WORKER_ENVIRONMENT = "PLUGINSERVER_WORKER"
"""The environment variable that holds a worker process's number (1, 2, ...)."""

# What systemd hands the supervisor alone: a worker must neither take the
# activated sockets again nor notify systemd.
_SUPERVISOR_ONLY = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")


# ---------------------------------------------------------------------------
# AMP


class JSONValue(amp.Argument):
    """
    A JSON value of any size.  One AMP value holds at most 65,535 bytes:
    a longer document is split over the keys C{NAME.1}, C{NAME.2}, ...,
    and C{NAME} holds how many there are.
    """

    CHUNK = 60000

    def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        value = objects.pop(name.decode("ascii").replace("-", "_"))
        data = json.dumps(value, separators=(",", ":")).encode("utf-8")
        chunks = [data[i : i + self.CHUNK] for i in range(0, len(data), self.CHUNK)]
        strings[name] = b"%d" % (len(chunks),)
        for number, chunk in enumerate(chunks, 1):
            strings[name + b".%d" % (number,)] = chunk

    def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        count = int(strings.pop(name))
        data = b"".join(strings.pop(name + b".%d" % (n,)) for n in range(1, count + 1))
        objects[name.decode("ascii").replace("-", "_")] = json.loads(data)


class UnknownPluginError(Exception):
    """
    A reload named a plugin the worker does not serve.
    """


class PrepareReload(amp.Command):
    """
    Supervisor to worker: prepare a reload (of the plugin C{name}, or of
    everything when it is not given) up to the swap.
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = [
        (b"name", amp.Unicode(optional=True)),
        (b"everything", amp.Boolean()),
    ]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = [(b"result", JSONValue())]
    errors: ClassVar[dict[type[Exception], bytes]] = {UnknownPluginError: b"UNKNOWN_PLUGIN"}


class CommitReload(amp.Command):
    """
    Supervisor to worker: commit the prepared reload, numbering each new
    generation as C{stamps} say (C{{stem: [generation, loaded_at]}}) and
    leaving out the plugin files of C{skip} (C{{stem: reason}}).
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = [
        (b"stamps", JSONValue()),
        (b"skip", JSONValue()),
    ]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = [(b"result", JSONValue())]


class AbortReload(amp.Command):
    """
    Supervisor to worker: drop the prepared reload.
    """


class Status(amp.Command):
    """
    Supervisor to worker: its plugins (C{{stem: [generation, loaded_at]}}).
    """

    response: ClassVar[list[tuple[bytes, amp.Argument]]] = [(b"plugins", JSONValue())]


class CollectMetrics(amp.Command):
    """
    Supervisor to worker: its counts (L{Metrics.snapshot}).
    """

    response: ClassVar[list[tuple[bytes, amp.Argument]]] = [(b"metrics", JSONValue())]


class WorkerReady(amp.Command):
    """
    Worker to supervisor: every plugin has started; it takes connections.
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = [(b"pid", amp.Integer())]


class WorkerFailed(amp.Command):
    """
    Worker to supervisor: it cannot start, and why; it exits next.
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = [(b"reason", amp.Unicode())]


class Reload(amp.Command):
    """
    Worker to supervisor: reload every worker (the plugin C{name}, or
    everything); answers the HTTP status and body.
    """

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = [
        (b"name", amp.Unicode(optional=True)),
        (b"everything", amp.Boolean()),
    ]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = [
        (b"status", amp.Integer()),
        (b"body", JSONValue()),
    ]


class ClusterMetrics(amp.Command):
    """
    Worker to supervisor: every worker's counts added up, as the Prometheus
    text C{/metrics} serves.
    """

    response: ClassVar[list[tuple[bytes, amp.Argument]]] = [(b"text", JSONValue())]


class _PipeAddress:
    """
    The address of either end of a worker's pipes (AMP logs it).
    """

    def __repr__(self) -> str:
        return "<pipe>"


class _ChildPipe:
    """
    The transport the supervisor's AMP writes through: one of a worker
    process's pipes.
    """

    def __init__(self, process: Any, fd: int) -> None:
        self._process = process
        self._fd = fd

    def write(self, data: bytes) -> None:
        try:
            self._process.writeToChild(self._fd, data)
        except KeyError:
            pass  # the pipe is closed: the worker is ending

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._process.closeChildFD(self._fd)

    def getPeer(self) -> _PipeAddress:
        return _PipeAddress()

    def getHost(self) -> _PipeAddress:
        return _PipeAddress()


def _call(worker: _Worker, command: type[amp.Command], **arguments: Any) -> defer.Deferred[Any]:
    """
    Call C{command} on C{worker}'s process; fails with
    L{error.ConnectionDone} when it has no open connection.
    """
    connection = worker.connection
    if connection is None:
        return defer.fail(error.ConnectionDone("worker not running"))
    result: defer.Deferred[Any] = connection.callRemote(command, **arguments)
    return result


def _describe_error(failure: Failure, number: int, what: str, timeout: float) -> str:
    """
    Why worker C{number} did not answer C{what}, in words.
    """
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return f"worker {number} did not {what} within {timeout:g} s"
    if failure.check(error.ConnectionLost, error.ConnectionDone, amp.RemoteAmpError):
        if failure.check(amp.RemoteAmpError):
            return f"worker {number} failed to {what}: {failure.getErrorMessage()}"
        return f"worker {number} exited"
    return f"worker {number} failed to {what}: {failure.getErrorMessage()}"


# ---------------------------------------------------------------------------
# The supervisor


@attr.s(auto_attribs=True, eq=False)
class _Worker:
    """
    One worker slot of the supervisor and the process serving it now.
    """

    number: int
    process: Any = None
    protocol: _WorkerProcess | None = None
    pid: int | None = None
    ready: bool = False
    started: float = 0.0
    failure: str | None = None
    restart: Any = None
    counts: Mapping[str, Any] | None = None

    @property
    def connection(self) -> amp.AMP | None:
        """
        The AMP connection to its process, while it is open.
        """
        if self.protocol is None or not self.protocol.connected:
            return None
        return self.protocol.amp


class _SupervisorProtocol(amp.AMP):
    """
    The supervisor's end of one worker's AMP connection: what the worker
    may ask of it.
    """

    def __init__(self, supervisor: Supervisor, worker: _Worker) -> None:
        super().__init__()
        self._supervisor = supervisor
        self._worker = worker

    @WorkerReady.responder
    def ready(self, pid: int) -> dict[str, Any]:
        self._supervisor._workerReady(self._worker, pid)
        return {}

    @WorkerFailed.responder
    def failed(self, reason: str) -> dict[str, Any]:
        self._worker.failure = reason
        return {}

    @Reload.responder
    def reload(self, name: str | None, everything: bool) -> defer.Deferred[dict[str, Any]]:
        d = self._supervisor.reload(name, everything)
        return d.addCallback(lambda answer: {"status": answer[0], "body": answer[1]})

    @ClusterMetrics.responder
    def metrics(self) -> defer.Deferred[dict[str, Any]]:
        return self._supervisor.metrics().addCallback(lambda text: {"text": text})


class _LineLog:
    """
    Lines arriving in pieces from one of a worker's pipes, each handed to
    C{line} once complete.
    """

    def __init__(self, line: Callable[[str], None]) -> None:
        self._line = line
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            if raw.strip():
                self._line(raw.decode("utf-8", "replace"))

    def flush(self) -> None:
        if self._buffer.strip():
            self._line(self._buffer.decode("utf-8", "replace"))
        self._buffer = b""


class _WorkerProcess(protocol.ProcessProtocol):
    """
    The supervisor's view of one worker process: its AMP connection, its
    log and its end.
    """

    def __init__(self, supervisor: Supervisor, worker: _Worker) -> None:
        self._supervisor = supervisor
        self._worker = worker
        self._events = _LineLog(self._event)
        self._stderr = _LineLog(self._errorLine)
        self.amp = _SupervisorProtocol(supervisor, worker)
        self.connected = False
        self._reaper: Any = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.closeStdin()
        self.connected = True
        self.amp.makeConnection(_ChildPipe(self.transport, AMP_IN))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == AMP_OUT:
            self.amp.dataReceived(data)
        elif childFD == 1:
            self._events.feed(data)
        else:
            self._stderr.feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == AMP_OUT:
            self.connected = False
            self.amp.connectionLost(Failure(error.ConnectionDone("worker pipe closed")))
            # The worker is ending: look for its end now, rather than wait
            # for a SIGCHLD that uvloop may have taken over.
            self._reaper = task.LoopingCall(self._reap)
            self._reaper.clock = self._supervisor.clock
            self._reaper.start(0.02, now=True).addErrback(lambda f: None)
        elif childFD == 1:
            self._events.flush()
        elif childFD == 2:
            self._stderr.flush()

    def _reap(self) -> None:
        transport = self.transport
        if transport is None or transport.pid is None:
            self._stopReaper()
            return
        transport.reapProcess()

    def _stopReaper(self) -> None:
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()

    def processEnded(self, reason: Failure) -> None:
        self._stopReaper()
        self._events.flush()
        self._stderr.flush()
        self._supervisor._workerEnded(self._worker, self, reason)

    def _event(self, line: str) -> None:
        try:
            event = eventFromJSON(line)
        except ValueError:
            self._plain(line, "stdout")
            return
        number = self._worker.number
        namespace = event.get("log_namespace", "?")
        level = getattr(event.get("log_level"), "name", "info")
        event["worker"] = number
        event["log_system"] = f"worker {number} {namespace}#{level}"
        globalLogPublisher(event)

    def _errorLine(self, line: str) -> None:
        self._plain(line, "stderr")

    def _plain(self, line: str, stream: str) -> None:
        log.warn(
            "{line}",
            line=line,
            worker=self._worker.number,
            log_system=f"worker {self._worker.number} {stream}",
        )


def _exit_status(reason: Failure) -> str:
    """
    How a process ended, in words: its exit status or its signal.
    """
    value = reason.value
    signum = getattr(value, "signal", None)
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', None)}"


class Supervisor(MultiService):
    """
    The twistd service when there are worker processes: binds the
    listeners, runs and watches the workers, and coordinates their
    reloads.  It serves no HTTP itself.

    @param settings: the configuration in force at start.
    @param reload_settings: re-reads the configuration (SIGHUP); raises
        L{ConfigError}.
    @param command: the worker's command-line arguments that choose its
        configuration: C{{"config", "listen", "plugins", "workers"}} as
        C{twistd pluginserver} got them.
    @param reactor_name: the reactor chosen with C{twistd -r}, for the
        workers to run on too; L{None} for the default.
    @param exitOnListenError: as L{PluginServerService}'s.
    @param notify: tells systemd of the service's state.
    """

    logObserver: Any = None
    """As L{PluginServerService.logObserver}."""

    def __init__(
        self,
        settings: Settings,
        reload_settings: Callable[[], Settings],
        command: Mapping[str, Any],
        reactor: Any,
        reactor_name: str | None = None,
        exitOnListenError: bool = True,
        notify: Callable[..., object] = notify_systemd,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._reloadSettings = reload_settings
        self._command = dict(command)
        self.clock = reactor
        self._reactor = reactor
        self._reactorName = reactor_name
        self._exitOnListenError = exitOnListenError
        self._notifySystemd = notify
        self._workers = [_Worker(n) for n in range(1, settings.workers + 1)]
        self._listeners = [
            Listener(
                description,
                settings.listen_source,
                reactor,
                protocol.Factory.forProtocol(protocol.Protocol),  # type: ignore[arg-type]
                ClientAuth.of(settings),
            )
            for description in settings.listen
        ]
        for listener in self._listeners:
            listener.setServiceParent(self)
        self._reloading = defer.DeferredLock()
        self._stopping = False
        self._servingAll = False
        self._fatal: str | None = None
        self._restarts = 0
        self._retired = Metrics(dict, process=False)
        self._previousHup: Any = None
        self._previousUsr1: Any = None

    def setServiceParent(self, parent: Any) -> Any:
        # As PluginServerService: twistd logs through the application's
        # ILogObserver component when it has one.
        result = super().setServiceParent(parent)
        if self.logObserver is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.logObserver)
        return result

    @property
    def workers(self) -> list[_Worker]:
        """
        The worker slots, by number.
        """
        return list(self._workers)

    # -- start ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bind every listener now, before twistd drops privileges: the
        # workers only ever get the bound sockets.
        privileged_start(self, self._exitOnListenError)
        for listener in self._listeners:
            # The socket is shared: when the supervisor stops listening it
            # closes its descriptor only.  (Twisted's port would shut the
            # socket down first, which ends it in every worker too.)
            listener.port._shouldShutdown = False

    def startService(self) -> None:
        super().startService()
        self._previousHup = signal.signal(signal.SIGHUP, self._onHup)
        self._previousUsr1 = signal.signal(signal.SIGUSR1, self._onUsr1)
        # A worker's end is seen when its pipes close (_WorkerProcess); this
        # is the backstop, as in PluginServerService.
        TimerService(1.0, reapAllProcesses).setServiceParent(self)
        log.info(
            "Supervising {count} workers on {reactor}",
            count=len(self._workers),
            reactor=coroutines.describe_reactor(),
        )
        for worker in self._workers:
            self._spawn(worker, {})

    def _spawn(self, worker: _Worker, stamps: Mapping[str, Any]) -> None:
        """
        Start worker C{worker}'s process.
        """
        worker.restart = None
        if self._stopping:
            return
        worker.ready = False
        worker.failure = None
        worker.started = self.clock.seconds()
        childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: "r", AMP_IN: "w", AMP_OUT: "r"}
        listeners = []
        for offset, listener in enumerate(self._listeners):
            port = listener.port
            childFDs[FIRST_SOCKET + offset] = port.fileno()
            listeners.append(
                {
                    "fd": FIRST_SOCKET + offset,
                    "family": int(port.socket.family),
                    "description": listener.description,
                }
            )
        spec = {
            **self._command,
            "number": worker.number,
            "origin": self._settings.listen_source,
            "reactor": self._reactorName,
            "listeners": listeners,
            "at": time.time(),
            "stamps": dict(stamps),
        }
        env = {k: v for k, v in os.environ.items() if k not in _SUPERVISOR_ONLY}
        env[WORKER_ENVIRONMENT] = str(worker.number)
        process = _WorkerProcess(self, worker)
        worker.protocol = process
        worker.process = self._reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-m", "pluginserver.worker", json.dumps(spec)],
            env=env,
            path=os.getcwd(),
            childFDs=childFDs,
        )
        worker.pid = worker.process.pid
        log.info("Worker {number} started (pid {pid})", number=worker.number, pid=worker.pid)

    def _workerReady(self, worker: _Worker, pid: int) -> None:
        worker.ready = True
        log.info("Worker {number} (pid {pid}) is ready", number=worker.number, pid=pid)
        if not self._servingAll and all(w.ready for w in self._workers):
            self._servingAll = True
            log.info("Serving with {count} workers", count=len(self._workers))
            self._notify("READY=1")

    def _workerEnded(self, worker: _Worker, process: _WorkerProcess, reason: Failure) -> None:
        if worker.protocol is not process:
            return  # an older process of this slot
        how = _exit_status(reason)
        wasReady = worker.ready
        worker.ready = False
        worker.process = worker.protocol = None
        if worker.counts is not None:
            # Its counts stay in the sums: /metrics never goes backwards.
            self._retired.add(worker.counts)
            worker.counts = None
        if self._stopping:
            log.info(
                "Worker {number} (pid {pid}) {how}", number=worker.number, pid=worker.pid, how=how
            )
            return
        if not self._servingAll:
            reason_ = worker.failure or f"it {how} before it was ready"
            self._fail(f"worker {worker.number} failed to start: {reason_}")
            return
        self._restarts += 1
        delay = max(0.0, worker.started + RESTART_INTERVAL - self.clock.seconds())
        log.error(
            "Worker {number} (pid {pid}) {how}{detail}; restarting it{when}",
            number=worker.number,
            pid=worker.pid,
            how=how,
            detail=f" ({worker.failure})"
            if worker.failure
            else ("" if wasReady else " while starting"),
            when=f" in {delay:.1f} s" if delay > 0.05 else "",
        )
        worker.restart = self.clock.callLater(delay, self._restart, worker)

    def _restart(self, worker: _Worker) -> defer.Deferred[None]:
        """
        Start a new process for C{worker}, numbering its plugins' generations
        as a serving worker numbers them; never while a reload runs (which
        waits for it to be ready, see L{_settle}).
        """
        worker.restart = defer.Deferred()  # not None: a restart is under way
        return self._reloading.run(self._restartNow, worker)

    @defer.inlineCallbacks
    def _restartNow(self, worker: _Worker) -> Generator[defer.Deferred[Any], Any, None]:
        stamps: Mapping[str, Any] = {}
        for other in self._workers:
            if other.ready and other.connection is not None:
                try:
                    answer = yield coroutines.bounded(
                        _call(other, Status), STATUS_TIMEOUT, self.clock
                    )
                except Exception:
                    continue
                stamps = answer["plugins"]
                break
        self._spawn(worker, stamps)

    def _fail(self, reason: str) -> None:
        """
        A worker could not start while the server started: stop everything
        and exit non-zero with C{reason}.
        """
        if self._fatal is not None:
            return
        self._fatal = reason
        log.critical("{reason}; stopping", reason=reason)

        def exitNonZero() -> None:
            # twistd has no exit status of its own to give: after its clean
            # shutdown (pidfile removed, log flushed), end with 1 here.
            sys.stdout.flush()
            stream = sys.__stderr__
            if stream is not None:
                stream.write(f"pluginserver: {reason}\n")
                stream.flush()
            os._exit(1)

        atexit.register(exitNonZero)
        if self._reactor.running:
            self._reactor.stop()
        else:
            self._reactor.callWhenRunning(self._reactor.stop)

    def _notify(self, *states: str) -> None:
        try:
            self._notifySystemd(*states)
        except OSError as e:
            log.warn("Cannot notify systemd ({states}): {error}", states=states, error=e)

    # -- signals -----------------------------------------------------------------

    def _onHup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._reloadOnHup)

    def _onUsr1(self, signum: int, frame: Any) -> None:
        # logrotate: the workers write the access log; twistd rotates its own.
        self._reactor.callFromThread(self._signalWorkers, "USR1")
        if callable(self._previousUsr1):
            self._previousUsr1(signum, frame)

    def _signalWorkers(self, name: str) -> None:
        for worker in self._workers:
            if worker.process is not None:
                try:
                    worker.process.signalProcess(name)
                except error.ProcessExitedAlready:
                    pass

    def _reloadOnHup(self) -> None:
        from pluginserver.security import audit_reload

        log.info("SIGHUP: reloading configuration and every plugin in every worker")
        self._notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        d = self.reload(None, everything=True)

        def done(answer: tuple[int, dict[str, Any]]) -> None:
            failed = answer[1].get("failed") or {}
            audit_reload("signal", None, "all", not failed, failed)

        d.addCallback(done)
        d.addErrback(lambda f: log.failure("Reload on SIGHUP failed", f))
        d.addBoth(lambda _: self._notify("READY=1") if not self._stopping else None)

    # -- reloads -------------------------------------------------------------------

    def reload(
        self, name: str | None, everything: bool = False
    ) -> defer.Deferred[tuple[int, dict[str, Any]]]:
        """
        Reload every worker together: the plugin C{name}, or the whole
        configuration and directory (every plugin when C{everything}).
        Fires with the HTTP status and body of the answer: the single
        process's answer, with C{"workers"} holding each worker's own.
        """
        return self._reloading.run(self._reload, name, everything)

    @defer.inlineCallbacks
    def _reload(
        self, name: str | None, everything: bool
    ) -> Generator[defer.Deferred[Any], Any, tuple[int, dict[str, Any]]]:
        if name is None:
            try:
                new = self._reloadSettings()
            except ConfigError:
                pass  # every worker reports it, under "config"
            else:
                for key in ("workers", "listen"):
                    if getattr(new, key) != getattr(self._settings, key):
                        log.warn(
                            "[server] {key} changed in {path}: it takes effect on restart",
                            key=key,
                            path=new.path,
                        )
                self._settings = new
        timeout = self._settings.start_timeout
        yield self._settle(timeout)
        workers = [w for w in self._workers if w.ready and w.connection is not None]
        prepared: dict[int, Any] = {}
        errors: dict[int, str] = {}
        unknown = False
        results = yield defer.DeferredList(
            [
                coroutines.bounded(
                    _call(w, PrepareReload, name=name, everything=everything),
                    timeout,
                    self.clock,
                )
                for w in workers
            ],
            consumeErrors=True,
        )
        for worker, (ok, value) in zip(workers, results, strict=True):
            if ok:
                prepared[worker.number] = value["result"]
            elif value.check(UnknownPluginError):
                unknown = True
            else:
                errors[worker.number] = _describe_error(value, worker.number, "prepare", timeout)
        if unknown:
            yield self._abort(workers)
            return 404, {"error": f"no plugin named {name!r}"}
        if name is not None:
            result: tuple[int, dict[str, Any]] = yield self._reloadOne(
                name, workers, prepared, errors
            )
        else:
            result = yield self._reloadAll(workers, prepared, errors)
        return result

    @defer.inlineCallbacks
    def _settle(self, timeout: float) -> Generator[defer.Deferred[Any], Any, None]:
        """
        Wait (up to C{timeout} seconds) until no worker is starting, so that
        a reload reaches every worker that is about to serve: one that
        started before it would serve generations it never had.
        """
        waited = 0.0
        while waited < timeout and any(
            w.process is not None and not w.ready for w in self._workers
        ):
            yield task.deferLater(self.clock, 0.05, lambda: None)
            waited += 0.05

    @defer.inlineCallbacks
    def _abort(self, workers: Sequence[_Worker]) -> Generator[defer.Deferred[Any], Any, None]:
        yield defer.DeferredList(
            [
                coroutines.bounded(_call(w, AbortReload), STATUS_TIMEOUT, self.clock)
                for w in workers
                if w.connection is not None
            ],
            consumeErrors=True,
        )

    @defer.inlineCallbacks
    def _commit(
        self,
        workers: Sequence[_Worker],
        stamps: Mapping[str, Any],
        skip: Mapping[str, str],
    ) -> Generator[defer.Deferred[Any], Any, dict[int, Any]]:
        """
        Commit on every worker; each one's result, or the words of its
        failure under C{"error"}.
        """
        timeout = self._settings.start_timeout
        results = yield defer.DeferredList(
            [_call(w, CommitReload, stamps=stamps, skip=skip) for w in workers],
            consumeErrors=True,
        )
        committed: dict[int, Any] = {}
        for worker, (ok, value) in zip(workers, results, strict=True):
            if ok:
                committed[worker.number] = value["result"]
            else:
                committed[worker.number] = {
                    "error": _describe_error(value, worker.number, "commit", timeout)
                }
        return committed

    def _stamps(self, prepared: Mapping[int, Any], stems: Sequence[str]) -> dict[str, Any]:
        """
        The number and load time of the next generation of each of C{stems},
        alike on every worker: one more than the highest serving now.
        """
        at = time.time()
        stamps: dict[str, Any] = {}
        for stem in stems:
            current = [r["current"].get(stem) for r in prepared.values()]
            highest = max((g for g in current if g is not None), default=0)
            stamps[stem] = [highest + 1, at]
        return stamps

    @defer.inlineCallbacks
    def _reloadOne(
        self,
        name: str,
        workers: Sequence[_Worker],
        prepared: Mapping[int, Any],
        errors: Mapping[int, str],
    ) -> Generator[defer.Deferred[Any], Any, tuple[int, dict[str, Any]]]:
        refused = dict(errors)
        for number, result in sorted(prepared.items()):
            outcome = result["outcome"]
            if outcome is not None:
                refused[number] = outcome["error"] or "failed"
        answers: dict[str, dict[str, Any]] = {}
        if refused or not workers:
            yield self._abort(workers)
            first = min(refused) if refused else None
            why = refused[first] if first is not None else "no worker is serving"
            current = self._current(prepared, name)
            for worker in workers:
                own = prepared.get(worker.number, {}).get("outcome")
                answers[str(worker.number)] = own or {
                    "reloaded": name,
                    "success": False,
                    "generation": current,
                    "error": refused.get(worker.number)
                    or f"not reloaded: worker {first} did not prepare",
                }
            body = {
                "reloaded": name,
                "success": False,
                "generation": current,
                "error": why,
                "workers": answers,
            }
            return 500, body
        stems = sorted({stem for r in prepared.values() for stem in r["tried"]})
        committed = yield self._commit(workers, self._stamps(prepared, stems), {})
        for number, result in sorted(committed.items()):
            answers[str(number)] = result.get("outcome") or {
                "reloaded": name,
                "success": False,
                "generation": None,
                "error": result["error"],
            }
        outcomes = list(answers.values())
        success = all(o["success"] for o in outcomes)
        shown = outcomes[0] if success else next(o for o in outcomes if not o["success"])
        body = {
            "reloaded": shown["reloaded"],
            "success": success,
            "generation": shown["generation"],
        }
        if not success:
            body["error"] = shown.get("error")
        body["workers"] = answers
        return 200 if success else 500, body

    def _current(self, prepared: Mapping[int, Any], name: str) -> int | None:
        for result in prepared.values():
            outcome = result.get("outcome")
            if outcome is not None:
                return outcome.get("generation")  # type: ignore[no-any-return]
            for generation in result["current"].values():
                return generation  # type: ignore[no-any-return]
        return None

    @defer.inlineCallbacks
    def _reloadAll(
        self,
        workers: Sequence[_Worker],
        prepared: Mapping[int, Any],
        errors: Mapping[int, str],
    ) -> Generator[defer.Deferred[Any], Any, tuple[int, dict[str, Any]]]:
        answers: dict[str, dict[str, Any]] = {}
        if errors or not workers:
            yield self._abort(workers)
            failed = {f"worker {n}": why for n, why in sorted(errors.items())}
            if not workers:
                failed["workers"] = "no worker is serving"
            for worker in workers:
                answers[str(worker.number)] = {
                    "error": errors.get(worker.number) or "not reloaded: another worker failed"
                }
            body = {
                "status": "All plugins reloaded",
                "loaded_plugins": self._loaded(prepared),
                "added": [],
                "removed": [],
                "failed": failed,
                "workers": answers,
            }
            return 500, body
        # A source that failed in one worker is left out in every one, and
        # so is one that read differently (its file changed meanwhile).
        skip: dict[str, str] = {}
        stems = sorted({stem for r in prepared.values() for stem in r["tried"]})
        for stem in stems:
            digests = {n: r["tried"].get(stem) for n, r in prepared.items()}
            missing = sorted(n for n, d in digests.items() if d is None)
            if missing:
                failure = prepared[missing[0]]["untried"].get(stem, "not found")
                skip[stem] = f"failed in worker {missing[0]}: {failure}"
            elif len(set(digests.values())) > 1:
                skip[stem] = f"{stem}.py changed while it was reloaded"
        commit = [stem for stem in stems if stem not in skip]
        committed = yield self._commit(workers, self._stamps(prepared, commit), skip)
        failures: dict[str, str] = {}
        first: dict[str, Any] | None = None
        for number, result in sorted(committed.items()):
            if "error" in result:
                failures[f"worker {number}"] = result["error"]
                answers[str(number)] = {"error": result["error"]}
                continue
            own = result["body"]
            answers[str(number)] = own
            failures.update(own["failed"])
            if first is None:
                first = own
        body = {
            "status": "All plugins reloaded",
            "loaded_plugins": first["loaded_plugins"] if first else self._loaded(prepared),
            "added": first["added"] if first else [],
            "removed": first["removed"] if first else [],
            "failed": failures,
            "workers": answers,
        }
        return 500 if failures else 200, body

    def _loaded(self, prepared: Mapping[int, Any]) -> list[str]:
        for result in prepared.values():
            return list(result.get("loaded", []))
        return []

    # -- metrics -------------------------------------------------------------------

    @defer.inlineCallbacks
    def metrics(self) -> Generator[defer.Deferred[Any], Any, str]:
        """
        The Prometheus text of every worker's counts added up (a worker that
        does not answer in time counts with what it last gave), with the
        supervisor's own process metrics, C{pluginserver_workers} and
        C{pluginserver_worker_restarts_total}.
        """
        workers = [w for w in self._workers if w.connection is not None]
        results = yield defer.DeferredList(
            [
                coroutines.bounded(_call(w, CollectMetrics), STATUS_TIMEOUT, self.clock)
                for w in workers
            ],
            consumeErrors=True,
        )
        for worker, (ok, value) in zip(workers, results, strict=True):
            if ok:
                worker.counts = value["metrics"]
        generations: dict[str, int] = {}
        total = Metrics(lambda: generations)
        total.add(self._retired.snapshot())
        for worker in self._workers:
            if worker.counts is not None:
                total.add(worker.counts)
                for plugin, number in worker.counts["generations"].items():
                    generations[plugin] = max(generations.get(plugin, 0), number)
        total.extra = self._ownMetrics
        text: str = total.exposition().decode("utf-8")
        return text

    def _ownMetrics(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        serving = GaugeMetricFamily("pluginserver_workers", "Worker processes serving now (ready).")
        serving.add_metric([], sum(1 for w in self._workers if w.ready))
        restarts = CounterMetricFamily(
            "pluginserver_worker_restarts",
            "Worker processes restarted after they ended unasked.",
        )
        restarts.add_metric([], self._restarts)
        return [serving, restarts]

    # -- stop ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self) -> Generator[defer.Deferred[Any], Any, None]:
        self._stopping = True
        self._notify("STOPPING=1")
        for previous, signum in (
            (self._previousHup, signal.SIGHUP),
            (self._previousUsr1, signal.SIGUSR1),
        ):
            if previous is not None:
                signal.signal(signum, previous)
        self._previousHup = self._previousUsr1 = None
        for worker in self._workers:
            restart = worker.restart
            if getattr(restart, "active", lambda: False)():
                restart.cancel()
        # Stop listening first, as a single process does: new connections
        # are refused once every worker has closed its copy of the socket.
        yield super().stopService()
        self._signalWorkers("TERM")
        deadline = self._settings.shutdown_timeout + self._settings.start_timeout + 5.0
        waited = 0.0
        while any(w.process is not None for w in self._workers) and waited < deadline:
            yield task.deferLater(self.clock, 0.05, lambda: None)
            waited += 0.05
        left = [w for w in self._workers if w.process is not None]
        if left:
            log.error(
                "Workers {numbers} still running {deadline:g} s after SIGTERM: killing them",
                numbers=[w.number for w in left],
                deadline=deadline,
            )
            self._signalWorkers("KILL")
            for _ in range(100):
                if all(w.process is None for w in self._workers):
                    break
                yield task.deferLater(self.clock, 0.05, lambda: None)
        log.info("pluginserver stopped")


# ---------------------------------------------------------------------------
# The worker


class _AdoptedUNIXPort(UNIXPort):
    """
    A C{unix:} listening socket adopted from the supervisor: unlike
    Twisted's own adopted port, it neither changes the socket file's mode
    nor removes the file when it stops listening (the supervisor and the
    other workers still serve it; the supervisor removes it).
    """

    # Close this process's descriptor only, never shut the shared socket
    # down (as Twisted's adopted TCP ports do).
    _shouldShutdown = False

    def connectionLost(self, reason: Failure) -> None:
        # Skip UNIXPort.connectionLost's unlink: the tcp.Port cleanup only.
        super(UNIXPort, self).connectionLost(reason)


@implementer(IStreamServerEndpoint)
class _Adopted:
    """
    An endpoint serving a listening socket inherited from the supervisor
    (C{IReactorSocket.adoptStreamPort}), with TLS applied here when the
    listener is C{ssl:}.
    """

    def __init__(
        self, reactor: Any, fd: int, family: int, tls: SwappableContextFactory | None
    ) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family
        self._tls = tls

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        if self._tls is not None:
            # The swappable factory is an IOpenSSLContextFactory (mypy does
            # not see zope's @implementer).
            context: Any = self._tls
            factory = TLSMemoryBIOFactory(context, False, factory)
        try:
            if self._family == socket.AF_UNIX:
                with socket.socket(socket.AF_UNIX, fileno=os.dup(self._fd)) as copy:
                    path = copy.getsockname()
                port = _AdoptedUNIXPort._fromListeningDescriptor(self._reactor, self._fd, factory)
                if isinstance(path, str) and path and not path.startswith("\0"):
                    # Twisted would set its default mode: keep the one the
                    # supervisor's endpoint string gave.
                    port.mode = stat.S_IMODE(os.stat(path).st_mode)
                port.startListening()
            else:
                port = self._reactor.adoptStreamPort(self._fd, self._family, factory)
            os.close(self._fd)  # the port holds its own copy
        except Exception:
            return defer.fail()
        return defer.succeed(port)


class _WorkerProtocol(amp.AMP):
    """
    The worker's end of its AMP connection: what the supervisor asks of it.
    """

    def __init__(self, worker: _WorkerSide) -> None:
        super().__init__()
        self._worker = worker

    @PrepareReload.responder
    def prepare(self, name: str | None, everything: bool) -> defer.Deferred[dict[str, Any]]:
        return self._worker.service.prepare(name, everything).addCallback(
            lambda result: {"result": result}
        )

    @CommitReload.responder
    def commit(
        self, stamps: Mapping[str, Any], skip: Mapping[str, str]
    ) -> defer.Deferred[dict[str, Any]]:
        return self._worker.service.commit(stamps, skip).addCallback(
            lambda result: {"result": result}
        )

    @AbortReload.responder
    def abort(self) -> dict[str, Any]:
        self._worker.service.abort()
        return {}

    @Status.responder
    def status(self) -> dict[str, Any]:
        registry = self._worker.service.registry
        return {"plugins": {p.stem: [p.generation, p.loaded_at] for p in registry.plugins.values()}}

    @CollectMetrics.responder
    def collect(self) -> dict[str, Any]:
        return {"metrics": self._worker.service.metrics.snapshot()}

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        # The supervisor is gone (or this worker is ending): stop.
        self._worker.stop()


class _Cluster:
    """
    What the web layer of a worker asks of the whole server (C{/reload/...},
    C{/metrics}): the supervisor answers.
    """

    def __init__(self, worker: _WorkerSide) -> None:
        self._worker = worker
        self.number = worker.number

    def reload(
        self, name: str | None, everything: bool = False
    ) -> defer.Deferred[tuple[int, dict[str, Any]]]:
        """
        Reload every worker; fires with the HTTP status and body to answer.
        """
        d: defer.Deferred[Any] = self._worker.amp.callRemote(
            Reload, name=name, everything=everything
        )
        return d.addCallback(lambda answer: (answer["status"], answer["body"]))

    def metrics(self) -> defer.Deferred[str]:
        """
        The Prometheus text of every worker's counts.
        """
        d: defer.Deferred[Any] = self._worker.amp.callRemote(ClusterMetrics)
        return d.addCallback(lambda answer: answer["text"])


class WorkerService(PluginServerService):
    """
    The service of one worker process: a single process's service whose
    reloads are the supervisor's to start and to coordinate.

    @ivar cluster: what the web layer asks of the whole server.
    """

    cluster: _Cluster

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stamps: dict[str, tuple[int, float]] = {}
        self._pendingSettings: tuple[Settings | None, dict[str, str]] | None = None
        self.registry.stamp = lambda stem, previous: self._stamps.get(stem)

    def number_first_load(self, stamps: Mapping[str, Any], at: float) -> None:
        """
        Number the first generations as the serving workers numbered theirs
        (C{stamps}: C{{stem: [generation, loaded_at]}}), and date the others
        C{at}.
        """
        known = {stem: (int(g), float(t)) for stem, (g, t) in stamps.items()}
        self.registry.stamp = lambda stem, previous: known.get(stem, (1, at))

    def _loaded(self, report: ReloadReport) -> None:
        super()._loaded(report)
        self.registry.stamp = lambda stem, previous: self._stamps.get(stem)

    def _reloadOnHup(self) -> None:
        from pluginserver.security import audit_reload

        log.info("SIGHUP in a worker: the supervisor reloads every worker")
        d = self.cluster.reload(None, everything=True)

        def done(answer: tuple[int, dict[str, Any]]) -> None:
            failed = answer[1].get("failed") or {}
            audit_reload("signal", None, "all", not failed, failed, worker=self.cluster.number)

        d.addCallback(done)
        d.addErrback(lambda f: log.failure("Reload on SIGHUP failed", f))

    @defer.inlineCallbacks
    def prepare(
        self, name: str | None, everything: bool
    ) -> Generator[defer.Deferred[Any], Any, dict[str, Any]]:
        """
        The first step of a reload (L{PluginRegistry.prepare_reload}), with
        the configuration re-read when it is the whole directory's.
        """
        registry = self.registry
        if name is None:
            failures: dict[str, str] = {}
            new = self.reread_settings(failures)
            self._pendingSettings = (new, failures)
            settings = new or self.settings
            try:
                pending: PendingReload = yield registry.prepare_reload(
                    None, settings.plugin_params, settings, everything
                )
            except BaseException:
                self._pendingSettings = None
                raise
        else:
            try:
                pending = yield registry.prepare_reload(name)
            except KeyError:
                raise UnknownPluginError(name) from None
        names = {p.stem: p.name for p in registry.plugins.values()}
        untried = {
            stem: pending.failed.get(names.get(stem, stem)) or pending.failed.get(stem) or "failed"
            for stem in pending.current
            if stem not in pending.tried
        }
        return {
            "ready": pending.ready,
            "tried": {stem: tried.digest for stem, tried in pending.tried.items()},
            "current": pending.current,
            "untried": untried,
            "loaded": sorted(registry.plugins),
            "outcome": _answer(pending.outcome) if pending.outcome is not None else None,
        }

    @defer.inlineCallbacks
    def commit(
        self, stamps: Mapping[str, Any], skip: Mapping[str, str]
    ) -> Generator[defer.Deferred[Any], Any, dict[str, Any]]:
        """
        The second step of a reload (L{PluginRegistry.commit_reload}); the
        answer this worker would give alone.
        """
        self._stamps = {stem: (int(g), float(t)) for stem, (g, t) in stamps.items()}
        pendingSettings, self._pendingSettings = self._pendingSettings, None
        try:
            if pendingSettings is not None:
                new, failures = pendingSettings
                if new is not None:
                    self.apply_settings(new)
                self.reload_certificates(failures)
            result = yield self.registry.commit_reload(skip)
        finally:
            self._stamps = {}
        if isinstance(result, ReloadOutcome):
            return {"outcome": _answer(result)}
        self.log_reload(result)
        failed = dict(result.failed)
        failed.update(pendingSettings[1] if pendingSettings is not None else {})
        return {
            "body": {
                "status": "All plugins reloaded",
                "loaded_plugins": result.loaded,
                "added": result.added,
                "removed": result.removed,
                "failed": failed,
            }
        }

    def abort(self) -> None:
        """
        Drop the prepared reload.
        """
        self._pendingSettings = None
        self.registry.abort_reload()


def _answer(outcome: ReloadOutcome) -> dict[str, Any]:
    """
    The body C{/reload/<name>} answers for C{outcome} in a single process.
    """
    body: dict[str, Any] = {
        "reloaded": outcome.name,
        "success": outcome.success,
        "generation": outcome.generation,
    }
    if not outcome.success:
        body["error"] = outcome.error
    return body


class _WorkerSide:
    """
    One worker process: its service, its AMP connection to the supervisor,
    its start and its end.
    """

    def __init__(self, spec: Mapping[str, Any], settings: Settings, reactor: Any) -> None:
        self.number = int(spec["number"])
        self._spec = spec
        self._settings = settings
        self._reactor = reactor
        self.exitCode = 0
        self._stopping = False
        self._ready = False
        self.amp = _WorkerProtocol(self)
        self.service = self._makeService()

    def _makeService(self) -> WorkerService:
        from pluginserver.tap import Options

        spec = self._spec
        options = Options.of(spec)
        service = WorkerService(
            self._settings,
            reload_settings=options.load,
            reactor=self._reactor,
            exitOnListenError=False,
            notify=self._notify,
        )
        service.cluster = _Cluster(self)
        service.number_first_load(spec.get("stamps") or {}, float(spec.get("at") or time.time()))
        client = ClientAuth.of(self._settings)
        for listener in spec["listeners"]:
            description = listener["description"]
            tls = (
                SwappableContextFactory(load_context_factory(self._reactor, description, client))
                if is_tls(description)
                else None
            )
            endpoint = _Adopted(self._reactor, listener["fd"], listener["family"], tls)
            Listener(
                description,
                spec.get("origin") or "",
                self._reactor,
                service.site,
                client,
                endpoint=(endpoint, tls),
            ).setServiceParent(service)
        return service

    def start(self) -> None:
        """
        Connect to the supervisor, adopt the sockets and start the service
        (on the reactor, once it runs).
        """
        # Ctrl-C in a terminal reaches every process of the group: the
        # supervisor stops the workers itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # (mypy reads the Windows StandardIO, which has no stdin/stdout.)
        stdio.StandardIO(  # type: ignore[call-arg]
            self.amp, stdin=AMP_IN, stdout=AMP_OUT, reactor=self._reactor
        )
        try:
            self.service.privilegedStartService()
            self.service.startService()
        except BaseException as e:
            reason = str(e) or type(e).__name__
            log.critical(
                "Worker {number} cannot start: {reason}", number=self.number, reason=reason
            )
            self.fail(reason)
            return
        self._reactor.addSystemEventTrigger("before", "shutdown", self.service.stopService)

    def _notify(self, *states: str) -> None:
        if "READY=1" in states and not self._ready:
            self._ready = True
            self.amp.callRemote(WorkerReady, pid=os.getpid()).addErrback(lambda f: None)

    def fail(self, reason: str) -> None:
        """
        Tell the supervisor why this worker cannot start, and end.
        """
        self.exitCode = 1
        d = coroutines.bounded(
            self.amp.callRemote(WorkerFailed, reason=reason), STATUS_TIMEOUT, self._reactor
        )
        d.addBoth(lambda _: self.stop())

    def stop(self) -> None:
        """
        End this worker (gracefully: the service stops before the reactor).
        """
        if self._stopping:
            return
        self._stopping = True
        if self._reactor.running:
            self._reactor.stop()


def run_worker(spec: Mapping[str, Any], settings: Settings, reactor: Any) -> int:
    """
    Run a worker process (L{pluginserver.worker}, which installed the
    reactor) until it ends; return its exit status.

    @param spec: what the supervisor gives (L{Supervisor._spawn}).
    @param settings: the configuration, read as the supervisor reads it.
    """
    # Every event goes to the supervisor as one JSON line on the standard
    # output; print() and warnings become events too.
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    observer: Any = jsonFileLogObserver(events, recordSeparator="")
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=True)
    try:
        worker = _WorkerSide(spec, settings, reactor)
    except Exception as e:
        log.critical("Worker cannot start: {error}", error=str(e))
        return 1
    reactor.callWhenRunning(worker.start)
    reactor.run()
    return worker.exitCode


__all__ = [
    "AbortReload",
    "ClusterMetrics",
    "CollectMetrics",
    "CommitReload",
    "JSONValue",
    "PrepareReload",
    "Reload",
    "Status",
    "Supervisor",
    "WorkerFailed",
    "WorkerReady",
    "WorkerService",
    "run_worker",
]
