# -*- test-case-name: tests.test_testing -*-
"""
Test a plugin in a few lines: serve it in memory through the server's own
pieces, send it requests, read the answers.

    from twisted.trial.unittest import TestCase

    from pluginserver.testing import serve

    class HelloTests(TestCase):
        async def test_hello(self):
            server = await serve(self, "plugins/hello.py")
            answer = await server.get("/hello?name=you")
            self.assertEqual(answer.status, 200)
            self.assertEqual(answer.json(), {"hello": "you"})

What answers is what answers in production: a real L{PluginRegistry} loads
the plugin files, and requests reach them through L{PluginServerResource}
and L{PluginServerSite}'s own HTTP channel, so keys, CORS, the allow-lists,
argument merging, limits and the headers of every answer behave as they do
behind a port.  Only the socket is replaced: each request is written to the
channel over an in-memory transport, and its L{Answer} is delivered as soon
as the channel has written a complete one, however late that is (an
asynchronous handler, a blocking one in the thread pool, a reload whose
modules are imported in a thread).  Nothing polls, and no port is opened.

Time that the server measures (C{request_timeout}, C{idle_timeout},
C{header_timeout}) runs on L{Server.clock}, a L{Clock} the test advances.
Plugins themselves run on the real reactor, as trial runs it.

This module knows nothing of any HTTP client library: it speaks HTTP/1.1
bytes itself, and L{Server.send} writes raw bytes for tests of framing.
L{read_answers} reads the answers in the bytes a server wrote on any
connection, the way this client reads its own.
"""

from __future__ import annotations

import itertools
import json as _json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, overload
from urllib.parse import quote, urlencode, urlsplit

import attr
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from pluginserver.config import ConfigError, Settings, load_settings
from pluginserver.metrics import Metrics
from pluginserver.registry import PluginRegistry, ReloadReport
from pluginserver.service import DaemonThreadPool
from pluginserver.site import PluginServerChannel, PluginServerSite
from pluginserver.web import PluginServerResource

__all__ = ["Answer", "Reading", "Server", "read_answers", "serve"]

_packages = itertools.count(1)
_ports = itertools.count(50000)

_SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8080)

_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))
"""What a request target may hold as it is: printable ASCII but space."""


@attr.s(auto_attribs=True, frozen=True)
class Answer:
    """
    One answer as a client received it.

    @ivar status: the status code.
    @ivar headers: every header as sent (C{Content-Length} included), in a
        L{Headers}: C{answer.headers.getRawHeaders("content-type")}.
    @ivar body: the body, de-chunked; empty for C{HEAD}, 1xx, 204 and 304.
    @ivar version: the HTTP version of its status line (C{b"HTTP/1.1"}).
    @ivar chunks: the chunks of a chunked body, as they were sent; L{None}
        when the body was not chunked.
    """

    status: int
    headers: Headers = attr.ib(repr=False)
    body: bytes
    version: bytes = attr.ib(default=b"HTTP/1.1", kw_only=True)
    chunks: tuple[bytes, ...] | None = attr.ib(default=None, kw_only=True, repr=False)

    def json(self) -> Any:
        """
        The body decoded as JSON.
        """
        return _json.loads(self.body)

    @overload
    def header(self, name: str) -> str | None: ...

    @overload
    def header(self, name: bytes) -> bytes | None: ...

    def header(self, name: str | bytes) -> str | bytes | None:
        """
        The values of the header C{name} (in any case) joined into one, as
        C{", "} joins a list; L{None} when it was not sent.  Read a header
        that must not be joined (C{Set-Cookie}) from L{headers}.
        """
        if isinstance(name, str):
            text = self.headers.getRawHeaders(name)
            return None if text is None else ", ".join(text)
        raw = self.headers.getRawHeaders(name)
        return None if raw is None else b", ".join(raw)


def _interim(status: int) -> bool:
    # A 101 is final: it answers the upgraded request, and ends HTTP.
    return 100 <= status < 200 and status != 101


@attr.s(auto_attribs=True, frozen=True)
class Reading:
    """
    What a client reads in the bytes a server wrote on a connection; made
    by L{read_answers}.

    @ivar answers: the complete answers, in order, interim ones (C{100
        Continue}) included.
    @ivar leftover: the bytes after them: an answer not complete yet, what
        follows a C{101 Switching Protocols}, or bytes that are no answer.
    @ivar error: why the leftover is no answer (a malformed status line,
        header field, length or chunk); L{None} when it is only incomplete,
        empty, or after a C{101}.
    """

    answers: tuple[Answer, ...]
    leftover: bytes
    error: str | None = None

    @property
    def final(self) -> tuple[Answer, ...]:
        """
        The answers less the interim ones: one for each request answered.
        """
        return tuple(a for a in self.answers if not _interim(a.status))

    @property
    def interim(self) -> tuple[Answer, ...]:
        """
        The interim answers (1xx but C{101}), which answer no request.
        """
        return tuple(a for a in self.answers if _interim(a.status))


_TEXT = rb"[\t\x20-\x7e\x80-\xff]"
"""A byte of a reason phrase, field value or chunk extension: no control
but HTAB."""

_STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) ([1-5][0-9][0-9])(?: %b*)?" % _TEXT)
_FIELD = re.compile(rb"([!#$%%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(%b*?)[ \t]*" % _TEXT)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)(?:[ \t]*;%b*)?" % _TEXT)


class _IncompleteError(Exception):
    """
    The answer has not all arrived yet.
    """


class _MalformedError(Exception):
    """
    What the server wrote is no answer; the message says why.
    """


def read_answers(
    data: bytes, methods: Sequence[bytes] | None = (), closed: bool = False
) -> Reading:
    """
    Read the answers in C{data}, the bytes a server wrote on a connection,
    as a strict client does (RFC 9112): bytes that are no answer stop the
    reading and are left over, so that a test sees them, never an answer
    made of them.

    @param methods: the methods of the requests, in order: the n-th final
        answer answers C{methods[n]}, or a C{GET} past their end.  An answer
        to C{HEAD} has no body, whatever its headers say.  L{None} when they
        are not known (bytes a fuzzer made): then an answer with a
        C{Content-Length} is taken as one to C{HEAD} when nothing follows
        its head, or the next status line does; so read what a connection
        carried to its end.
    @param closed: whether the server has closed the connection: a body
        framed by neither chunks nor a C{Content-Length} runs to the end of
        C{data} then, and is incomplete until then.
    """
    answers: list[Answer] = []
    answered = 0  # final answers so far
    position = 0
    while position < len(data):
        method = b"GET" if methods is None or answered >= len(methods) else methods[answered]
        try:
            answer, end = _answer(data, position, method, methods is None, closed)
        except _IncompleteError:
            break
        except _MalformedError as e:
            return Reading(tuple(answers), data[position:], str(e))
        answers.append(answer)
        position = end
        if not _interim(answer.status):
            answered += 1
        if answer.status == 101:  # what follows is another protocol's
            break
    return Reading(tuple(answers), data[position:])


def _answer(
    data: bytes, start: int, method: bytes, guessHead: bool, closed: bool
) -> tuple[Answer, int]:
    """
    The answer at C{data[start:]} to a request with C{method}, and where it
    ends.  Its body is framed as RFC 9112 §6.3 says: none for C{HEAD}, 1xx,
    204 and 304; chunks; a C{Content-Length}; or else the end of the
    connection.

    @raise _IncompleteError: it has not all arrived.
    @raise _MalformedError: it is no answer.
    """
    lineEnd = data.find(b"\r\n", start)
    if lineEnd < 0:
        raise _IncompleteError()
    line = _STATUS_LINE.fullmatch(data, start, lineEnd)
    if line is None:
        raise _MalformedError(f"not a status line: {data[start:lineEnd]!r}")
    headEnd = data.find(b"\r\n\r\n", lineEnd)
    if headEnd < 0:
        raise _IncompleteError()
    headers = _fields(data[lineEnd + 2 : headEnd + 2])
    version, status, bodyStart = line[1], int(line[2]), headEnd + 4
    encodings = b",".join(headers.getRawHeaders(b"transfer-encoding", [])).lower()
    codings = [coding.strip() for coding in encodings.split(b",") if coding.strip()]
    lengths = headers.getRawHeaders(b"content-length")
    if lengths is not None and (len(lengths) != 1 or not lengths[0].isdigit()):
        raise _MalformedError(f"not one Content-Length: {lengths!r}")
    if lengths is not None and codings:
        raise _MalformedError("a Content-Length and a Transfer-Encoding")

    def answer(body: bytes, chunks: tuple[bytes, ...] | None = None) -> Answer:
        return Answer(status, headers, body, version=version, chunks=chunks)

    if method == b"HEAD" or status < 200 or status in (204, 304):
        return answer(b""), bodyStart
    if guessHead and lengths and data[bodyStart : bodyStart + 5] in (b"", b"HTTP/"):
        return answer(b""), bodyStart
    if codings[-1:] == [b"chunked"]:
        if b"chunked" in codings[:-1]:
            raise _MalformedError("chunked twice")
        chunks, end = _dechunk(data, bodyStart)
        return answer(b"".join(chunks), chunks), end
    if lengths:
        end = bodyStart + int(lengths[0])
        if len(data) < end:
            raise _IncompleteError()
        return answer(data[bodyStart:end]), end
    if not closed:  # the body ends with the connection
        raise _IncompleteError()
    return answer(data[bodyStart:]), len(data)


def _fields(lines: bytes) -> Headers:
    """
    The header fields of C{lines}, each ended by CRLF.

    @raise _MalformedError: one is not C{name: value}.
    """
    headers = Headers()
    for line in lines.split(b"\r\n")[:-1]:
        field = _FIELD.fullmatch(line)
        if field is None:
            raise _MalformedError(f"not a header field: {line!r}")
        headers.addRawHeader(field[1], field[2])
    return headers


def _dechunk(data: bytes, position: int) -> tuple[tuple[bytes, ...], int]:
    """
    The chunks of the chunked body at C{data[position:]}, and where it
    ends, after its trailer section (checked, not kept).

    @raise _IncompleteError: it has not all arrived.
    @raise _MalformedError: a chunk size, a chunk's end or a trailer is wrong.
    """
    chunks: list[bytes] = []
    while True:
        lineEnd = data.find(b"\r\n", position)
        if lineEnd < 0:
            raise _IncompleteError()
        size = _CHUNK_SIZE.fullmatch(data, position, lineEnd)
        if size is None:
            raise _MalformedError(f"not a chunk size: {data[position:lineEnd]!r}")
        position, length = lineEnd + 2, int(size[1], 16)
        if length == 0:
            break
        end = position + length
        if len(data) < end + 2:
            raise _IncompleteError()
        if data[end : end + 2] != b"\r\n":
            raise _MalformedError(f"a chunk of {length} bytes not ended by CRLF")
        chunks.append(data[position:end])
        position = end + 2
    if data.startswith(b"\r\n", position):  # no trailers
        return tuple(chunks), position + 2
    end = data.find(b"\r\n\r\n", position)
    if end < 0:
        raise _IncompleteError()
    _fields(data[position : end + 2])
    return tuple(chunks), end + 4


class _Connection(StringTransport):
    """
    The server's side of one in-memory connection: a L{StringTransport}
    that reads what the channel writes as it writes it, and hands the
    answer to its L{Server} as soon as it is complete.
    """

    def __init__(self, server: Server, method: bytes) -> None:
        peer = IPv4Address("TCP", "127.0.0.1", next(_ports))
        # The channel may pause or resume its transport after closing it.
        super().__init__(_SERVER_ADDRESS, peer, lenient=True)  # type: ignore[no-untyped-call]
        self._server = server
        self._method = method
        self._settled = False
        self._lost = False
        self.answer: defer.Deferred[Answer] = defer.Deferred()
        self.protocol: PluginServerChannel = server.site.buildProtocol(peer)  # type: ignore[no-untyped-call]
        self.protocol.makeConnection(self)

    def write(self, data: bytes) -> None:
        self.io.write(data)
        self._check()

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.io.write(b"".join(data))
        self._check()

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._check()

    def _check(self) -> None:
        if self._settled:
            return
        received: bytes = self.io.getvalue()
        reading = read_answers(received, [self._method], self.disconnecting)
        result: Answer | Failure
        if reading.final:  # interim answers (100 Continue) are skipped
            result = reading.final[0]
        elif reading.error is not None:
            result = Failure(ValueError(f"the server wrote no answer: {reading.error}"))
        elif self.disconnecting:
            reason = "the server closed the connection before a complete answer"
            result = Failure(ConnectionLost(f"{reason}: {received!r}"))
        else:
            return
        self._settled = True
        self._server._ready(self, result)

    def close(self) -> None:
        """
        The client goes away (after its answer, or when the test ends).
        """
        if self._lost:
            return
        self._lost = True
        self.connected = False
        self.protocol.connectionLost(Failure(ConnectionDone("the client closed")))


class _Time:
    """
    The reactor the web resource is given: time (C{request_timeout}, the
    once-a-minute warnings) comes from the test's clock, while the answers
    of blocking handlers come back from the thread pool through the real
    reactor.
    """

    def __init__(self, clock: Clock, reactor: Any) -> None:
        self._clock = clock
        self._reactor = reactor

    def callLater(self, delay: float, f: Callable[..., object], *args: Any, **kw: Any) -> Any:
        return self._clock.callLater(delay, f, *args, **kw)

    def seconds(self) -> float:
        return self._clock.seconds()

    def callFromThread(self, f: Callable[..., object], *args: Any, **kw: Any) -> None:
        self._reactor.callFromThread(f, *args, **kw)


class Server:
    """
    Plugins served in memory; made by L{serve}.

    It is also the runtime the web resource serves (its C{settings},
    C{registry}, C{stopping} and C{reload_all}), as the service is in
    production.

    @ivar directory: the plugins directory served.
    @ivar registry: the real L{PluginRegistry} over it.
    @ivar clock: the time the server measures; advance it to make a
        pending request time out.
    @ivar report: what the first load did (C{report.failed} names the
        plugins that did not load).
    @ivar resource: the web resource, L{PluginServerResource}.
    @ivar site: the site, L{PluginServerSite}, whose channel reads requests.
    @ivar metrics: what C{/metrics} reports: every answered request counts.
    @ivar stopping: what C{/health} reports (L{False}).
    """

    report: ReloadReport
    stopping = False

    def __init__(
        self,
        directory: str,
        settings: Callable[[], Settings],
        clock: Clock,
        reactor: Any,
    ) -> None:
        self.directory = directory
        self._makeSettings = settings
        self._settings = settings()
        self.clock = clock
        self._reactor = reactor
        self.metrics = Metrics(
            lambda: {name: p.generation for name, p in self.registry.plugins.items()}
        )
        self.registry = PluginRegistry(
            directory,
            self._settings.plugin_params,
            self._settings,
            package=f"_pluginserver_testing_{next(_packages)}",
            observe=self.metrics.reload_outcome,
            start_timeout=self._settings.start_timeout,
            reactor=reactor,
        )
        self._threadpool = DaemonThreadPool(
            minthreads=0, maxthreads=self._settings.threads, name="pluginserver-testing"
        )
        self.resource = PluginServerResource(
            self, _Time(clock, reactor), self._threadpool, self.metrics
        )
        # As in the server: a retired generation's streams end.
        self.registry.retired = self.resource.streams.end
        self.site = PluginServerSite(self.resource, reactor=clock)
        self.site.displayTracebacks = False
        self.site.metrics = self.metrics
        self.site.configure(self._settings)
        self._connections: set[_Connection] = set()
        self._answered: list[tuple[_Connection, Answer | Failure]] = []
        self._sending = 0
        self._delivery: Any = None

    # -- the runtime the web resource sees ------------------------------------

    @property
    def settings(self) -> Settings:
        """
        The settings in force.
        """
        return self._settings

    def reload_all(self) -> defer.Deferred[tuple[ReloadReport, dict[str, str]]]:
        """
        What C{/reload/all} does: re-read the config file (when the server
        was made from one), then reload every plugin that changed.  Fires
        with the registry's report and C{{"config": error}} when the config
        file could not be read (the old settings stay in force).
        """
        failures: dict[str, str] = {}
        try:
            new = self._makeSettings()
        except ConfigError as e:
            failures["config"] = str(e)
        else:
            self._apply(new)
        d = self.registry.reload_all(self._settings.plugin_params, self._settings)
        return d.addCallback(lambda report: (report, failures))

    def _apply(self, settings: Settings) -> None:
        if settings == self._settings:
            return
        self._settings = settings
        self.site.configure(settings)
        self._threadpool.adjustPoolsize(maxthreads=settings.threads)
        self.registry.start_timeout = settings.start_timeout
        self.resource.configure(settings)

    # -- requests ------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str | Sequence[str]] | None = None,
        data: bytes | Mapping[str, str | Sequence[str]] | None = None,
        json: Any = None,
        version: str = "HTTP/1.1",
    ) -> defer.Deferred[Answer]:
        """
        Send one request on a new connection, as curl does; fires with its
        L{Answer}.

        @param path: the target (C{/hello?name=you}), or a URL whose host
            becomes the C{Host} header (C{http://example.com/hello}).
            Spaces and non-ASCII characters are percent-encoded; the rest
            is sent as written.
        @param headers: header names and values (a list of values sends the
            header once for each).  C{Host: localhost} is sent unless given.
        @param data: the body: bytes as they are, or a mapping sent as a
            form (C{application/x-www-form-urlencoded}).
        @param json: a value sent as a JSON body (C{application/json}).
        """
        if data is not None and json is not None:
            raise ValueError("give data or json, not both")
        url = urlsplit(path)
        host = "localhost"
        if url.scheme and url.netloc:
            host = url.netloc.rpartition("@")[2]
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        fields: list[tuple[str, str]] = []
        for name, values in (headers or {}).items():
            for value in [values] if isinstance(values, str) else values:
                fields.append((name, value))
        given = {name.lower() for name, _ in fields}
        body = b""
        contentType: str | None = None
        if json is not None:
            body = _json.dumps(json).encode("utf-8")
            contentType = "application/json"
        elif isinstance(data, bytes):
            body = data
        elif data is not None:
            body = urlencode(data, doseq=True).encode("ascii")
            contentType = "application/x-www-form-urlencoded"
        extra: list[tuple[str, str]] = []
        if "host" not in given:
            extra.append(("Host", host))
        if body or data is not None or json is not None:
            if contentType is not None and "content-type" not in given:
                extra.append(("Content-Type", contentType))
            if "content-length" not in given and "transfer-encoding" not in given:
                extra.append(("Content-Length", str(len(body))))
        lines = [f"{method} {quote(path, safe=_TARGET_SAFE)} {version}"]
        lines += [f"{name}: {value}" for name, value in extra + fields]
        return self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def get(self, path: str, **kwargs: Any) -> defer.Deferred[Answer]:
        """
        C{request("GET", path, ...)}.
        """
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> defer.Deferred[Answer]:
        """
        C{request("POST", path, ...)}.
        """
        return self.request("POST", path, **kwargs)

    def send(self, data: bytes) -> defer.Deferred[Answer]:
        """
        Write C{data} as it is on a new connection, the way a client
        wrote it (no client library normalises it first); fires with the
        first answer, after which the client closes the connection.  An
        answer the server gives at once has fired when C{send} returns.
        Fails with L{ConnectionLost} when the server closes the connection
        without a complete answer, and with L{ValueError} when what it
        writes is no answer.
        """
        connection = _Connection(self, data.split(b" ", 1)[0])
        self._connections.add(connection)
        self._sending += 1
        try:
            connection.protocol.dataReceived(data)
        finally:
            self._sending -= 1
        if not self._sending:
            self._deliver()
        return connection.answer

    def _ready(self, connection: _Connection, result: Answer | Failure) -> None:
        """
        A connection has its answer.  It is delivered once the server's
        code that wrote it has returned (the channel logs and counts the
        request, and finishes with it, after its last write): at the end of
        L{send} when it is answered there, or else in the next turn of the
        reactor.
        """
        self._answered.append((connection, result))
        if not self._sending and self._delivery is None:
            self._delivery = self._reactor.callLater(0, self._deliver)

    def _deliver(self) -> None:
        if self._delivery is not None:
            if self._delivery.active():
                self._delivery.cancel()
            self._delivery = None
        while self._answered:
            connection, result = self._answered.pop(0)
            connection.close()
            self._connections.discard(connection)
            if isinstance(result, Failure):
                connection.answer.errback(result)
            else:
                connection.answer.callback(result)

    def close(self) -> None:
        """
        Close every connection (a request still running is cancelled, as
        when its client goes away); L{serve} calls this when the test ends.
        Answers not delivered by then never are.
        """
        if self._delivery is not None and self._delivery.active():
            self._delivery.cancel()
        self._delivery = None
        self._answered.clear()
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()


def _directory(case: TestCase, plugins: Sequence[str], config: Settings | None) -> str:
    """
    The directory to serve for the L{serve} arguments C{plugins}: one
    directory as it is; else a new directory holding copies of the given
    plugin files and of the helper modules (C{_*.py}) beside them; with no
    plugins, the config's plugins directory or else a new empty one.
    """
    if len(plugins) == 1 and os.path.isdir(plugins[0]):
        return os.path.abspath(plugins[0])
    if not plugins and config is not None:
        return config.plugins_dir
    directory = os.path.abspath(str(case.mktemp()))
    os.makedirs(directory)
    for path in plugins:
        if not os.path.isfile(path):
            raise ValueError(f"{path}: not a plugin file (give files, or one directory alone)")
        shutil.copy(path, directory)
        beside = os.path.dirname(os.path.abspath(path))
        for name in os.listdir(beside):
            if name.startswith("_") and name.endswith(".py"):
                shutil.copy(os.path.join(beside, name), directory)
    return directory


def serve(
    case: TestCase,
    *plugins: str,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    config: str | Settings | None = None,
    clock: Clock | None = None,
    allow_load_errors: bool = False,
    **settings: Any,
) -> defer.Deferred[Server]:
    """
    Serve plugins in memory for the test C{case}, until it ends.

    @param plugins: plugin files, copied with the helper modules (C{_*.py})
        beside them into a new directory; or one directory, served as it is
        (what the test writes there is what a reload sees); or nothing: the
        config's plugins directory, or else a new empty directory.
    @param params: each plugin's C{[plugin_parms]}, by name
        (C{{"greet": {"greeting": "Hi"}}}), over the config's.
    @param config: a config file to load (C{/reload/all} reads it again)
        or L{Settings}; by default the settings a config without keys gives.
    @param clock: the server's time (L{Server.clock}); a new L{Clock} by
        default.
    @param allow_load_errors: serve even if some plugins failed to load
        (L{Server.report} says which); by default the test fails, with
        their errors.
    @param settings: L{Settings} fields to change (C{apikey="k"},
        C{request_timeout=5.0}, C{sections={"greet": {...}}}).

    @return: a Deferred that fires with the L{Server} once every plugin's
        C{start()} has run.  When the test ends its connections are
        closed, every plugin is stopped and its modules are forgotten.
    """
    from twisted.internet import reactor

    path: str | None = None
    first: Settings | None = None
    if isinstance(config, str):
        path, first = config, load_settings(config)
    else:
        first = config
    directory = _directory(case, plugins, first)

    def makeSettings() -> Settings:
        if path is not None:
            # Read again on each reload, as the server does.
            base = load_settings(path)
        elif first is not None:
            base = first
        else:
            base = Settings(
                path="test.ini", listen=(), listen_origin="[server] listen", plugins_dir=directory
            )
        base = base.with_overrides(plugins_dir=directory)
        changes = dict(settings)
        if params is not None:
            changes["plugin_params"] = {**base.plugin_params, **params}
        return attr.evolve(base, **changes)

    server = Server(directory, makeSettings, clock or Clock(), reactor)
    server._threadpool.start()
    case.addCleanup(server._threadpool.stop)
    case.addCleanup(server.registry.stop_all)
    case.addCleanup(server.close)

    def loaded(report: ReloadReport) -> Server:
        server.report = report
        if report.failed and not allow_load_errors:
            errors = "".join(f"\n  {name}: {error}" for name, error in report.failed.items())
            raise case.failureException(f"plugins failed to load from {directory}:{errors}")
        return server

    return server.registry.load_all().addCallback(loaded)
