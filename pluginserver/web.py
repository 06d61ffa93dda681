# -*- test-case-name: tests.test_web -*-
"""
The HTTP face of the server: a root resource that dispatches plugin routes
straight to the registry, and a Klein app for the utility routes
(C{/plugins}, C{/reload/...}) and for everything no plugin serves.

Every body is JSON, errors included: C{{"error": message}} with the right
status.  A plugin's exception is logged with its traceback and answered
C{500 {"error": "internal error"}}: no traceback, path or exception text
reaches the client.
"""

from __future__ import annotations

import math
import types
from collections.abc import Generator
from time import perf_counter as _now
from typing import TYPE_CHECKING, Any, Protocol, cast

from klein import Klein
from twisted.internet import defer
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from pluginserver import coroutines
from pluginserver.answers import (
    UNENCODABLE,
    BadResponse,
    answer,
    check_status,
    empty,
    encode,
    encode_body,
    encode_json,
    error,
    header_pairs,
    header_value,
    is_stream,
    json_answer,
    set_headers,
)
from pluginserver.arguments import Arguments, BadRequest, parse_request
from pluginserver.channel import header_values
from pluginserver.config import Settings
from pluginserver.declared import ArgumentError
from pluginserver.files import DocumentTree, serve_file
from pluginserver.keys import KeySet, as_keys
from pluginserver.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from pluginserver.metrics import Metrics
from pluginserver.openapi import OpenAPI
from pluginserver.plugin import (
    EventStream,
    FileResponse,
    Headers,
    HTTPError,
    PluginRequest,
    RawJSON,
    Response,
)
from pluginserver.ratelimit import Limits
from pluginserver.registry import (
    RESERVED_NAMES,
    LoadedPlugin,
    PluginRegistry,
    ReloadOutcome,
    ReloadReport,
)
from pluginserver.security import (
    WWW_AUTHENTICATE,
    SecurityPolicy,
    audit_reload,
    client_certificate,
    find_key,
    host_without_port,
    preflight_headers,
)
from pluginserver.site import web_request
from pluginserver.streams import Streams
from pluginserver.target import BAD_TARGET, BadTarget, Target, parse_path, split_absolute
from pluginserver.webui import DASHBOARD, dashboard_tree, redirect_to_dashboard

if TYPE_CHECKING:
    from pluginserver.site import PluginServerRequest

log = Logger()

HELD_TOO_LONG = 0.5
"""Seconds a plugin's handle may hold the reactor before a warning says so."""


_UTILITY_METHODS = frozenset({"GET", "HEAD", "POST"})
_DOCUMENT_METHODS = frozenset({"GET", "HEAD"})
_SAFE = frozenset({b"GET", b"HEAD"})
_METHODS = {
    m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


class Runtime(Protocol):
    """
    What the web layer needs from the service that owns it.
    """

    @property
    def settings(self) -> Settings: ...

    @property
    def registry(self) -> PluginRegistry: ...

    @property
    def stopping(self) -> bool:
        """
        Whether shutdown has begun (C{/health} then answers 503, so that a
        load balancer drains this server).
        """
        ...

    def reload_all(self) -> defer.Deferred[tuple[ReloadReport, dict[str, str]]]:
        """
        Re-read the configuration (and TLS certificates) and reload every
        plugin.  Fires with the registry's report and the other failures by
        what failed (C{"config"}, a listener), whose old state stays in force.
        """
        ...


class _LazyHeaders(Headers):
    """
    Request headers decoded only when a plugin looks at them: most never do.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._decoded: dict[str, str] | None = None

    @property
    def _items(self) -> dict[str, str]:  # type: ignore[override]  # computed, never assigned
        if self._decoded is None:
            self._decoded = {
                name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
                for name, values in self._raw.getAllRawHeaders()
            }
        return self._decoded


class PluginServerResource(Resource):
    """
    The root of the site.  Plugin routes are dispatched here directly (a
    dict lookup, no URL matching); everything else goes to the Klein app of
    L{UtilityRoutes}.
    """

    isLeaf = True
    rendersParsedRequests = True
    """The site may hand it a L{ParsedRequest}: it asks L{web_request} for
    twisted.web's own Request where it needs one (Klein, files, streams,
    an answer that comes later), and answers plugin routes without."""

    def __init__(
        self,
        runtime: Runtime,
        reactor: Any,
        threadpool: ThreadPool | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self._runtime = runtime
        self._reactor = reactor
        self._threadpool = threadpool
        self._metrics = metrics
        utility = UtilityRoutes(runtime, metrics)
        self.openapi = utility.openapi
        """The C{/openapi.json} document, rebuilt when the routes change."""
        self._utility: Resource = utility.app.resource()
        # The registry's own dict lookup (a read-only view of it): no
        # Python call per request.
        self._lookup = runtime.registry.plugins.get
        self.streams = Streams(reactor)
        """The open streamed answers, ended when their generation retires."""
        # When each generation last warned of holding the reactor.
        self._heldWarned: dict[str, float] = {}
        # When each refused Host, and each client's refused path, was last
        # logged.
        self._hostLogged: dict[str, float] = {}
        self._pathLogged: dict[str, float] = {}
        self.limits = Limits(
            self._limitedRoute,
            reactor.seconds,
            lambda request: self._client(request, self._policy),
        )
        """The rate and auth-failure limits; the site asks them before a
        request's body is read."""
        self.configure(runtime.settings)

    def configure(self, settings: Settings) -> None:
        """
        Take new settings into use (the owner calls this when it reloads
        its configuration).
        """
        self._policy = policy = SecurityPolicy.from_settings(settings)
        self.streams.configure(settings)
        self.limits.configure(
            settings.rate_limit, settings.rate_burst, settings.auth_failures, settings.plugin_params
        )
        # Client certificates are only ever sent when the server asks.
        self._clientCerts = settings.client_auth != "none"
        # Each documents tree with the key it needs (None: none), by route.
        documents: dict[str, tuple[DocumentTree, KeySet | None]] = {}
        for route, directory in settings.documents:
            params = settings.plugin_params.get(route) or {}
            mode = params.get("auth", "global")
            key = policy.global_keys if mode == "global" else as_keys(params.get("apikey"))
            if mode == "none":
                key = None
            # A public tree may be kept by browsers and revalidated (ETag,
            # 304); one behind a key is never stored (the default no-store).
            cache = b"no-cache" if key is None else b"no-store"
            documents[route] = (DocumentTree(route, directory, cache), key)
        if settings.dashboard:
            # The page holds no data and needs no key; what it fetches does.
            documents[DASHBOARD] = (dashboard_tree(), None)
        self._documents = documents

    def render(self, request: PluginServerRequest) -> Any:
        # The site's request has already set the headers every answer
        # carries (JSON content type, nosniff, no-store).  This is the path
        # of every request: each check costs only when it is configured.
        policy = self._policy
        hosts = header_values(request.requestHeaders, b"host")
        if request.path[:1] != b"/":
            absolute = split_absolute(request.path)
            if absolute is None:
                return error(request, 400, BAD_TARGET)
            # RFC 9112 §3.2.2: the target's host replaces any Host header.
            authority, request.path = absolute
            hosts = [authority]
            request.requestHeaders.setRawHeaders(b"host", hosts)
        elif hosts is None:
            if request.clientproto != b"HTTP/1.0":
                return error(request, 400, "missing Host header")
        elif len(hosts) != 1:
            return error(request, 400, "more than one Host header")
        host = hosts[0] if hosts else None
        if policy.allowed_hosts is not None and not policy.host_allowed(host):
            return self._hostRefused(request, host)
        peer = getattr(request.client, "host", "")  # the peer's address; a unix: peer has none
        client = peer if not policy.trusted_proxies else self._client(request, policy)
        # A client on a unix: socket has no address: it is local, and the
        # socket file's permissions say who may connect.
        if policy.access_allow is not None and client and not policy.address_allowed(client):
            return error(request, 403, "forbidden")
        try:
            # The one view of the path: the checks below and the dispatch
            # all use this name and subpath, never the raw path again.
            target = parse_path(request.path)
        except BadTarget as e:
            request.route = "other"
            if e.reason is not None:
                self._refusedPath(request, client, e.reason)
            return error(request, e.status, e.message)
        name = target.name
        lookup = self._lookup  # a local: see _run
        loaded = lookup(name)
        # A documents tree serves a name no plugin has: looked up only then.
        tree = self._documents.get(name) if loaded is None else None
        # The route label of this request's metrics (the site counts it).
        request.route = (
            name if loaded is not None or tree is not None or name in RESERVED_NAMES else "other"
        )
        if policy.cors_enabled:
            methods = loaded.methods if loaded else _DOCUMENT_METHODS if tree else None
            preflight = self._cors(request, policy, methods)
            if preflight is not None:
                return preflight
        # A page of another site may read what CORS lets it, but never
        # act: no utility route, no plugin method that changes state.
        guarded = (
            name in RESERVED_NAMES
            if loaded is None and tree is None
            else request.method not in _SAFE
        )
        if guarded and self._crossSite(request, policy):
            return error(request, 403, "cross-site request refused")
        if loaded is None:
            if tree is not None:
                return self._document(request, policy, tree, target, client)
            return self._utilityRoute(request, policy, target, client)
        return self._dispatch(request, loaded, target.subpath, policy, client)

    def _crossSite(self, request: HTTPRequest, policy: SecurityPolicy) -> bool:
        headers = request.requestHeaders
        origin = headers.getRawHeaders(b"origin")
        fetchSite = headers.getRawHeaders(b"sec-fetch-site")
        if origin is None and fetchSite is None:
            return False  # not a browser's cross-origin request
        scheme = b"https" if request.isSecure() else b"http"
        host = request.getHeader(b"host")
        own = scheme + b"://" + host if host is not None else None
        return policy.cross_site(
            origin[0] if origin else None, fetchSite[0] if fetchSite else None, own
        )

    def _cors(
        self, request: HTTPRequest, policy: SecurityPolicy, methods: frozenset[str] | None
    ) -> Any:
        """
        Apply the CORS policy: add its headers, refuse an origin that is not
        allowed, and answer a preflight.  Returns the answer when there is
        nothing more to do.
        """
        origin = request.getHeader(b"origin")
        if origin is None:
            return None
        decision = policy.cors(origin)
        if not decision.allowed:
            return error(request, 403, "origin not allowed")
        headers = request.responseHeaders
        for header, value in decision.headers:
            headers.setRawHeaders(header, [value])
        if request.method == b"OPTIONS" and request.getHeader(b"access-control-request-method"):
            # A preflight carries no credentials: answer it before any key
            # is asked for.
            for header, value in preflight_headers(methods or _UTILITY_METHODS):
                headers.setRawHeaders(header, [value])
            request.setResponseCode(204)
            return empty(request)
        return None

    def _utilityRoute(
        self, request: PluginServerRequest, policy: SecurityPolicy, target: Target, client: str
    ) -> Any:
        request = web_request(request)  # Klein's
        name = target.name
        if not name and request.method in _SAFE and DASHBOARD in self._documents:
            return redirect_to_dashboard(request)  # "/": the dashboard
        if name not in RESERVED_NAMES:
            return error(request, 404, "not found")
        # Klein routes on postpath (which our Request leaves empty): give it
        # the segments the checks here were made on, already decoded and
        # free of empty, dot and slash-bearing segments.
        request.postpath = [segment.encode("utf-8") for segment in target.segments]
        if name == "reload" and request.method not in (b"GET", b"POST"):
            # A reload changes state: not on HEAD, whatever GET allows.
            request.setHeader(b"allow", b"GET, POST")
            return error(request, 405, "method not allowed")
        # /health reveals nothing, and a load balancer asks it without a key.
        public = name == "health" or (name == "metrics" and self._runtime.settings.metrics_public)
        if policy.utility_keys is not None and not public:
            # The admin key when there is one (a global key alone: 403),
            # else the global key.
            _, refusal = self._keyed(request, policy, policy.utility_keys, client, policy.apikey)
            if refusal is not None:
                return refusal
        request.audit_client = client  # type: ignore[attr-defined]  # for the audit log
        return self._utility.render(request)

    def _document(
        self,
        request: PluginServerRequest,
        policy: SecurityPolicy,
        documents: tuple[DocumentTree, KeySet | None],
        target: Target,
        client: str,
    ) -> Any:
        """
        Serve a file of a documents tree, after its gate: GET and HEAD only,
        and the key it needs (the global one unless its C{[plugin_parms]}
        say C{auth=none} or give it its own).
        """
        request = web_request(request)  # files are served through it
        tree, key = documents
        if request.method not in _SAFE:
            request.setHeader(b"allow", b"GET, HEAD")
            return error(request, 405, "method not allowed")
        if key is not None:
            _, refusal = self._keyed(request, policy, key, client)
            if refusal is not None:
                return refusal
        return tree.serve(request, target.subpath, client, self._inThread)

    def _inThread(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        """
        Run C{f(*args)} in the thread pool of blocking plugins.
        """
        if self._threadpool is None:
            return deferToThread(f, *args)
        return deferToThreadPool(self._reactor, self._threadpool, f, *args)

    def _client(self, request: HTTPRequest, policy: SecurityPolicy) -> str:
        peer = getattr(request.getClientAddress(), "host", "")
        if not policy.trusted_proxies:
            return peer if type(peer) is str else str(peer)
        return policy.client_address(
            str(peer), request.requestHeaders.getRawHeaders(b"x-forwarded-for")
        )

    def _keyed(
        self,
        request: HTTPRequest,
        policy: SecurityPolicy,
        expected: KeySet | None,
        client: str,
        forbidden: KeySet | None = None,
    ) -> tuple[Arguments | None, Any]:
        """
        Parse the request's arguments (once: the key may be among them) and
        check the key the route needs (L{None}: none).  Gives back the
        arguments and no refusal, or no arguments and the refusal to answer
        (400 for arguments that cannot be parsed, 401 for a missing or wrong
        key, 403 for a key of C{forbidden}: valid, but not here).  A wrong
        key counts against the client's auth-failure limit; the id of the
        right one is kept on the request (C{key_id}) for the audit log.
        """
        try:
            arguments = parse_request(request)
        except BadRequest as e:
            return None, error(request, 400, str(e))
        if expected is None:
            return arguments, None
        given = find_key(
            request.requestHeaders, arguments.query_key, arguments.body_key, policy.allow_query_key
        )
        keyId = expected.match(given)
        if keyId is None:
            if forbidden is not None and forbidden.match(given) is not None:
                return None, error(request, 403, "forbidden")
            if given is not None:
                self.limits.failed(client)
            request.setHeader(b"www-authenticate", WWW_AUTHENTICATE)
            return None, error(request, 401, "unauthorized")
        request.key_id = keyId  # type: ignore[attr-defined]
        return arguments, None

    def _limitedRoute(self, request: HTTPRequest) -> tuple[str, str, bool] | None:
        """
        What the limits need of a request whose head alone has arrived: its
        client address (after the trusted-proxy rule), its route name and
        whether that route needs a key; L{None} when its target will be
        refused anyway.  Also sets the route label of its metrics.
        """
        policy = self._policy
        target = request.path
        if target[:1] != b"/":
            absolute = split_absolute(target)
            if absolute is None:
                return None
            target = absolute[1]
        try:
            name = parse_path(target).name
        except BadTarget:
            return None
        loaded = self._lookup(name)
        if loaded is not None:
            mode = loaded.auth_mode
            keyed = (
                loaded.own_key is not None
                if mode == "plugin"
                else mode == "global" and policy.global_keys is not None
            )
        elif name in self._documents:
            keyed = self._documents[name][1] is not None
        elif name in RESERVED_NAMES:
            keyed = policy.utility_keys is not None and name != "health"
        else:
            name, keyed = "other", False
        request.route = name  # type: ignore[attr-defined]
        return self._client(request, policy), name, keyed

    # -- plugin dispatch ---------------------------------------------------

    def _dispatch(
        self,
        request: HTTPRequest,
        loaded: LoadedPlugin,
        subpath: str,
        policy: SecurityPolicy,
        client: str,
    ) -> Any:
        method = _METHODS.get(request.method) or request.method.decode("latin-1")
        if method not in loaded.methods:
            request.setHeader(b"allow", ", ".join(sorted(loaded.methods)).encode("ascii"))
            return error(request, 405, "method not allowed")
        # Per plugin: its own key, none, a client certificate, or the global
        # one (which may be unset).
        mode = loaded.auth_mode
        expected = policy.global_keys if mode == "global" else loaded.own_key
        cert = client_certificate(request.transport) if self._clientCerts else None
        if mode == "cert" and cert is None:
            request.setHeader(b"www-authenticate", WWW_AUTHENTICATE)
            return error(request, 401, "unauthorized")
        arguments, refusal = self._keyed(request, policy, expected, client)
        if arguments is None:
            return refusal
        args = arguments.args
        if loaded.declared is not None:
            # Its declared args, converted and checked (only when declared:
            # the others pay nothing).
            try:
                args = loaded.declared.apply(args)
            except ArgumentError as e:
                return error(request, 400, str(e))
        # By position: a call by keyword cost twice as much (9 fields).
        preq = PluginRequest(
            method,
            subpath,
            args,
            arguments.document,
            _LazyHeaders(request.requestHeaders),
            client,
            arguments.body,
            arguments.files,
            cert,
        )
        if loaded.blocking and self._threadpool is not None:
            d = deferToThreadPool(self._reactor, self._threadpool, loaded.handle, preq)
            return self._wait(request, loaded, d)
        started = _now()
        try:
            return self._run(request, loaded, preq)
        finally:
            held = _now() - started
            if held > HELD_TOO_LONG:
                self._heldTheReactor(loaded, held)

    def _run(self, request: HTTPRequest, loaded: LoadedPlugin, preq: PluginRequest) -> Any:
        """
        Call a plugin's handle on the reactor thread and answer what it
        gives, or wait for it when it is asynchronous.
        """
        # Called through a local: CPython 3.11 does not specialise a method
        # call of a callable kept on an instance.
        handle = loaded.handle
        try:
            result = handle(preq)
        except HTTPError as e:
            return error(request, e.status, e.message)
        except BaseException:
            # sys.exit() or any BaseException from a plugin fails this
            # request only (Twisted's own signal handling raises nothing here).
            self._logFailure(Failure(), request, loaded)
            return error(request, 500, "internal error")
        if type(result) is dict:
            # The common answer: a dict, 200.
            try:
                body = encode(result).encode("utf-8")
            except UNENCODABLE:
                return self._result(request, loaded, result)
            if request.method == b"HEAD":
                return answer(request, 200, body)
            return body
        if isinstance(result, types.CoroutineType):
            return self._wait(request, loaded, coroutines.run(result))
        if isinstance(result, defer.Deferred):
            return self._wait(request, loaded, result)
        return self._result(request, loaded, result)

    def _result(self, request: HTTPRequest, loaded: LoadedPlugin, result: Any) -> Any:
        """
        Answer what a plugin's handle gave: a L{Response}, a C{(status,
        value)} or C{(status, value, headers)} tuple, or a value (200 JSON).
        """
        if isinstance(result, Response):
            return self._respond(request, loaded, result)
        if type(result) is tuple:
            if len(result) in (2, 3):
                value = result[1]
                try:
                    body = encode_json(value)
                except UNENCODABLE:
                    self._logFailure(Failure(), request, loaded)
                    return error(request, 500, "internal error")
                if len(result) == 3:
                    return self._respond(
                        request, loaded, Response(RawJSON(body), result[0], result[2])
                    )
                try:
                    # (status, value): JSON with the default headers, as fast
                    # as a plain value.
                    return answer(request, check_status(result[0]), body)
                except BadResponse as e:
                    self._logError(
                        request, loaded, "answered what cannot be sent: {problem}", problem=e
                    )
                    return error(request, 500, "internal error")
            self._logError(
                request, loaded, "answered a tuple of {length} items", length=len(result)
            )
            return error(request, 500, "internal error")
        try:
            body = encode_json(result)
        except UNENCODABLE:
            self._logFailure(Failure(), request, loaded)
            return error(request, 500, "internal error")
        return answer(request, 200, body)

    def _respond(self, request: HTTPRequest, loaded: LoadedPlugin, response: Response) -> Any:
        """
        Send a plugin's L{Response}: checked whole before anything is set,
        so that a mistake in it is a clean logged 500.
        """
        if isinstance(response, (FileResponse, EventStream)) or is_stream(response.body):
            request = web_request(request)  # they write through it over time
        try:
            status = check_status(response.status)
            pairs, headerType = header_pairs(response.headers)
            contentType = (
                header_value("Content-Type", response.content_type)
                if response.content_type is not None
                else headerType
            )
            if isinstance(response, FileResponse):
                return serve_file(request, response, status, pairs, contentType)
            if isinstance(response, EventStream) or is_stream(response.body):
                return self.streams.serve(request, loaded, response, status, pairs, contentType)
            body, implied = encode_body(response.body)
        except BadResponse as e:
            self._logError(request, loaded, "answered what cannot be sent: {problem}", problem=e)
            return error(request, 500, "internal error")
        set_headers(request, pairs, contentType if contentType is not None else implied)
        return answer(request, status, body if body is not None else b"")

    def _wait(self, request: HTTPRequest, loaded: LoadedPlugin, d: defer.Deferred[Any]) -> Any:
        """
        Answer when an asynchronous handler fires, or 504 when it runs past
        C{request_timeout}; a client that goes away cancels it.
        """
        request = web_request(request)  # it answers later
        gone: list[bool] = []

        def disconnected(reason: Failure) -> None:
            gone.append(True)
            d.cancel()

        request.notifyFinish().addErrback(disconnected)
        timeout = self._runtime.settings.request_timeout
        timedOut: list[bool] = []

        def onTimeout(result: Any, timeout: float) -> Any:
            timedOut.append(True)
            return result

        d.addTimeout(timeout, self._reactor, onTimeoutCancel=onTimeout)

        def succeeded(result: Any) -> None:
            if gone:
                return
            body = self._result(request, loaded, result)
            self._finish(request, body)

        def failed(reason: Failure) -> None:
            if gone:
                return
            raised = reason.value
            if isinstance(raised, HTTPError):
                body = error(request, raised.status, raised.message)
            elif timedOut and reason.check(defer.CancelledError):
                log.warn(
                    "Plugin {plugin} generation {generation} did not answer "
                    "{method} {path} within {timeout} s",
                    plugin=loaded.name,
                    generation=loaded.generation,
                    method=request.method.decode("latin-1"),
                    path=request.path.decode("latin-1"),
                    timeout=timeout,
                )
                body = error(request, 504, "timeout")
            else:
                self._logFailure(reason, request, loaded)
                body = error(request, 500, "internal error")
            self._finish(request, body)

        d.addCallbacks(succeeded, failed)
        return NOT_DONE_YET

    def _finish(self, request: HTTPRequest, body: Any) -> None:
        if body is NOT_DONE_YET:
            return  # already finished, without a body
        if request.method != b"HEAD":
            request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()

    def _refusedPath(self, request: HTTPRequest, client: str, reason: str) -> None:
        """
        Log a path refused for its spelling (dot segments, encoded slashes,
        backslashes, NUL: how path traversal is tried), at most once a
        minute per client.
        """
        if not self._onceAMinute(self._pathLogged, client):
            return
        log.warn(
            "Refused path {path!r} from {client}: {reason} (traversal attempt?)",
            path=request.path.decode("latin-1")[:200],
            client=client or "a unix socket",
            reason=reason,
        )

    def _onceAMinute(self, seen: dict[str, float], key: str) -> bool:
        """
        Whether to log about C{key} now: not if it was logged in the last
        minute.  C{seen} is bounded: clients cannot grow it without end.
        """
        now = self._reactor.seconds()
        if now - seen.get(key, -math.inf) < 60:
            return False
        if len(seen) > 1024:
            seen.clear()
        seen[key] = now
        return True

    def _hostRefused(self, request: HTTPRequest, host: bytes | None) -> Any:
        """
        Refuse a C{Host} outside C{[server] allowed_hosts}, saying which host
        and which setting, and log it at most once a minute per host.
        """
        name = host_without_port(host)[:200] if host else ""
        if host:
            detail = f"host {name!r} is not in [server] allowed_hosts"
        else:
            detail = "the request names no host; [server] allowed_hosts needs one"
        if self._onceAMinute(self._hostLogged, name):
            log.warn(
                "Refused a request from {client}: {detail} ({path}); add it there "
                "if clients reach this server by that name",
                client=getattr(request.getClientAddress(), "host", "a unix socket"),
                detail=detail,
                path=self._runtime.settings.path,
            )
        return error(request, 400, "host not allowed", detail)

    def _heldTheReactor(self, loaded: LoadedPlugin, held: float) -> None:
        """
        Warn that a plugin's handle kept every other request waiting, at
        most once a minute per generation.
        """
        if not self._onceAMinute(self._heldWarned, f"{loaded.name} {loaded.generation}"):
            return
        log.warn(
            "Plugin {plugin} generation {generation} held the reactor for {held:.2f} s: "
            "every other request waited.  Set blocking = True on its class to run "
            "handle in a thread, or make it async.",
            plugin=loaded.name,
            generation=loaded.generation,
            held=held,
        )

    def _logError(
        self, request: HTTPRequest, loaded: LoadedPlugin, what: str, **fields: Any
    ) -> None:
        if self._metrics is not None:
            self._metrics.plugin_error(loaded.name)
        log.error(
            "Plugin {plugin} generation {generation} " + what + " on {method} {path}",
            plugin=loaded.name,
            generation=loaded.generation,
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
            **fields,
        )

    def _logFailure(self, failure: Failure, request: HTTPRequest, loaded: LoadedPlugin) -> None:
        if self._metrics is not None:
            self._metrics.plugin_error(loaded.name)
        log.failure(
            "Plugin {plugin} generation {generation} failed on {method} {path}",
            failure,
            plugin=loaded.name,
            generation=loaded.generation,
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
        )


class UtilityRoutes:
    """
    The server's own routes, as a Klein app bound to one runtime.
    """

    app = Klein()

    def __init__(self, runtime: Runtime, metrics: Metrics | None = None) -> None:
        self._runtime = runtime
        self._metrics = metrics
        self.openapi = OpenAPI(runtime)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Any) -> bytes:
        if self._metrics is None:
            return json_answer(request, 404, {"error": "not found"})
        cluster = _cluster(self._runtime)
        if cluster is not None:
            return self._clusterMetrics(request, cluster)  # type: ignore[return-value]
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE)
        return self._metrics.exposition()

    @defer.inlineCallbacks
    def _clusterMetrics(
        self, request: Any, cluster: Any
    ) -> Generator[defer.Deferred[Any], Any, bytes]:
        # Every worker's counts, added up by the supervisor.
        text: str = yield cluster.metrics()
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE)
        return text.encode("utf-8")

    @defer.inlineCallbacks
    def _clusterReload(
        self, request: Any, cluster: Any, name: str | None
    ) -> Generator[defer.Deferred[Any], Any, bytes]:
        """
        Reload every worker process (C{name}, or everything), the supervisor
        coordinating: the answer is the single process's, with each
        worker's own under C{"workers"}; one audit event, here.
        """
        status, body = yield cluster.reload(name)
        if name is None:
            failed = body.get("failed") or {}
        elif status == 404:
            failed = {name: "no such plugin"}
        else:
            failed = {} if body.get("success") else {name: body.get("error") or "failed"}
        audit_reload(
            _auditClient(request),
            _keyId(request),
            name or "all",
            not failed,
            failed,
            worker=cluster.number,
        )
        return json_answer(request, status, body)

    @app.route("/openapi.json", methods=["GET"])
    def openapiDocument(self, request: Any) -> bytes:
        # JSON, the content type every answer starts with; the same bytes
        # until the routes change.  HEAD: the length GET would send.
        return answer(request, 200, self.openapi.document())  # type: ignore[no-any-return]

    @app.route("/health", methods=["GET"])
    def health(self, request: Any) -> bytes:
        if self._runtime.stopping:
            return json_answer(request, 503, {"status": "stopping"})
        return json_answer(request, 200, {"status": "ok"})

    @app.route("/plugins", methods=["GET", "POST"])
    def plugins(self, request: Any) -> bytes:
        registry = self._runtime.registry
        return json_answer(
            request,
            200,
            {
                "loaded_plugins": sorted(registry.plugins),
                "plugins": {
                    name: loaded.describe() for name, loaded in sorted(registry.plugins.items())
                },
            },
        )

    @app.route("/reload/all", methods=["GET", "POST"])
    @defer.inlineCallbacks
    def reloadAll(self, request: Any) -> Generator[defer.Deferred[Any], Any, bytes]:
        cluster = _cluster(self._runtime)
        if cluster is not None:
            answer: bytes = yield self._clusterReload(request, cluster, None)
            return answer
        report: ReloadReport
        otherFailures: dict[str, str]
        report, otherFailures = yield self._runtime.reload_all()
        failed = dict(report.failed)
        failed.update(otherFailures)
        audit_reload(_auditClient(request), _keyId(request), "all", not failed, failed)
        body = {
            # The contract's body, 200 or 500 alike: "failed" says what did
            # not reload; every other plugin was reloaded.
            "status": "All plugins reloaded",
            "loaded_plugins": report.loaded,
            "added": report.added,
            "removed": report.removed,
            "failed": failed,
        }
        return json_answer(request, 500 if failed else 200, body)

    @app.route("/reload/<name>", methods=["GET", "POST"])
    @defer.inlineCallbacks
    def reloadOne(self, request: Any, name: str) -> Generator[defer.Deferred[Any], Any, bytes]:
        cluster = _cluster(self._runtime)
        if cluster is not None:
            answer: bytes = yield self._clusterReload(request, cluster, name)
            return answer
        try:
            outcome: ReloadOutcome = yield self._runtime.registry.reload(name)
        except KeyError:
            audit_reload(
                _auditClient(request), _keyId(request), name, False, {name: "no such plugin"}
            )
            return json_answer(request, 404, {"error": f"no plugin named {name!r}"})
        audit_reload(
            _auditClient(request),
            _keyId(request),
            name,
            outcome.success,
            {} if outcome.success else {name: outcome.error or "failed"},
        )
        body: dict[str, Any] = {
            "reloaded": outcome.name,
            "success": outcome.success,
            "generation": outcome.generation,
        }
        if not outcome.success:
            body["error"] = outcome.error
            return json_answer(request, 500, body)
        return json_answer(request, 200, body)

    @app.handle_errors(NotFound)
    def notFound(self, request: Any, failure: Failure) -> bytes:
        return json_answer(request, 404, {"error": "not found"})

    @app.handle_errors(RequestRedirect)
    def redirected(self, request: Any, failure: Failure) -> bytes:
        # werkzeug redirects a path to its canonical spelling; the web layer
        # has already refused every spelling but the canonical one, so a
        # path that would be redirected is one no route serves.
        return json_answer(request, 404, {"error": "not found"})

    @app.handle_errors(MethodNotAllowed)
    def notAllowed(self, request: Any, failure: Failure) -> bytes:
        # Klein calls this handler for MethodNotAllowed only.
        allowed = cast(MethodNotAllowed, failure.value).valid_methods or []
        request.setHeader(b"allow", ", ".join(sorted(allowed)).encode("ascii"))
        return json_answer(request, 405, {"error": "method not allowed"})

    @app.handle_errors(Exception)
    def internalError(self, request: Any, failure: Failure) -> bytes:
        log.failure("Utility route {path} failed", failure, path=request.path.decode("latin-1"))
        return json_answer(request, 500, {"error": "internal error"})


def _cluster(runtime: Runtime) -> Any:
    """
    The whole server a worker process belongs to
    (L{pluginserver.workers.WorkerService.cluster}): reloads and
    C{/metrics} are its to answer.  L{None} in a single process.
    """
    return getattr(runtime, "cluster", None)


def _auditClient(request: Any) -> str:
    """
    The client address a utility route's request came from, as the gate
    saw it (a unix: socket's client has none).
    """
    return getattr(request, "audit_client", "") or "a unix socket"


def _keyId(request: Any) -> str | None:
    """
    The id of the key a request was let in with, or L{None} (no key needed).
    """
    return getattr(request, "key_id", None)
