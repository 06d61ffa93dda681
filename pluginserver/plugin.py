# -*- test-case-name: tests.test_web,tests.test_registry -*-
"""
The plugin API: what a plugin author subclasses, receives and raises.

Nothing here knows about Klein or twisted.web: a plugin sees a
L{PluginRequest} (plain Python values) and answers with a JSON-serialisable
value, a C{(status, value)} tuple, or an L{HTTPError}.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, ClassVar, TypeAlias

import attr


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
    """

    method: str
    subpath: str = ""
    args: Mapping[str, Any] = attr.Factory(dict)
    json: Any = None
    headers: Headers = attr.Factory(lambda: Headers({}))
    client: str = ""
    body: bytes = b""


class RawJSON(bytes):
    """
    Already-encoded JSON: returned from C{handle}, the server writes it as
    the body unchanged.  A plugin that serves a snapshot encodes it once per
    change instead of once per request.
    """


Result: TypeAlias = Any | tuple[int, Any]
"""What C{handle} may return: a value (200) or a C{(status, value)} tuple."""


class Plugin:
    """
    Base class of every plugin.  Subclass it in a file of the plugins
    directory and override L{handle}; the file's name is the route.

    @cvar name: the route name; the file's basename when L{None}.
    @cvar methods: the HTTP methods this plugin answers (HEAD is answered
        wherever GET is).
    @cvar blocking: run C{handle} in the server's thread pool, so that it may
        block (files, subprocesses, slow libraries) without stalling others.
    """

    name: ClassVar[str | None] = None
    methods: ClassVar[tuple[str, ...]] = ("GET", "HEAD", "POST")
    blocking: ClassVar[bool] = False

    def __init__(self, name: str, params: Mapping[str, Any], config: Any = None) -> None:
        # An instance attribute shadows the class attribute: self.name is
        # always the route it serves.
        self.name = name  # type: ignore[misc]
        self.params = params
        self.config = config

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
