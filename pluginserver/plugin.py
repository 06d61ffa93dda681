# -*- test-case-name: tests.test_web,tests.test_registry -*-
"""
The plugin API: what a plugin author subclasses, receives and raises.

Nothing here knows about Klein or twisted.web: a plugin sees a
L{PluginRequest} (plain Python values) and answers with a JSON-serialisable
value, a C{(status, value)} tuple, or an L{HTTPError}.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, ClassVar, TypeAlias, TypeVar

import attr
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from pluginserver import coroutines

_T = TypeVar("_T")

_log = Logger()


class HTTPError(Exception):
    """
    Raised by a plugin to answer with an error status and a JSON body
    C{{"error": message}}.
    """

    def __init__(self, status: int, message: str = "") -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"HTTPError status must be 4xx or 5xx, not {status}")
        super().__init__(status, message)
        self.status = status
        self.message = message or _DEFAULT_MESSAGES.get(status, "error")

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


_DEFAULT_MESSAGES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    413: "request body too large",
    422: "unprocessable entity",
    429: "too many requests",
    500: "internal error",
    503: "service unavailable",
    504: "timeout",
}


class Headers(Mapping[str, str]):
    """
    A read-only, case-insensitive view of request headers.  Where a header
    was sent more than once, its values are joined with C{", "}.
    """

    def __init__(self, pairs: Mapping[str, str]) -> None:
        self._items = {k.lower(): v for k, v in pairs.items()}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items

    def __iter__(self) -> Any:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@attr.s(auto_attribs=True, slots=True)
class PluginRequest:
    """
    What a plugin's C{handle} receives; read it, do not change it.  (Not
    frozen: a frozen class costs measurably on every request.)

    @ivar method: the HTTP method, upper case (C{"GET"}, C{"POST"}, ...).
    @ivar subpath: the path below the plugin's route, without the leading
        slash; C{""} when none (C{/hello} -> C{""}, C{/hello/a/b} -> C{"a/b"}).
    @ivar args: one dict merged from the query string, form fields and the
        top-level fields of a JSON object body, later sources winning; the
        C{apikey} field removed.
    @ivar json: the parsed JSON body, or L{None}.
    @ivar headers: the request headers, case-insensitive.
    @ivar client: the client's IP address (after the trusted-proxy rule).
    @ivar body: the raw request body.
    @ivar files: the file fields of a multipart form, by field name: each
        an L{UploadedFile} (its content is also in C{args}, as before).
    @ivar client_cert: the client's verified TLS certificate, or L{None}:
        C{{"subject": {"CN": ...}, "issuer": {...}, "serial": "hex",
        "not_after": "ISO 8601", "sha256": "hex"}}.
    """

    method: str
    subpath: str = ""
    args: Mapping[str, Any] = attr.Factory(dict)
    json: Any = None
    headers: Headers = attr.Factory(lambda: Headers({}))
    client: str = ""
    body: bytes = b""
    files: Mapping[str, UploadedFile] = attr.Factory(dict)
    client_cert: Mapping[str, Any] | None = None


class RawJSON(bytes):
    """
    Already-encoded JSON: returned from C{handle}, the server writes it as
    the body unchanged.  A plugin that serves a snapshot encodes it once per
    change instead of once per request.
    """


HeaderValues: TypeAlias = "str | bytes | Sequence[str | bytes]"
"""A header's value, or its values when it is sent more than once."""


class Response:
    """
    Any answer: a body with a status, headers and a content type of the
    plugin's choosing.

    The body decides the default content type: a C{str} is sent UTF-8
    encoded as C{text/plain; charset=utf-8}; C{bytes} as
    C{application/octet-stream}; L{None} sends no body and no content type;
    an iterator or async iterator of C{str}/C{bytes} chunks is streamed (its
    first chunk decides the type); any other value is encoded as JSON
    (C{application/json}).  C{content_type} overrides the default.

    C{headers} may set any header but the framing ones (C{Content-Length},
    C{Transfer-Encoding}, C{Connection}): the server frames the answer.  A
    plugin's C{Cache-Control} replaces the default C{no-store};
    C{X-Content-Type-Options: nosniff} always stays.

    @ivar body: what to send.
    @ivar status: the status, from 200 to 599.
    @ivar headers: extra headers by name; a sequence of values sends the
        header once per value.
    @ivar content_type: the C{Content-Type}, or L{None} for the body's
        default.
    """

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: Any = b"",
        status: int = 200,
        headers: Mapping[str, HeaderValues] | None = None,
        content_type: str | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.headers = headers
        self.content_type = content_type

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, "
            f"content_type={self.content_type!r}, headers={self.headers!r})"
        )


def redirect(url: str, status: int = 302) -> Response:
    """
    A redirect to C{url}: C{status} (302 by default; 301, 303, 307 and 308
    are the others that make sense) with C{Location} and no body.
    """
    return Response(None, status, {"Location": url})


class FileResponse(Response):
    """
    A file, served without blocking the reactor and without reading it
    whole into memory, with C{Content-Length}, C{Last-Modified}, C{ETag},
    304 answers to conditional requests and single C{Range} requests.  A
    missing or unreadable file is a 404.

    @ivar path: the file.
    @ivar download_name: when given, the file is sent as an attachment
        (C{Content-Disposition}) under this name.
    """

    __slots__ = ("download_name", "path")

    def __init__(
        self,
        path: str | os.PathLike[str],
        content_type: str | None = None,
        download_name: str | None = None,
        headers: Mapping[str, HeaderValues] | None = None,
    ) -> None:
        super().__init__(None, 200, headers, content_type)
        self.path = os.fspath(path)
        self.download_name = download_name


class EventStream(Response):
    """
    A stream of server-sent events (C{text/event-stream}).

    Each item of C{events} (an iterator or async iterator) is one event: a
    dict with a C{data} key and no keys but C{data}, C{event}, C{id} and
    C{retry} is sent as those fields (C{data} JSON-encoded); any other item
    is sent whole as C{data: <json>}.  A C{: keep-alive} comment goes out
    every C{heartbeat} seconds.
    """

    __slots__ = ("heartbeat",)

    def __init__(
        self,
        events: Any,
        heartbeat: float = 15,
        headers: Mapping[str, HeaderValues] | None = None,
    ) -> None:
        super().__init__(events, 200, headers, "text/event-stream")
        self.heartbeat = heartbeat


@attr.s(auto_attribs=True, frozen=True)
class UploadedFile:
    """
    A file field of a multipart form (C{request.files}).

    @ivar filename: the name the client gave it (never a path to trust).
    @ivar content_type: the type the client declared.
    @ivar data: its content.
    """

    filename: str
    content_type: str
    data: bytes


Result: TypeAlias = Any | tuple[int, Any] | tuple[int, Any, Mapping[str, HeaderValues]] | Response
"""What C{handle} may return: a value (200), a C{(status, value)} or
C{(status, value, headers)} tuple, or a L{Response}."""


class Plugin:
    """
    Base class of every plugin.  Subclass it in a file of the plugins
    directory and override L{handle}; the file's name is the route.

    @cvar name: the route name; the file's basename when L{None}.
    @cvar methods: the HTTP methods this plugin answers (HEAD is answered
        wherever GET is).
    @cvar blocking: run C{handle} in the server's thread pool, so that it may
        block (files, subprocesses, slow libraries) without stalling others.
    @cvar args: the declared arguments, C{{name: {"type": ..., "required":
        ..., "default": ..., "description": ...}}}: the server converts and
        checks C{request.args} against them before C{handle} (see
        L{pluginserver.declared}); L{None} declares nothing.
    """

    name: ClassVar[str | None] = None
    methods: ClassVar[tuple[str, ...]] = ("GET", "HEAD", "POST")
    blocking: ClassVar[bool] = False
    args: ClassVar[Mapping[str, Mapping[str, Any]] | None] = None

    def __init__(self, name: str, params: Mapping[str, Any], config: Any = None) -> None:
        # An instance attribute shadows the class attribute: self.name is
        # always the route it serves.
        self.name = name  # type: ignore[misc]
        self.params = params
        self.config = config

    @classmethod
    def construct(cls, name: str, params: Mapping[str, Any], config: Any) -> tuple[Plugin, str]:
        """
        Make the instance that serves, and give it back with the route it
        serves: what the registry calls to make a plugin, instead of the
        class itself.

        C{name} is the route the class's C{name} attribute or the file
        gives, already checked.  By default the instance is C{cls(name,
        params, config)} and it serves C{name}.

        A class whose route is only known once an instance exists
        overrides this: the old server's plugins (L{plugincore}), whose
        constructor takes keywords and sets the route itself.  The registry
        checks a route other than C{name} as it checked C{name} (a refused
        one fails the load, and the instance is stopped at once, without
        having started); C{--check} can only show C{name}.
        """
        return cls(name, params, config), name

    def start(self) -> Awaitable[None] | None:
        """
        Called once when this instance is loaded, before it serves: start
        timers and background work here.  May return a Deferred or be async.
        """
        return None

    def stop(self) -> Awaitable[None] | None:
        """
        Called once when this instance is replaced, removed, or the server
        stops: stop every timer and background task started in L{start}.
        """
        return None

    def handle(self, request: PluginRequest) -> Any:
        """
        Answer one request.  Return a JSON-serialisable value (200), a
        C{(status, value)} tuple, or raise L{HTTPError}; may be async or
        return a Deferred.
        """
        raise HTTPError(404, "not found")

    def every(self, seconds: float, fn: Callable[[], object], *, now: bool = True) -> LoopingCall:
        """
        Call C{fn} every C{seconds} (first right away unless C{now} is false)
        until this instance stops, and give back the running L{LoopingCall}.

        The server stops the loop itself right after L{stop} (so a plugin
        need not write one).  C{fn} may be async or return a Deferred: the
        next call waits until it finishes, and the server cancels one still
        running when it stops the loop.  A failure of C{fn} is logged with
        the plugin's name and the loop keeps going (a bare L{LoopingCall}
        would stop for good at the first one).  Call it from L{start} or a
        handler, not C{__init__}; after this instance has stopped it raises
        L{RuntimeError}.
        """
        background = _backgroundOf(self)
        background.check(self)
        name = _nameOf(self)

        def failed(failure: Failure) -> None:
            if not (background.closed and failure.check(defer.CancelledError)):
                _log.failure(
                    "Plugin {plugin}: every({seconds}) call of {fn} failed",
                    failure,
                    plugin=name,
                    seconds=seconds,
                    fn=getattr(fn, "__qualname__", fn),
                )

        def tick() -> defer.Deferred[None] | None:
            try:
                result = fn()
            except BaseException:
                failed(Failure())
                return None
            if inspect.iscoroutine(result):
                result = coroutines.run(result)
            if not isinstance(result, defer.Deferred):
                return None
            background.track(result)
            return result.addCallbacks(lambda _: None, failed)

        loop = LoopingCall(tick)
        background.loops.append(loop)
        ended = loop.start(seconds, now=now)
        ended.addBoth(lambda _: background.loops.remove(loop) if loop in background.loops else None)
        return loop

    def spawn(self, work: Coroutine[Any, Any, _T] | defer.Deferred[_T]) -> defer.Deferred[_T]:
        """
        Run C{work} (a coroutine, or a Deferred already under way) in the
        background, owned by this instance: the server cancels it right
        after L{stop} if it has not finished (the coroutine sees
        L{CancelledError<defer.CancelledError>} where it waits, and its
        C{finally} blocks run), so a reload leaves nothing running.

        Gives back a Deferred of its outcome (cancelling it cancels the
        work).  A failure the plugin does not handle, in the coroutine or in
        callbacks it added to that Deferred before the failure came, is
        logged with the plugin's name (and callbacks added later get
        L{None}): background work fails loudly, never silently, and is
        reported once.  Call it from L{start} or a
        handler, not C{__init__}; after this instance has stopped it raises
        L{RuntimeError}.
        """
        background = _backgroundOf(self)
        if not isinstance(work, defer.Deferred) and not inspect.iscoroutine(work):
            raise TypeError(f"spawn() takes a coroutine or a Deferred, not {type(work).__name__}")
        if background.closed:
            if isinstance(work, defer.Deferred):
                work.cancel()
            else:
                work.close()
            background.check(self)
        d = work if isinstance(work, defer.Deferred) else coroutines.run(work)
        name = _nameOf(self)
        # The plugin gets its own Deferred: once the work's outcome has run
        # through the callbacks the plugin added, a failure still left at
        # the end was not handled, and is logged (and consumed, so that
        # Twisted does not report it a second time).
        result: defer.Deferred[_T] = defer.Deferred(lambda _: d.cancel())

        def finished(outcome: object) -> None:
            if result.called:  # cancelled through result, which fired itself
                return
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)  # type: ignore[arg-type]
            left = result.result
            if isinstance(left, Failure):
                if not left.check(defer.CancelledError):
                    _log.failure("Plugin {plugin}: spawned work failed", left, plugin=name)
                result.addErrback(lambda _: None)

        background.track(d)
        d.addBoth(finished)
        return result


_BACKGROUND = "_pluginserver_background"
"""The instance attribute holding a plugin's L{_Background}; made on first
use, so that it works even when a subclass's C{__init__} skips Plugin's."""


class _Background:
    """
    What one plugin instance started with L{Plugin.every} and
    L{Plugin.spawn} and has not finished: what L{stop_background} ends.

    @ivar loops: the running loops.
    @ivar tasks: the Deferreds still pending (spawned work, and calls of an
        async C{every} function under way); finished ones leave at once.
    @ivar closed: true once L{stop_background} ran; nothing new may start.
    """

    __slots__ = ("closed", "loops", "tasks")

    def __init__(self) -> None:
        self.loops: list[LoopingCall] = []
        self.tasks: set[defer.Deferred[Any]] = set()
        self.closed = False

    def check(self, plugin: Plugin) -> None:
        """
        Refuse to start work for a plugin instance that has stopped: nothing
        would ever stop it.
        """
        if self.closed:
            raise RuntimeError(
                f"plugin {_nameOf(plugin)} has stopped: it cannot start background work"
            )

    def track(self, d: defer.Deferred[Any]) -> None:
        """
        Hold C{d} until it fires (C{d}'s result passes through unchanged).
        """
        if d.called:
            return
        self.tasks.add(d)

        def forget(result: object) -> object:
            self.tasks.discard(d)
            return result

        d.addBoth(forget)


def _backgroundOf(plugin: Plugin) -> _Background:
    background = getattr(plugin, _BACKGROUND, None)
    if not isinstance(background, _Background):
        background = _Background()
        setattr(plugin, _BACKGROUND, background)
    return background


def _nameOf(plugin: Plugin) -> str:
    name = getattr(plugin, "name", None)
    return name if isinstance(name, str) else type(plugin).__name__


def stop_background(plugin: Plugin) -> defer.Deferred[None]:
    """
    Stop every loop and cancel all work that C{plugin} started with
    L{Plugin.every} and L{Plugin.spawn}, and refuse new work from it.

    The registry calls this right after the instance's C{stop()} has
    settled (returned, failed or timed out) and when its C{start()} failed,
    so that what a plugin forgot to stop does not outlive its generation.
    Never raises: a canceller that does is logged.

    @return: a Deferred that fires when all the cancelled work has ended
        (a coroutine running as an asyncio task ends, its C{finally}
        blocks run, on a later turn of the loop); the caller bounds the
        wait.
    """
    background = getattr(plugin, _BACKGROUND, None)
    if not isinstance(background, _Background):
        return defer.succeed(None)
    background.closed = True
    name = _nameOf(plugin)
    for loop in list(background.loops):
        if loop.running:
            loop.stop()
    background.loops.clear()
    pending = list(background.tasks)
    background.tasks.clear()
    for d in pending:
        try:
            d.cancel()
        except BaseException:
            _log.failure("Plugin {plugin}: cancelling background work failed", plugin=name)
    waits = [coroutines.ended(d) for d in pending]
    return defer.gatherResults(waits).addCallback(lambda _: None)
