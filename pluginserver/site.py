# -*- test-case-name: tests.test_limits,tests.test_channel -*-
"""
The HTTP protocol layer under the resource tree: limits twisted.web does not
have on its own.

  - The rate limits and the auth-failure limit (L{pluginserver.ratelimit})
    are asked as soon as a request's head has arrived: a refused request is
    answered 429 before its body is read (a request with a body is answered
    and the connection closed, so that no byte of the body is read).
  - A request body larger than C{max_body} is refused with 413 as soon as
    its declared length is known, before any of it is read, and a chunked
    body is cut off with 413 when it passes the limit: memory never grows
    with what a client claims or sends (twisted.web has no body limit,
    twisted#4898).
  - A request's head (request line and headers) must arrive within
    C{header_timeout} of its first byte, however slowly it trickles in
    (slowloris); idle keep-alive connections close after C{idle_timeout}.
  - Pipelined requests are answered one at a time, and a client that does
    not read its answers is not read from either: memory never grows with
    answers a client leaves unread (twisted.web stops reading, but goes on
    answering the requests it had already read).
  - A client that half-closes its connection after its request (shutdown
    of its sending side) is still answered.
  - The site knows its connections, so that a graceful stop can wait for
    the requests in flight.
"""

from __future__ import annotations

import re
import time
from time import perf_counter as _now
from typing import Any, Protocol, TextIO
from urllib.parse import unquote_to_bytes

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel, combinedLogFormatter, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site
from zope.interface import implementer  # type: ignore[import-untyped]

from pluginserver.answers import (
    BAD_REQUEST,
    DEFAULT_HEADERS,
    HEAD_TIMEOUT,
    HEADERS_TOO_LARGE,
    INTERNAL_ERROR,
    TOO_LARGE,
    TOO_MANY_REQUESTS,
    URI_TOO_LONG,
    error,
    too_many_requests,
)
from pluginserver.config import Settings
from pluginserver.metrics import Metrics
from pluginserver.ratelimit import Limits, retry_after

_NO_METHOD_YET = Request.method  # what a request's method is until it is received

LINGER = 2.0
"""
Seconds a refused connection is still read (and the data dropped) after
the answer: closing at once, with unread data, makes the kernel send a reset
that can destroy the answer before the client reads it.
"""


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


class PluginServerRequest(Request):
    """
    A request that enforces the body limit.

    @ivar route: the route label of this request's metrics, set by the web
        layer (absent until it has seen the request).
    """

    channel: PluginServerChannel
    site: PluginServerSite
    route: str

    defaultContentType = b"application/json"
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
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

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
        now = int(time.time())
        if now != site._dateSecond:
            site._dateSecond = now
            site._date = datetimeToString(now)
        _set_default_headers(self.responseHeaders, site._date)
        self.prepath = []
        self.postpath = []
        if self._limited:
            self._tooMany()
            return
        try:
            self.render(site.resource)
        except BaseException:
            self.processingFailed(Failure())

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


@implementer(IHalfCloseableProtocol)
class PluginServerChannel(HTTPChannel):
    """
    An HTTP channel with a deadline for each request's head, JSON answers
    for heads it cannot accept, back-pressure on pipelined requests, and
    answers for clients that half-close.

    Back-pressure: twisted.web answers pipelined requests one at a time and
    registers the channel as its transport's producer, so that a full send
    buffer pauses the channel.  But it only stops I{reading}: the requests
    it has already read are parsed and answered all the same, each answer
    adding to the unsent buffer (200 pipelined requests for 512 KiB each,
    sent in one packet, grew the process by about 190 MB).  Here an answer the
    client has not read yet holds the next request back (C{_held}) until
    the transport has sent it; and the channel stops reading while it
    writes (twisted.web reads on while a request is handled, to see a
    client go away, and its 16 KiB cap on what it reads ahead is skipped
    while the transport is paused).

    Half-close: a client may shut down its sending side once its request
    is sent (C{shutdown(SHUT_WR)}); TCP then reports the end of the data
    to an L{IHalfCloseableProtocol} instead of closing, and the channel
    answers what it received before it closes.  (Over TLS the TLS layer
    ends the whole connection at the end of the data, as before.)
    """

    site: PluginServerSite  # set by Site.buildProtocol
    # What reactor.callLater gives (IDelayedCall names the interface, whose
    # methods mypy cannot call without the mypy-zope plugin).
    _headDeadline: DelayedCall | None = None
    _refusing: DelayedCall | None = None
    # twisted.web's: the transport as an IPushProducer (typed loosely:
    # mypy cannot call a zope Interface's methods).
    _networkProducer: Any
    # The next request waits until the transport has sent the last answer.
    _held = False
    # The client sent its end of data: answer what came, then close.
    _readClosed = False
    # The idle timeout, kept running while a request is handled (see
    # setTimeout); None when it is not paused.
    _idlePausedAt: float | None = None
    _idleFiredWhilePaused = False
    _receivingWhole = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)

    # -- the idle timeout -----------------------------------------------------

    def allContentReceived(self) -> None:
        self._receivingWhole = True
        try:
            super().allContentReceived()
        finally:
            self._receivingWhole = False

    def setTimeout(self, period: float | None) -> float | None:
        """
        twisted.web turns the idle timeout off while it handles a request
        and on again when the answer is done: a timer cancelled and another
        made for every request, which on the asyncio reactor also re-arms
        the loop's own timer (7% of a trivial request's time, profiled).
        Here the timer keeps running while a request is handled and is only
        pushed back when it is done; if it fires meanwhile, nothing happens
        (the connection is not idle) and a new one starts with the answer.
        """
        if period is None and self._receivingWhole and self.timeOut is not None:
            if self._idlePausedAt is None:
                self._idlePausedAt = self.timeOut
            return self.timeOut
        paused, self._idlePausedAt = self._idlePausedAt, None
        if paused is not None:
            fired, self._idleFiredWhilePaused = self._idleFiredWhilePaused, False
            if period == paused and not fired:
                self.resetTimeout()
                return None
            # As if it had been turned off: the running timer goes, if any.
            super().setTimeout(None)
            if period is None:
                return None
        previous: float | None = super().setTimeout(period)
        return previous

    def timeoutConnection(self) -> None:
        if self._idlePausedAt is not None:
            self._idleFiredWhilePaused = True  # handling a request: not idle
            return
        super().timeoutConnection()

    def _headPending(self) -> bool:
        """
        Whether a request's head has begun to arrive and is not complete: a
        partial line is buffered, or a request line was read and the
        request not yet received whole.
        """
        if not self.line_mode:
            return False  # reading a body: idle_timeout watches that
        if self._buffer:
            # Held requests wait for the client to read, not to send.
            return not self._held
        return bool(self.requests) and self.requests[-1].method == _NO_METHOD_YET

    def dataReceived(self, data: bytes) -> None:
        if self._refusing is not None:
            return
        super().dataReceived(data)
        # Almost every head arrives whole, in one read, and is answered
        # before we get here: only an incomplete one costs a timer.
        if self._headDeadline is None:
            if self._refusing is None and self._headPending():
                self._headDeadline = self.callLater(self.site.header_timeout, self._headTimedOut)
        elif not self._headPending():
            self._cancelHeadDeadline()

    def lineLengthExceeded(self, line: bytes) -> None:
        # The request exists once its request line has been read.
        self.refuse(HEADERS_TOO_LARGE if self.requests else URI_TOO_LONG)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's own answer to a malformed head, or one over its
        # header limits (500 headers, 16 KiB in all): an empty 400.
        size = getattr(self, "_receivedHeaderSize", 0)
        count = getattr(self, "_receivedHeaderCount", 0)
        if size > self.totalHeadersSize or count > self.maxHeaders:
            self.refuse(HEADERS_TOO_LARGE)
        else:
            self.refuse(BAD_REQUEST)

    def _cancelHeadDeadline(self) -> None:
        if self._headDeadline is not None:
            if self._headDeadline.active():
                self._headDeadline.cancel()
            self._headDeadline = None

    def _headTimedOut(self) -> None:
        self._headDeadline = None
        if self._headPending():
            self.refuse(HEAD_TIMEOUT)

    def refuse(self, response: bytes) -> None:
        """
        Answer with C{response} and close the connection, reading and
        dropping what the client still sends for a moment (see L{LINGER}).
        """
        if self._refusing is not None or self.transport is None:
            return
        self._cancelHeadDeadline()
        self.setTimeout(None)
        # An ITCPTransport (abortConnection) or TLS transport; typed loosely
        # because mypy cannot call a zope Interface's methods.
        transport: Any = self.transport
        # Stop LineReceiver's loop over the lines already buffered.
        self.paused = True
        transport.write(response)
        self._refusing = self.callLater(LINGER, transport.abortConnection)
        if ISSLTransport.providedBy(transport) or not hasattr(transport, "loseWriteConnection"):
            # TLS has no half-close of its own: its close_notify ends both
            # directions (and twisted's TLS transport fails on a half-close).
            transport.loseConnection()
        else:
            transport.loseWriteConnection()

    # -- back-pressure ----------------------------------------------------------

    def requestDone(self, request: http.Request) -> None:
        if self._waitingForTransport and self.persistent and self._refusing is None:
            # The client has not read this answer: parse nothing more (the
            # LineReceiver stops at self.paused, what it has stays in its
            # buffer) and read nothing more until the transport has sent it.
            self._held = True
            self.paused = True
            self._networkProducer.pauseProducing()
        super().requestDone(request)
        if self._readClosed:
            self._closeIfAnswered()

    def pauseProducing(self) -> None:
        super().pauseProducing()
        if self._handlingRequest:
            # twisted.web leaves reading on here: the answer being written
            # is not read, so neither is what the client sends meanwhile.
            self._networkProducer.pauseProducing()

    def resumeProducing(self) -> None:
        super().resumeProducing()  # reads again unless a request is handled
        if self._held:
            self._held = False
            if self._refusing is None:
                self.paused = False
                self.dataReceived(b"")  # parse and answer the next request
            if self._readClosed:
                self._closeIfAnswered()
        elif self._handlingRequest and (
            sum(map(len, self._dataBuffer)) <= self._optimisticEagerReadSize
        ):
            # As twisted.web does while it handles a request: read ahead,
            # up to its cap (rawDataReceived pauses past it).
            self._networkProducer.resumeProducing()

    # -- half-close ------------------------------------------------------------

    def readConnectionLost(self) -> None:
        """
        The client will send nothing more: answer the requests it sent, then
        close.  (Also called again when reading resumes after the end.)
        """
        self._readClosed = True
        self._cancelHeadDeadline()  # a partial head can never complete now
        if self._refusing is not None:
            # Nothing more to drain: the refusal is said, end it here.
            transport: Any = self.transport
            transport.loseConnection()
            return
        self._closeIfAnswered()

    def writeConnectionLost(self) -> None:
        """
        Our sending side is shut down: only L{refuse} does that, and it
        keeps reading for a moment; anything else ends the connection.
        """
        if self._refusing is None:
            self.loseConnection()

    def _closeIfAnswered(self) -> None:
        """
        Close a connection whose client half-closed once nothing it sent is
        waiting for an answer: no request being handled or held, and no
        parse under way (a request answered within it may be followed by
        others in the buffer).  What is left is an incomplete head, which
        can no longer complete.
        """
        if self._handlingRequest or self._held or self._busyReceiving:
            return
        transport: Any = self.transport
        if transport is not None and not transport.disconnecting:
            self.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.channels.discard(self)
        self._cancelHeadDeadline()
        if self._refusing is not None and self._refusing.active():
            self._refusing.cancel()
        super().connectionLost(reason)


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

    requestFactory = PluginServerRequest
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
        # The Date header's value, made at most once a second (by requests).
        self._dateSecond = -1
        self._date = b""

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

    def log(self, request: http.Request) -> None:
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
            super().log(request)

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
