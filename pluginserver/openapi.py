# -*- test-case-name: tests.test_openapi -*-
"""
C{/openapi.json}: an OpenAPI 3.1 description of every route served now,
built from the registry and the settings.

Each plugin is two paths, C{/<name>} and C{/<name>/{subpath}}, with one
operation per method it answers: its summary is the first line of the
docstring of its class (or else of its C{handle}), its description the
whole docstring, its parameters its declared C{args} (see
L{pluginserver.declared}), and its security requirement follows its auth
mode: none, the global key or its own key (a bearer token or an
C{X-API-Key} header; a key is a key to a client, whichever one the server
compares it with), or a client certificate.  Documents trees and the
server's own routes are described the same way.

Routes change at run time, so the document follows them: it is built on
the first request after the set of serving plugin generations or the
settings changed, and the bytes are kept and served as they are until the
next change.  A request costs a comparison of identities, never a build
(L{OpenAPI.builds} counts them).

The registry knows nothing of this module, nor this module of HTTP: the web
layer serves what L{OpenAPI.document} gives.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pluginserver.config import Settings
from pluginserver.declared import Parameter
from pluginserver.registry import LoadedPlugin, PluginRegistry
from pluginserver.version import version

__all__ = ["OPENAPI_VERSION", "OpenAPI", "Source", "build"]

OPENAPI_VERSION = "3.1.0"

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

Requirement = list[dict[str, list[str]]]
"""An operation's C{security}: any one of its entries is enough."""

_KEY: Requirement = [{"bearer": []}, {"apiKey": []}]
"""The requirement of a route that needs a key: either way of sending it."""
_CERTIFICATE: Requirement = [{"clientCertificate": []}]
_PUBLIC: Requirement = []
"""No requirement at all: the route needs nothing."""

_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The API key as a bearer token: `Authorization: Bearer <key>`.",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The API key in the `X-API-Key` header.",
    },
    "clientCertificate": {
        "type": "mutualTLS",
        "description": "A client certificate signed by `[tls] client_ca`.",
    },
}

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["error"],
}

_ERROR = {"$ref": "#/components/responses/Error"}

_JSON_ANSWER: dict[str, Any] = {"content": {"application/json": {"schema": {}}}}

Document = dict[str, Any]


class Source(Protocol):
    """
    Where the routes come from: the web layer's runtime (the service).
    """

    @property
    def settings(self) -> Settings: ...

    @property
    def registry(self) -> PluginRegistry: ...


_FRAMEWORK = frozenset({"pluginserver", "plugincore"})
"""The packages whose classes' docstrings describe the plugin API (L{Plugin},
the old server's C{BasePlugin}), not a plugin's route."""


def _own_doc(cls: type, attribute: str | None = None) -> str | None:
    """
    The docstring of C{cls} (or of its method C{attribute}) written by the
    plugin's author: looked up through the plugin's own classes, never the
    framework's (L{Plugin}, C{plugincore}'s C{BasePlugin}).
    """
    for klass in cls.__mro__:
        if klass is object or klass.__module__.partition(".")[0] in _FRAMEWORK:
            return None
        if attribute is None:
            doc = klass.__dict__.get("__doc__")
        else:
            function = klass.__dict__.get(attribute)
            doc = getattr(function, "__doc__", None) if function is not None else None
            if function is not None and not doc:
                return None  # its own handle, undocumented: not a base's
        if isinstance(doc, str) and doc.strip():
            return inspect.cleandoc(doc)
    return None


def _docstring(instance: object) -> str | None:
    """
    The plugin's docstring: its class's, or else its C{handle}'s (an old
    server's plugin: its C{request_handler}'s).
    """
    cls = type(instance)
    return _own_doc(cls) or _own_doc(cls, "handle") or _own_doc(cls, "request_handler")


def _parameter(parameter: Parameter, required: bool) -> Document:
    schema: Document = {"type": parameter.type}
    if parameter.has_default:
        schema["default"] = parameter.default
    described: Document = {"name": parameter.name, "in": "query", "required": required}
    if parameter.description:
        described["description"] = parameter.description
    described["schema"] = schema
    return described


def _body(parameters: Sequence[Parameter]) -> Document:
    """
    The request body of a method that has one: the declared arguments as the
    fields of a JSON object or of a form (the server merges both into
    C{request.args}, as it merges the query string).
    """
    properties: Document = {}
    for parameter in parameters:
        schema: Document = {"type": parameter.type}
        if parameter.has_default:
            schema["default"] = parameter.default
        if parameter.description:
            schema["description"] = parameter.description
        properties[parameter.name] = schema
    schema = {"type": "object", "properties": properties}
    required = [p.name for p in parameters if p.required]
    if required:
        schema["required"] = required
    return {
        "required": False,
        "description": "The declared arguments may also come in the body; "
        "a field there replaces the query string's.",
        "content": {
            "application/json": {"schema": schema},
            "application/x-www-form-urlencoded": {"schema": schema},
        },
    }


def _plugin_security(loaded: LoadedPlugin, settings: Settings) -> Requirement:
    """
    The security requirement of a plugin's operations, from its auth mode,
    as the web layer applies it.
    """
    mode = loaded.auth_mode
    if mode == "global":
        return _KEY if settings.apikey else _PUBLIC
    if mode == "plugin":
        return _KEY if loaded.own_key else _PUBLIC
    if mode == "cert":
        return _CERTIFICATE
    return _PUBLIC


def _plugin_paths(loaded: LoadedPlugin, settings: Settings) -> Document:
    """
    The two paths of one plugin, C{/<name>} and C{/<name>/{subpath}}.
    """
    doc = _docstring(loaded.instance)
    summary = doc.split("\n", 1)[0] if doc else f"The {loaded.name} plugin"
    description = doc or f"Served by {loaded.name} (no docstring)."
    security = _plugin_security(loaded, settings)
    parameters = loaded.declared.parameters if loaded.declared is not None else ()
    subpath = {
        "name": "subpath",
        "in": "path",
        "required": True,
        "description": "The rest of the path, as the plugin's `request.subpath`.",
        "schema": {"type": "string"},
    }
    paths: Document = {}
    for suffix, extra in (("", []), ("/{subpath}", [subpath])):
        item: Document = {}
        for method in _METHOD_ORDER:
            if method not in loaded.methods:
                continue
            body = method in _BODY_METHODS and bool(parameters)
            operation: Document = {
                "operationId": f"{loaded.name}:{'subpath:' if suffix else ''}{method.lower()}",
                "tags": [loaded.name],
                "summary": summary,
                "description": description,
            }
            declared = [_parameter(p, p.required and not body) for p in parameters]
            if extra or declared:
                operation["parameters"] = [*extra, *declared]
            if body:
                operation["requestBody"] = _body(parameters)
            operation["responses"] = {
                "200": {"description": "The plugin's answer (JSON unless it says otherwise)."},
                "default": _ERROR,
            }
            operation["security"] = security
            item[method.lower()] = operation
        paths[f"/{loaded.name}{suffix}"] = item
    return paths


def _documents_paths(settings: Settings) -> Document:
    """
    The paths of the static documents trees (C{[paths] documents}).
    """
    paths: Document = {}
    for route, _ in settings.documents:
        params = settings.plugin_params.get(route) or {}
        mode = params.get("auth", "global")
        key = settings.apikey if mode == "global" else params.get("apikey") or None
        security = _PUBLIC if mode == "none" or not key else _KEY
        for suffix in ("/", "/{path}"):
            item: Document = {}
            for method in ("get", "head"):
                operation: Document = {
                    "operationId": f"{route}:{'file' if suffix != '/' else 'index'}:{method}",
                    "tags": [route],
                    "summary": f"A file of the {route} documents tree",
                    "description": "Static files; a directory answers its index.html.",
                }
                if suffix != "/":
                    operation["parameters"] = [
                        {
                            "name": "path",
                            "in": "path",
                            "required": True,
                            "description": "The file's path inside the tree.",
                            "schema": {"type": "string"},
                        }
                    ]
                operation["responses"] = {
                    "200": {"description": "The file."},
                    "304": {"description": "Not modified."},
                    "default": _ERROR,
                }
                operation["security"] = security
                item[method] = operation
            paths[f"/{route}{suffix}"] = item
    return paths


def _utility(
    operation: str,
    methods: Sequence[str],
    summary: str,
    security: Requirement,
    response: Document,
    parameters: Sequence[Document] = (),
) -> Document:
    item: Document = {}
    for method in methods:
        described: Document = {
            "operationId": f"{operation}:{method}",
            "tags": ["server"],
            "summary": summary,
        }
        if parameters:
            described["parameters"] = list(parameters)
        described["responses"] = {"200": response, "default": _ERROR}
        described["security"] = security
        item[method] = described
    return item


def _utility_paths(settings: Settings) -> Document:
    """
    The server's own routes.
    """
    keyed = _KEY if settings.apikey else _PUBLIC
    json_answer = {"description": "JSON.", **_JSON_ANSWER}
    reloaded = {"description": "Reloaded; 500 with the same body when it failed.", **_JSON_ANSWER}
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The plugin's route name, or its file's stem.",
        "schema": {"type": "string"},
    }
    metrics = {
        "description": "The Prometheus text format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    paths: Document = {
        "/plugins": _utility(
            "plugins", ("get", "head", "post"), "The loaded plugins", keyed, json_answer
        ),
        "/reload/all": _utility(
            "reload-all",
            ("get", "post"),
            "Re-read the configuration and reload changed plugins",
            keyed,
            reloaded,
        ),
        "/reload/{name}": _utility(
            "reload", ("get", "post"), "Reload one plugin", keyed, reloaded, [name]
        ),
        "/metrics": _utility(
            "metrics",
            ("get", "head"),
            "The server's own metrics",
            _PUBLIC if settings.metrics_public else keyed,
            metrics,
        ),
        "/health": _utility(
            "health",
            ("get", "head"),
            "Whether the server serves (503 once it stops)",
            _PUBLIC,
            json_answer,
        ),
        "/openapi.json": _utility("openapi", ("get", "head"), "This document", keyed, json_answer),
    }
    if settings.dashboard:
        paths["/dashboard/"] = _utility(
            "dashboard",
            ("get", "head"),
            "The dashboard page (the data it fetches needs the key)",
            _PUBLIC,
            {
                "description": "An HTML page.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
        )
    return paths


def build(settings: Settings, plugins: Mapping[str, LoadedPlugin]) -> Document:
    """
    The OpenAPI document of the routes served with C{settings} by
    C{plugins}, as a JSON-ready value.
    """
    paths: Document = {}
    for name in sorted(plugins):
        paths.update(_plugin_paths(plugins[name], settings))
    paths.update(_documents_paths(settings))
    paths.update(_utility_paths(settings))
    tags = [{"name": name} for name in sorted(plugins)]
    tags.append({"name": "server", "description": "The server's own routes."})
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "pluginserver",
            "version": version(),
            "description": "Every route this server serves now; plugins come and go with "
            "reloads, and this document with them.",
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "securitySchemes": _SECURITY_SCHEMES,
            "schemas": {"Error": _ERROR_SCHEMA},
            "responses": {
                "Error": {
                    "description": 'An error: `{"error": message}`.',
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
        },
    }


def encode(document: Document) -> bytes:
    """
    The document as JSON bytes: ASCII only, every other character escaped,
    so that any docstring (control characters, lone surrogates) is valid
    JSON.
    """
    return json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class OpenAPI:
    """
    The C{/openapi.json} document of one server, built when its routes
    change and kept between changes.

    @ivar builds: how many times the document was built (a request that
        finds it up to date builds nothing).
    """

    def __init__(self, source: Source) -> None:
        self._source = source
        self._settings: Settings | None = None
        self._generations: tuple[LoadedPlugin, ...] = ()
        self._encoded = b""
        self.builds = 0

    def document(self) -> bytes:
        """
        The document, encoded: the kept bytes while the serving generations
        and the settings are the ones it was built from, else a new build.
        """
        settings = self._source.settings
        plugins = self._source.registry.plugins
        # Each generation is a new LoadedPlugin (compared by identity), so
        # a reload, an addition or a removal changes this tuple.
        generations = tuple(plugins.values())
        if (
            self.builds
            and generations == self._generations
            and (settings is self._settings or settings == self._settings)
        ):
            return self._encoded
        self._encoded = encode(build(settings, plugins))
        self._settings, self._generations = settings, generations
        self.builds += 1
        return self._encoded
