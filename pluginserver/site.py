# -*- test-case-name: tests.test_limits,tests.test_channel -*-
"""
The site and its requests: what the server adds to twisted.web's Site and
Request, over its own channel (L{pluginserver.channel}, which parses every
request).

  - A request is answered without twisted.web's Request when a plain
    answer is all it needs (L{ParsedRequest}: a plugin route, an error of
    the gate); one is made from it where the web layer needs it
    (L{web_request}: Klein, files, streams, answers that come later).

  - The rate limits and the auth-failure limit (L{pluginserver.ratelimit})
    are asked as soon as a request's head has arrived: a refused request is
    answered 429 before its body is read (a request with a body is answered
    and the connection closed, so that no byte of the body is read).
  - A request body larger than C{max_body} is refused with 413 as soon as
    its declared length is known, before any of it is read, and a chunked
    body is cut off with 413 when it passes the limit: memory never grows
    with what a client claims or sends (twisted.web has no body limit,
    twisted#4898).
  - Every answer starts with the same headers, made once a second; errors
    no layer above caught are answered in JSON.
  - The access log redacts keys, and costs little per request.
  - The site knows its connections, so that a graceful stop can wait for
    the requests in flight.
"""

from __future__ import annotations

import re
import time
from io import BytesIO
from tempfile import TemporaryFile
from time import perf_counter as _now
from typing import Any, Protocol, TextIO, TypeVar, overload
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.error import UnsupportedMethod
from twisted.web.http import (
    NO_BODY_CODES,
    RESPONSES,
    combinedLogFormatter,
    datetimeToString,
    parse_qs,
)
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request, Site

from pluginserver.answers import (
    DEFAULT_HEADERS,
    INTERNAL_ERROR,
    TOO_LARGE,
    TOO_MANY_REQUESTS,
    error,
    too_many_requests,
)
from pluginserver.channel import PluginServerChannel, answer_head, header_lines
from pluginserver.config import Settings
from pluginserver.metrics import Metrics
from pluginserver.ratelimit import Limits, retry_after

__all__ = [
    "ParsedRequest",
    "PluginServerChannel",
    "PluginServerRequest",
    "PluginServerSite",
    "web_request",
]


def _bulk_header_setter() -> Any:
    """
    Setting four headers one by one costs a measurable share of a small
    answer.  twisted.web keeps headers in a dict under canonical names:
    learn those names from Headers itself, and fall back to the public
    API if that dict ever goes away.
    """
    probe = Headers()
    raw = getattr(probe, "_rawHeaders", None)
    names = [b"date"] + [name for name, _ in DEFAULT_HEADERS]
    if not isinstance(raw, dict):  # pragma: no cover - a future twisted.web

        def slow(headers: Headers, date: bytes) -> None:
            headers.setRawHeaders(b"date", [date])
            for name, value in DEFAULT_HEADERS:
                headers.setRawHeaders(name, [value])

        return slow
    canonical = []
    for name in names:
        probe.setRawHeaders(name, [b"x"])
        (key,) = [k for k in raw if k not in canonical]
        canonical.append(key)
    date, contentType, nosniff, cacheControl = canonical
    values = [value for _, value in DEFAULT_HEADERS]

    def fast(headers: Headers, date_value: bytes) -> None:
        headers._rawHeaders.update(
            {
                date: [date_value],
                contentType: [values[0]],
                nosniff: [values[1]],
                cacheControl: [values[2]],
            }
        )

    return fast


_set_default_headers = _bulk_header_setter()


IN_MEMORY_BODY = 100000
"""Bytes of a request body kept in memory (twisted.web's threshold); a
larger one, or one of unknown length (chunked), goes to a temporary file."""


class _Discard:
    """
    Where the body of a refused request goes: nowhere.
    """

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> int:
        return 0

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _Body:
    """
    What both kinds of request do with a request's body: refuse it (413)
    past C{max_body} before any of it is read, ask the limits before it is
    read, and keep it in memory or in a temporary file.
    """

    channel: PluginServerChannel
    requestHeaders: Headers
    content: Any = None
    _refused = False
    _received = 0
    # Seconds to wait, for a request refused by a limit before its body.
    _limited = 0.0

    def gotLength(self, length: int | None) -> None:
        site = self.channel.site
        if length and length > site.max_body:
            self._refuse()
            return
        limits = site.limits
        if limits is not None and limits.engaged:
            wait = limits.admit(self)
            if wait > 0:
                self._limited = wait
                if length or self.requestHeaders.hasHeader(b"transfer-encoding"):
                    # A body follows: answer now and read none of it.
                    self._refuse(too_many_requests(retry_after(wait)))
                    return
        # Where twisted.web keeps a body: in memory when small and of known
        # length, else in a temporary file.  (twisted.web's own gotLength
        # looks for a hook on the site first, and the AttributeError of its
        # absence cost as much as building the Request.)  No body, no file:
        # twisted.web's Request gets an empty one (web_request).
        if length == 0:
            return
        if length is not None and length < IN_MEMORY_BODY:
            self.content = BytesIO()
        else:
            self.content = TemporaryFile()  # noqa: SIM115 - closed when the request finishes

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body:
            self._refuse()
            return
        self.content.write(data)

    def _refuse(self, response: bytes = TOO_LARGE) -> None:
        """
        Answer 413 (or C{response}) and close the connection; read no more
        of it.
        """
        self._refused = True
        if self.content is not None:
            self.content.close()
        self.content = _Discard()
        # Twisted would answer "100 Continue" after this: there is nothing
        # to continue.
        self.requestHeaders.removeHeader(b"expect")
        self.channel.refuse(response)


class PluginServerRequest(_Body, Request):
    """
    A request that enforces the body limit.

    @ivar route: the route label of this request's metrics, set by the web
        layer (absent until it has seen the request).
    """

    channel: PluginServerChannel  # type: ignore[assignment]
    site: PluginServerSite
    route: str

    defaultContentType = b"application/json"
    persistent = True
    """Whether the connection may stay open after this answer (the client
    said C{Connection: close}, or spoke HTTP/1.0, or sent an Upgrade)."""
    expectsContinue = False
    """The client waits for C{100 Continue} before it sends the body."""
    _args: dict[bytes, list[bytes]] | None = None

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """
        The query's fields, and a urlencoded POST form's, as twisted.web
        gives them; parsed when first asked for (the web layer parses the
        arguments itself, so for plugin routes they never are).
        """
        if self._args is None:
            # What twisted.web's requestReceived does: the query, then a
            # urlencoded POST form's fields in place of the query's.
            args = parse_qs(self.uri.partition(b"?")[2], 1)
            contentType = self.getHeader(b"content-type") or b""
            content = self.content
            if (
                self.method == b"POST"
                and content is not None
                and contentType.split(b";", 1)[0].strip().lower()
                == b"application/x-www-form-urlencoded"
            ):
                content.seek(0)
                args.update(parse_qs(content.read(), 1))
                content.seek(0)
            self._args = args
        return self._args

    @args.setter
    def args(self, value: dict[bytes, list[bytes]]) -> None:
        self._args = value

    def process(self) -> None:
        """
        What L{Request.process} does, less what this site never needs per
        request: the root resource is a leaf (no traversal, no C{postpath}:
        the web layer splits the path itself), the date string is made once
        a second, and no C{Server} header tells the world which version of
        twisted.web runs here.  Every answer starts with L{DEFAULT_HEADERS}.
        """
        if self._refused:
            return
        site = self.site = self.channel.site
        self.started = _now()
        site.tick()
        _set_default_headers(self.responseHeaders, site._date)
        self.prepath = []
        self.postpath = []
        if self._limited:
            self._tooMany()
            return
        resource = site.resource
        try:
            try:
                body = resource.render(self)
            except UnsupportedMethod:
                # twisted.web's answer to it (405 or 501; HEAD as GET): it
                # renders again, which such a resource allows.
                self.render(resource)
                return
            if body is not NOT_DONE_YET:
                self._answer(body)
        except BaseException:
            self.processingFailed(Failure())

    def _answer(self, body: Any) -> None:
        """
        Send the body a resource returned and finish: what twisted.web's
        C{Request.render} does with it.  (A plugin route's plain answer is
        written by L{ParsedRequest}; this request answers the rest.)
        """
        if not isinstance(body, bytes):
            raise TypeError(f"the resource returned {type(body).__name__}, not bytes")
        if self.method != b"HEAD" or body:
            self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
        self.write(body if self.method != b"HEAD" else b"")
        self.finish()

    def _tooMany(self) -> None:
        """
        Answer 429 to a request without a body that a limit refused when
        its head arrived; the connection stays open.
        """
        self.setHeader(b"retry-after", b"%d" % (retry_after(self._limited),))
        body = error(self, 429, TOO_MANY_REQUESTS)
        if self.method != b"HEAD":
            self.setHeader(b"content-length", b"%d" % (len(body),))
            self.write(body)
        self.finish()

    def processingFailed(self, reason: Failure) -> Failure:
        """
        A failure no layer above caught: logged with its traceback, answered
        as every error is, in JSON (twisted.web would answer in HTML).
        """
        self._log.failure(
            "Request {method} {path} failed", failure=reason, method=self.method, path=self.path
        )
        if self.finished or self.startedWriting:
            if not self.finished:
                self.finish()
            return reason
        self.setResponseCode(500)
        _set_default_headers(self.responseHeaders, self.site._date)
        self.setHeader(b"content-length", b"%d" % (len(INTERNAL_ERROR),))
        self.write(INTERNAL_ERROR)
        self.finish()
        return reason


class ParsedRequest(_Body):
    """
    A request as the channel parsed it, answered without twisted.web's
    Request when a plain answer is all it needs: a plugin route's JSON, an
    error of the gate.

    twisted.web's Request, its two L{Headers} and its generic C{finish}
    cost a sixth of a small request, and a plugin's answer needs none of
    them: this request carries what the web layer's gate reads (the parsed
    method, target, version and headers; the peer) and what an answer
    sets (status, headers), and writes a whole answer in one write.  An
    answer that sets no header but the defaults is made from a head
    L{PluginServerSite.tick} makes once a second.

    Where twisted.web's own Request is needed (the Klein routes, files,
    streams, an answer that comes later, a resource tree that is not the
    web layer's), L{web_request} builds one from this request and puts it
    in this one's place on the channel: from then on that Request answers.

    Only the channel makes one: it gives it what it parsed (method, uri,
    path, clientproto, requestHeaders).  A request without a body has no
    C{content} (L{None}); twisted.web's Request made from it gets an empty
    file.

    @ivar route: the route label of this request's metrics, set by the web
        layer (absent until it has seen the request).
    """

    site: PluginServerSite
    route: str
    started: float
    method: bytes
    uri: bytes
    path: bytes
    clientproto: bytes
    requestHeaders: Headers

    _log = Logger()

    def __init__(self, channel: PluginServerChannel) -> None:
        # Every field on the instance, none left to a class default: CPython
        # 3.11 specialises reads of an instance's attributes only.
        self.channel = channel
        self.transport = channel.transport
        self.client = channel.getPeer()
        self.code = 200
        self.code_message = b"OK"
        # Whether the connection may stay open after this answer.
        self.persistent = True
        # The client waits for 100 Continue before it sends the body.
        self.expectsContinue = False
        self.finished = 0
        self.sentLength = 0
        self._disconnected = False
        # The answer's headers, once anything but the defaults is set.
        self._headers: Headers | None = None
        # What write() was given, sent whole by finish().
        self._written: list[bytes] | None = None
        # The twisted.web Request that answers in this one's place.
        self._web: PluginServerRequest | None = None
        # The body's state (see _Body).
        self.content = None
        self._refused = False
        self._received = 0
        self._limited = 0.0

    # -- what the gate reads ---------------------------------------------------

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values is not None else None

    def getClientAddress(self) -> Any:
        return self.client

    def getHost(self) -> Any:
        return self.channel.getHost()

    def isSecure(self) -> bool:
        return self.channel.isSecure()

    # -- what an answer sets ---------------------------------------------------

    @property
    def responseHeaders(self) -> Headers:
        """
        The answer's headers: the defaults every answer carries, and what
        has been set since.
        """
        headers = self._headers
        if headers is None:
            headers = self._headers = Headers()
            _set_default_headers(headers, self.channel.site._date)
        return headers

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.code_message = (
            message if message is not None else RESPONSES.get(code, b"Unknown Status")
        )

    def write(self, data: bytes) -> None:
        """
        Add to the body, sent whole by L{finish}: this request is never
        one that streams (see L{web_request}).
        """
        if self._written is None:
            self._written = []
        self._written.append(data)

    def finish(self) -> None:
        if not self.finished:
            self._answer(b"".join(self._written or ()))

    # -- answering ---------------------------------------------------------------

    def process(self) -> None:
        """
        Render the request through the site's resource and answer what it
        gives.
        """
        if self._refused:
            return
        site = self.site = self.channel.site
        self.started = _now()
        site.tick()
        if self._headers is not None:
            # Set while the head was parsed (Connection: close), when the
            # Date may have been another second's: every answer starts
            # with the defaults of now.
            _set_default_headers(self._headers, site._date)
        resource = site.resource
        if self._limited or not getattr(resource, "rendersParsedRequests", False):
            # A limit's refusal, or a resource that wants twisted.web's own.
            self.web_request().process()
            return
        try:
            body = resource.render(self)
            if body is not NOT_DONE_YET:
                (self._web or self)._answer(body)
        except BaseException:
            (self._web or self).processingFailed(Failure())

    def _answer(self, body: Any) -> None:
        """
        Send a whole answer with C{body} (none for HEAD, 204 and 304) and
        finish: what twisted.web's render and finish do with a body a
        resource returned, in one write.
        """
        if not isinstance(body, bytes):
            raise TypeError(f"the resource returned {type(body).__name__}, not bytes")
        code = self.code
        channel = self.channel
        headOnly = self.method == b"HEAD" or code in NO_BODY_CODES
        if self._headers is None and not headOnly:
            length = self.sentLength = len(body)
            if code == 200 and self.clientproto == b"HTTP/1.1" and self.code_message == b"OK":
                # Nearly every answer: its head is made once a second.
                data = b"%s%d\r\n\r\n%s" % (self.site._okHead, length, body)
            else:
                data = b"%s %d %s\r\n%s%d\r\n\r\n%s" % (
                    self.clientproto,
                    code,
                    self.code_message,
                    self.site._plainHead,
                    length,
                    body,
                )
        else:
            headers = self.responseHeaders
            if code not in NO_BODY_CODES and (body or self.method != b"HEAD"):
                headers.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
            head = answer_head(self.clientproto, b"%d" % (code,), self.code_message, headers)
            if not headOnly:
                self.sentLength = len(body)
                head.append(body)
            data = b"".join(head)
        self.finished = 1
        if self._disconnected:
            return
        channel.write(data)
        self.site.log(self)
        channel.requestDone(self)
        content = self.content
        if content is not None:
            content.close()

    def processingFailed(self, reason: Failure) -> Failure:
        """
        A failure no layer above caught: logged with its traceback, answered
        500 in JSON, as L{PluginServerRequest} answers it.
        """
        self._log.failure(
            "Request {method} {path} failed", failure=reason, method=self.method, path=self.path
        )
        if not self.finished:
            self.setResponseCode(500)
            self._written = None
            _set_default_headers(self.responseHeaders, self.site._date)
            self._answer(INTERNAL_ERROR)
        return reason

    def connectionLost(self, reason: Failure) -> None:
        self._disconnected = True
        if self.content is not None:
            self.content.close()  # a queued request's temporary file

    def web_request(self) -> PluginServerRequest:
        """
        twisted.web's own Request for this one, made from it once and put in
        its place on the channel: the status and headers set so far, the
        body, the route label and key id the web layer has set.
        """
        web = self._web
        if web is not None:
            return web
        channel = self.channel
        site = channel.site
        web = self._web = PluginServerRequest(channel)
        web.site = site
        web.method, web.uri, web.path = self.method, self.uri, self.path
        web.clientproto = self.clientproto
        web.requestHeaders = self.requestHeaders
        web.content = self.content if self.content is not None else BytesIO()
        web.persistent = self.persistent
        web._received, web._limited = self._received, self._limited
        web.code, web.code_message = self.code, self.code_message
        if self._headers is not None:
            web.responseHeaders = self._headers
        else:
            _set_default_headers(web.responseHeaders, site._date)
        web.prepath, web.postpath = [], []
        for name in ("route", "started", "key_id"):
            if name in self.__dict__:
                setattr(web, name, self.__dict__[name])
        channel.replace(self, web)
        return web


_R = TypeVar("_R", bound=http.Request)


@overload
def web_request(request: ParsedRequest) -> PluginServerRequest: ...


@overload
def web_request(request: _R) -> _R: ...


def web_request(request: Any) -> Any:
    """
    twisted.web's own Request for C{request}: itself, or the one a
    L{ParsedRequest} becomes.
    """
    if isinstance(request, ParsedRequest):
        return request.web_request()
    return request


ACCESS_LOG_BUFFER = 65536

_SEPARATORS = re.compile(rb"([&;])")


def redact(uri: bytes) -> bytes:
    """
    A request URI with the value of every C{apikey} query field replaced by
    C{REDACTED}, however its name is written (C{api%6Bey} is C{apikey} to
    the server): keys never reach a log.
    """
    path, mark, query = uri.partition(b"?")
    if not query or (b"apikey" not in query.lower() and b"%" not in query):
        return uri
    parts = _SEPARATORS.split(query)
    for index in range(0, len(parts), 2):  # odd indexes are the separators
        name = parts[index].partition(b"=")[0]
        if unquote_to_bytes(name.replace(b"+", b" ")).strip().lower() == b"apikey":
            parts[index] = name + b"=REDACTED"
    return path + mark + b"".join(parts)


class _Redacted:
    """
    A request as the access-log formatter sees it: the same, but for its
    URI and its Referer, redacted.
    """

    def __init__(self, request: Any, uri: bytes, referrer: bytes | None) -> None:
        self._request = request
        self.uri = uri
        self._referrer = referrer

    def getHeader(self, name: bytes) -> bytes | None:
        if name.lower() == b"referer":
            return self._referrer
        value: bytes | None = self._request.getHeader(name)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


_PLAIN = re.compile(rb"[ !#-\[\]-~]*")
"""Printable ASCII without quote or backslash: what the log's escaping leaves alone."""


def redacted_log_line(timestamp: str, request: Any) -> str:
    """
    The combined-log-format line twisted.web writes, with keys redacted:
    in the request URI and in the Referer, a URL too (a page that sent its
    key in its own URL names it there).  The User-Agent is logged as sent.

    twisted.web's formatter escapes every field through repr(), which made
    an access log cost a quarter of the throughput; fields that need no
    escaping (nearly all) are written as they are, to the same line, and
    anything else goes through twisted.web's own formatter.
    """
    original = request.uri
    uri = redact(original)
    redacted = uri is not original
    address = request.getClientAddress()
    ip = getattr(address, "host", None)
    referrer = request.getHeader(b"referer")
    if referrer:
        shown = redact(referrer)
        if shown is not referrer:
            redacted = True
            referrer = shown
    else:
        referrer = b"-"
    agent = request.getHeader(b"user-agent") or b"-"
    method = request.method
    protocol = request.clientproto
    plain = _PLAIN.fullmatch
    if (
        isinstance(ip, str)
        and plain(uri)
        and plain(referrer)
        and plain(agent)
        and plain(method)
        and plain(protocol)
        and plain(ip.encode("latin-1", "replace"))
    ):
        return (
            f'"{ip}" - - {timestamp} "{method.decode()} {uri.decode()} {protocol.decode()}" '
            f'{request.code} {request.sentLength or "-"} "{referrer.decode()}" "{agent.decode()}"'
        )
    line: str = combinedLogFormatter(
        timestamp, _Redacted(request, uri, referrer) if redacted else request
    )
    return line


class _LogFile(Protocol):
    """
    The access log as this site uses it: what twisted.web needs, and flush.
    """

    def write(self, data: str, /) -> object: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class PluginServerSite(Site):
    """
    The site: JSON requests with limits, counted while in flight.

    @ivar max_body: the largest request body accepted, in bytes.
    @ivar header_timeout: seconds a request's head may take to arrive.
    @ivar channels: the open connections.
    """

    # Twisted types it as its own Request's factory.
    requestFactory = ParsedRequest  # type: ignore[assignment]
    # Twisted types this as its HTTP/1.1-or-HTTP/2 wrapper's factory; this
    # site serves its own HTTP/1.1 channel.
    protocol = PluginServerChannel  # type: ignore[assignment]
    max_body = 1048576
    header_timeout = 10.0
    metrics: Metrics | None = None
    limits: Limits | None = None
    """The rate and auth-failure limits, asked before a body is read."""
    # What _openLogFile opens, or twisted.python.log's file: both flush.
    _logFile: _LogFile | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("logFormatter", redacted_log_line)
        super().__init__(*args, **kwargs)
        # The web resource's limits, when it has some.
        self.limits = getattr(self.resource, "limits", None)
        self.channels: set[PluginServerChannel] = set()
        # The Date header's value, and the head of a plain answer up to its
        # Content-Length (see ParsedRequest), without and with the status
        # line of an HTTP/1.1 200, made at most once a second.
        self._dateSecond = -1
        self._date = b""
        self._plainHead = b""
        self._okHead = b""

    def tick(self) -> None:
        """
        Bring the Date of answers up to the current second (asked by every
        request: a clock read and a comparison, nearly always).
        """
        now = int(time.time())
        if now != self._dateSecond:
            self._dateSecond = now
            self._date = datetimeToString(now)
            headers = Headers()
            _set_default_headers(headers, self._date)
            self._plainHead = b"".join(header_lines(headers)) + b"Content-Length: "
            self._okHead = b"HTTP/1.1 200 OK\r\n" + self._plainHead

    def configure(self, settings: Settings) -> None:
        """
        Take the limits of new settings into use (at start and on reload).
        """
        self.timeOut = settings.idle_timeout
        self.max_body = settings.max_body
        self.header_timeout = settings.header_timeout

    @property
    def inflight(self) -> int:
        """
        Requests received and not yet answered, on every connection.
        """
        return sum(len(channel.requests) for channel in self.channels)

    def log(self, request: http.Request | ParsedRequest) -> None:
        """
        Count the answered request, and write its access-log line when
        there is an access log (twisted.web would otherwise send it to the
        main log).
        """
        metrics = self.metrics
        if metrics is not None:
            started = getattr(request, "started", None)
            metrics.request_done(
                getattr(request, "route", "other"),
                request.code,
                _now() - started if started is not None else 0.0,
            )
        if self.logPath is not None:
            # The formatter (redacted_log_line) reads of a request only what
            # a ParsedRequest has too.
            super().log(request)  # type: ignore[arg-type]

    # -- the access log ------------------------------------------------------------

    def _openLogFile(self, path: str | bytes) -> TextIO:
        # Buffered, not line-buffered: a write per request would halve the
        # throughput.  _updateLogDateTime flushes it every second.
        return open(path, "a", ACCESS_LOG_BUFFER, newline="\n")

    def _updateLogDateTime(self) -> None:
        super()._updateLogDateTime()
        if self.logPath is not None and self._logFile is not None:
            self._logFile.flush()

    def set_access_log(self, path: str | None) -> None:
        """
        Write the access log to C{path} from now on (L{None}: no access
        log); the file is opened afresh, so this also reopens it after
        logrotate has moved it (SIGUSR1).
        """
        old = self._logFile if self.logPath is not None else None
        self.logPath = path
        if self._logDateTimeCall is None:
            return  # not started: startFactory opens it
        self._logFile = self._openLogFile(path) if path is not None else None
        if old is not None:
            old.close()
