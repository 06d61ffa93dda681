# -*- test-case-name: tests.test_plugincore -*-
"""
L{BasePlugin}: the old aiohttp server's plugin base class, as a
L{Plugin<pluginserver.Plugin>}.

An old plugin subclasses it, takes keywords in C{__init__}, may have
C{async def initialize(self, **kwargs)} and C{terminate_plugin()}, and
answers in C{request_handler(self, **data)} with C{(code, value)}.  Each
of these is called by one of pluginserver's own: L{BasePlugin.construct}
(the registry's hook to make and name an instance), L{BasePlugin.start},
L{BasePlugin.stop} and L{BasePlugin.handle}.  What the server does itself,
it does for old plugins too: keys, CORS, the allow-lists, limits,
timeouts, reloads.  The old C{_check_auth} is not called.

What the old plugin sees:
  - C{self._plugin_id}: its route, the C{route_path} parameter or else the
    class name lower-cased, unless C{__init__} sets it;
  - C{self.config}: the whole configuration, every section, with
    attribute and item access (L{Config});
  - C{self.log}: a L{PluginLog}, callable, with the old logger's
    methods, writing to twisted.logger;
  - in C{data}: the merged query, form and JSON fields, C{request_headers},
    C{client_ip}, C{subpath}, C{request} (an L{OldRequest}) and C{log}.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from plugincore.answers import AnswerError, from_aiohttp, http_exception, old_answer
from pluginserver.config import parse_value
from pluginserver.keys import KeySet
from pluginserver.plugin import HTTPError, Plugin, PluginRequest

__all__ = ["AnswerError", "BasePlugin", "Config", "OldRequest", "PluginLog"]


class Config(Mapping[str, Any]):
    """
    A read-only view of the configuration (or of one of its sections) with
    both attribute and item access, as the old server's config object had:
    C{config.auth.apikey}, C{config["paths"]["plugins"]},
    C{"file_server" in config}, C{config.file_server.get("indexfile")}.
    A section is itself a L{Config}.  A missing name is an
    L{AttributeError} as an attribute and a L{KeyError} as an item.

    The values are pluginserver's: typed (C{int:8}, C{bool:true}, C{list:}
    are converted) and interpolated, and the paths pluginserver knows
    (C{[paths] plugins}) are absolute.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values

    @classmethod
    def of(cls, config: Any) -> Config:
        """
        The view of what the registry gives plugins as their configuration:
        pluginserver's L{Settings<pluginserver.config.Settings>} (its
        C{sections}), a mapping of sections, or nothing (an empty view).
        """
        if isinstance(config, Config):
            return config
        sections = getattr(config, "sections", None)
        if isinstance(sections, Mapping):
            return cls(sections)
        if isinstance(config, Mapping):
            return cls(config)
        return cls({})

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]
        return Config(value) if isinstance(value, Mapping) else value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_values":
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the configuration has no {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __repr__(self) -> str:
        return f"Config({list(self._values)!r})"


def _text(args: tuple[Any, ...]) -> str:
    """
    One log line from what an old plugin passed its logger: C{logging}'s
    C{("%s items", n)} or C{print}'s C{("a", "b")}.
    """
    if not args:
        return ""
    if len(args) > 1 and isinstance(args[0], str):
        try:
            return args[0] % args[1:]
        except (TypeError, ValueError):
            pass
    return " ".join(str(arg) for arg in args)


class PluginLog:
    """
    An old plugin's C{self.log}: called as a function (C{self.log("...")})
    it logs at info level; C{debug}, C{info}, C{warning}, C{error},
    C{critical} and C{exception} (the exception being handled, with its
    traceback) log at theirs.  Events go to twisted.logger with the
    namespace C{plugins.<route>} and the route as C{plugin}.

    C{common_log(ip=..., method=..., path=..., status=..., size=...)}, the
    old file server's access line, is an info event carrying those fields
    (its C{file=} is not written: the server's own access log has every
    request).
    """

    __slots__ = ("_name",)

    def __init__(self, name: Callable[[], str]) -> None:
        self._name = name

    def _emit(self, level: LogLevel, args: tuple[Any, ...], failure: Failure | None = None) -> None:
        name = self._name()
        logger = Logger(namespace=f"plugins.{name}")
        if failure is not None:
            logger.failure("{text}", failure, level, text=_text(args), plugin=name)
        else:
            logger.emit(level, "{text}", text=_text(args), plugin=name)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self._emit(LogLevel.info, args)

    def debug(self, *args: Any, **kwargs: Any) -> None:
        self._emit(LogLevel.debug, args)

    def info(self, *args: Any, **kwargs: Any) -> None:
        self._emit(LogLevel.info, args)

    def warning(self, *args: Any, **kwargs: Any) -> None:
        self._emit(LogLevel.warn, args)

    warn = warning

    def error(self, *args: Any, **kwargs: Any) -> None:
        self._emit(LogLevel.error, args)

    def critical(self, *args: Any, **kwargs: Any) -> None:
        self._emit(LogLevel.critical, args)

    def exception(self, *args: Any, **kwargs: Any) -> None:
        failure = Failure() if sys.exc_info()[1] is not None else None
        self._emit(LogLevel.error, args, failure)

    def common_log(self, **fields: Any) -> None:
        name = self._name()
        fields.pop("file", None)
        fields.setdefault("ip", "-")
        fields.setdefault("method", "-")
        fields.setdefault("path", "-")
        fields.setdefault("status", "-")
        fields.setdefault("size", "-")
        Logger(namespace=f"plugins.{name}").info(
            "{ip} {method} {path} {status} {size}", plugin=name, **fields
        )


class OldRequest:
    """
    C{data["request"]}: the request, with the attributes of aiohttp's an
    old plugin reads most (C{method}, C{path}, C{headers}, C{query},
    C{remote}, C{match_info}, C{can_read_body}, and the coroutines
    C{read()}, C{text()} and C{json()}); every attribute of pluginserver's
    L{PluginRequest} as well (C{args}, C{subpath}, C{body}, C{files},
    C{client}).

    C{query} is the merged C{request.args} (query string, form and JSON
    fields), as pluginserver gives them.
    """

    __slots__ = ("_request", "path")

    def __init__(self, request: PluginRequest, route: str) -> None:
        self._request = request
        self.path = f"/{route}/{request.subpath}" if request.subpath else f"/{route}"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_request":
            raise AttributeError(name)
        return getattr(self._request, name)

    @property
    def remote(self) -> str:
        return self._request.client

    @property
    def query(self) -> Mapping[str, Any]:
        return self._request.args

    @property
    def match_info(self) -> Mapping[str, str]:
        return {"tail": self._request.subpath}

    @property
    def can_read_body(self) -> bool:
        return bool(self._request.body)

    async def read(self) -> bytes:
        return self._request.body

    async def text(self) -> str:
        return self._request.body.decode("utf-8", "replace")

    async def json(self) -> Any:
        return self._request.json

    def __repr__(self) -> str:
        return f"<OldRequest {self._request.method} {self.path}>"


def _fitting(f: Callable[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """
    The keywords of C{kwargs} that C{f} takes: all of them when it has
    C{**kwargs}, else those it names.
    """
    try:
        parameters = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(kwargs)
    named = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {key: value for key, value in kwargs.items() if key in named}


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _asCoroutine(result: Any) -> Any:
    """
    C{result} as the server takes it from C{start()} or C{stop()}: any
    awaitable (an asyncio Task or Future, say) that is not already a
    coroutine becomes one that awaits it.
    """
    if inspect.isawaitable(result) and not inspect.iscoroutine(result):
        return _awaited(result)
    return result


class BasePlugin(Plugin):
    """
    The base class of the old server's plugins: subclass it, and write
    C{request_handler(self, **data)} (sync or C{async}) returning C{(code,
    value)}.  See the module docstring for what the plugin sees, and
    L{plugincore.answers.old_answer} for the answers.

    Subclasses are pluginserver plugins: the names pluginserver's L{Plugin}
    uses (C{construct}, C{start}, C{stop}, C{handle}, C{every}, C{spawn},
    C{name}, C{params}, C{methods}, C{blocking}) keep their meaning there,
    so an old plugin must not define methods of those names for other
    purposes.

    @ivar _plugin_id: the route.
    @ivar config: the whole configuration (L{Config}).
    @ivar args: the keywords C{__init__} was given.
    """

    methods: ClassVar[tuple[str, ...]] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    """The old server routed every method to its plugins."""

    _plugin_id: str
    _initKwargs: dict[str, Any]
    _auth_type: str | None
    _apikey: str | None

    @classmethod
    def construct(cls, name: str, params: Mapping[str, Any], config: Any) -> tuple[Plugin, str]:
        """
        Make an old plugin as the old server did, C{cls(**kwargs)}, and give
        back the route it chose: C{self._plugin_id} as it is after
        C{__init__}.

        The keywords are its typed C{[plugin_parms]} (C{auth} also as
        C{auth_type}, as the old server spelt it), C{config} (a L{Config})
        and C{log}.  Before C{__init__} runs, the instance already has
        C{config}, C{log} and C{_plugin_id} (the C{route_path} parameter or
        the class name lower-cased), so that a plugin whose C{__init__}
        never calls C{BasePlugin.__init__} works too.

        @raise TypeError: C{_plugin_id} is not a string.
        """
        view = Config.of(config)
        instance = cls.__new__(cls)
        kwargs: dict[str, Any] = dict(params)
        if "auth" in params:
            kwargs["auth_type"] = params["auth"]
        if isinstance(kwargs.get("apikey"), KeySet):
            # The server keeps digests; the old plugins were given the key
            # as written in their [plugin_parms].
            kwargs["apikey"] = _written_apikey(view, name)
        kwargs["config"] = view
        kwargs["log"] = instance.log
        instance.name = name  # type: ignore[misc]
        instance.params = params
        instance.config = view
        instance._plugin_id = params.get("route_path", cls.__name__.lower())
        instance._initKwargs = kwargs
        instance.__init__(**kwargs)  # type: ignore[misc]
        route = instance._plugin_id
        if not isinstance(route, str):
            raise TypeError(f"{cls.__name__}._plugin_id is {route!r}, not a route name")
        if instance.__dict__.get("name") == name:
            # pluginserver's name for it (in its logs), unless the plugin
            # took that attribute for itself.
            instance.name = route  # type: ignore[misc]
        return instance, route

    def __init__(self, **kwargs: Any) -> None:
        """
        What the old base class set up: C{config}, C{_plugin_id}, the auth
        mode and key it was given (for plugins that read them: the server
        checks keys itself), and C{args}.
        """
        self.config = Config.of(kwargs.get("config"))
        self._plugin_id = kwargs.get("route_path", type(self).__name__.lower())
        auth = kwargs.get("auth_type", kwargs.get("auth"))
        self._auth_type = auth.lower() if isinstance(auth, str) else None
        if self._auth_type == "plugin":
            self._apikey = kwargs.get("apikey")
        elif self._auth_type == "global":
            self._apikey = self.config.get("auth", {}).get("apikey")
        else:
            self._auth_type = self._apikey = None
        # The old attribute: every keyword given.  (An instance attribute;
        # pluginserver reads declared arguments from the class.)
        self.args = dict(kwargs)  # type: ignore[misc]

    @property
    def log(self) -> PluginLog:
        """
        The plugin's logger (L{PluginLog}), unless the plugin set its own.
        """
        found = self.__dict__.get("_pluginLog")
        if found is None:
            found = self.__dict__["_pluginLog"] = PluginLog(self._get_plugin_id)
        return found

    @log.setter
    def log(self, value: Any) -> None:
        self.__dict__["_pluginLog"] = value

    def _get_plugin_id(self) -> str:
        """
        The route (the old accessor).
        """
        return self.__dict__.get("_plugin_id") or type(self).__name__.lower()

    def _check_auth(self, data: Mapping[str, Any]) -> bool:
        """
        Always true: the server checked the key before the request reached
        the plugin (C{auth=} in C{[plugin_parms]}).  Kept for old plugins
        that call it.
        """
        return True

    # -- pluginserver's calls ------------------------------------------------

    def start(self) -> Awaitable[None] | None:
        """
        Call the old plugin's C{initialize(**kwargs)}, when it has one, with
        the keywords its C{__init__} got (those it takes).
        """
        initialize = getattr(self, "initialize", None)
        if not callable(initialize):
            return None
        return _asCoroutine(initialize(**_fitting(initialize, self._initKwargs)))  # type: ignore[no-any-return]

    def stop(self) -> Awaitable[None] | None:
        """
        Call the old plugin's C{terminate_plugin()}; a coroutine (or other
        awaitable) it returns is awaited.
        """
        return _asCoroutine(self.terminate_plugin())  # type: ignore[no-any-return]

    def terminate_plugin(self) -> Any:
        """
        Called when the plugin is replaced, removed or the server stops:
        cancel here the asyncio tasks the plugin started.  May be async.
        """
        return None

    def request_handler(self, **data: Any) -> Any:
        """
        Answer one request with C{(code, value)}; may be async.  Old plugins
        override it.
        """
        raise HTTPError(404, "not found")

    def handle(self, request: PluginRequest) -> Any:
        """
        Call C{request_handler} with the request as the old server gave it,
        and turn its answer into pluginserver's (L{old_answer}).  An aiohttp
        C{HTTPException} it raises is answered with its status.
        """
        data: dict[str, Any] = dict(request.args)
        data["request_headers"] = request.headers
        data["client_ip"] = request.client
        data["subpath"] = request.subpath or None
        data["request"] = OldRequest(request, self._get_plugin_id())
        data["log"] = self.log
        try:
            result = self.request_handler(**data)
        except Exception as e:
            if http_exception(e):
                return from_aiohttp(e)
            raise
        if inspect.isawaitable(result):
            return self._answerLater(result)
        return old_answer(result)

    async def _answerLater(self, result: Awaitable[Any]) -> Any:
        try:
            value = await result
        except Exception as e:
            if http_exception(e):
                return from_aiohttp(e)
            raise
        return old_answer(value)


def _written_apikey(config: Any, name: str) -> Any:
    """
    The C{apikey=} of a plugin's C{[plugin_parms]} line as written (typed),
    or L{None}.
    """
    line = config.get("plugin_parms", {}).get(name)
    if not isinstance(line, str):
        return None
    for key, value in parse_qsl(line, keep_blank_values=True):
        if key == "apikey":
            return parse_value(value)
    return None
