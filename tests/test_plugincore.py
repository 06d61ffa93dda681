# -*- test-case-name: tests.test_plugincore -*-
"""
The old aiohttp server's plugins run unchanged (L{plugincore}): old-style
plugins written here from the old server's documented API (its Plugins.md:
the Example, a Netinfo plugin with asyncio tasks; its file server's use of
C{[file_server]} and aiohttp's responses), served in memory through
L{pluginserver.testing} with an old-style configuration, and once by a real
C{twistd -n pluginserver} over TCP.

Run on the asyncio reactor (C{--reactor=asyncio}): the old plugins start
asyncio tasks.  Tests that need it are skipped on any other.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import types
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from plugincore import BasePlugin
from plugincore.answers import AnswerError, old_answer
from plugincore.baseplugin import Config
from pluginserver import Response
from pluginserver.modules import PluginLoadError, plugin_class
from pluginserver.testing import Server, serve
from tests.helpers import PluginDir
from tests.process import Server as Process

try:
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor
except ImportError:  # pragma: no cover
    AsyncioSelectorReactor = None  # type: ignore[assignment,misc]

ON_ASYNCIO = AsyncioSelectorReactor is not None and isinstance(reactor, AsyncioSelectorReactor)
NEEDS_ASYNCIO = None if ON_ASYNCIO else "old plugins' asyncio tasks need --reactor=asyncio"

try:
    import aiohttp  # noqa: F401
except ImportError:  # pragma: no cover
    NEEDS_AIOHTTP: str | None = "aiohttp is not installed (pip install .[compat])"
else:
    NEEDS_AIOHTTP = None

TERMINATED: list[str] = []
"""Routes whose old plugin's terminate_plugin ran (plugins append here)."""


# ---------------------------------------------------------------------------
# Old-style plugins, written from the old server's documented API.

EXAMPLE = """
from plugincore.baseplugin import BasePlugin

class Example(BasePlugin):
    def request_handler(self, **data):
        return 200, {'example': 'Hi from example.py', 'name': data.get('name')}
"""

# The route is the class name, lower-cased: not the file name.
GREETER = """
from plugincore.baseplugin import BasePlugin

class Hello(BasePlugin):
    def request_handler(self, **data):
        return 200, 'Hello, <b>%s</b>' % data.get('name', 'world')
"""

# Everything the old server handed a plugin, reported back.
INSPECT = """
from plugincore.baseplugin import BasePlugin

class Inspect(BasePlugin):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.kwargs = kwargs

    def request_handler(self, **data):
        config = self.config
        request = data['request']
        return 200, {
            'kwargs': sorted(self.kwargs),
            'count': self.kwargs.get('count'),
            'route_path': self.kwargs.get('route_path'),
            'auth_type': self.kwargs.get('auth_type'),
            'apikey': self.kwargs.get('apikey'),
            'plugin_id': self._plugin_id,
            'own_apikey': self._apikey,
            'colour': config.inspect.colour,
            'sizes': list(config['inspect']['sizes']),
            'plugins_dir': config['paths']['plugins'] == config.paths.plugins,
            'has_inspect': 'inspect' in config,
            'has_nothing': 'nothing' in config,
            'default': config.inspect.get('missing', 'fallback'),
            'fields': {k: data[k] for k in ('a', 'b', 'c') if k in data},
            'apikey_field': 'apikey' in data,
            'header': data['request_headers'].get('X-Thing'),
            'client_ip': data['client_ip'],
            'subpath': data['subpath'],
            'method': request.method,
            'path': request.path,
            'remote': request.remote,
            'check_auth': self._check_auth(data),
        }
"""

# The old server's Netinfo pattern: asyncio tasks started by the plugin
# itself (in __init__ and in initialize), ended by terminate_plugin.
NETINFO = """
import asyncio
from plugincore.baseplugin import BasePlugin

class Counter:
    def __init__(self, interval):
        self.interval = interval
        self.ticks = 0

    async def run(self):
        while True:
            self.ticks += 1
            await asyncio.sleep(self.interval)

class Netinfo(BasePlugin):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.counter = Counter(kwargs.get('interval', 0.01))
        self.task = asyncio.create_task(self.counter.run())

    async def initialize(self, **kwargs):
        await asyncio.sleep(0.01)
        self.second = asyncio.create_task(self.counter.run())

    async def request_handler(self, **data):
        await asyncio.sleep(0.01)
        running = sum(
            1 for t in asyncio.all_tasks()
            if t.get_coro().__qualname__ == 'Counter.run' and not t.done()
        )
        return 200, {'ticks': self.counter.ticks, 'running': running, 'version': VERSION}

    def terminate_plugin(self):
        self.task.cancel()
        self.second.cancel()
"""

# The same, with an async terminate_plugin that waits for its task to end.
NETINFO_ASYNC_STOP = """
import asyncio
from plugincore.baseplugin import BasePlugin
from tests.test_plugincore import TERMINATED

class Ticker(BasePlugin):
    async def initialize(self):
        self.ticks = 0
        self.task = asyncio.create_task(self.tick())

    async def tick(self):
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    def request_handler(self, **data):
        return 200, {'ticks': self.ticks}

    async def terminate_plugin(self):
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            TERMINATED.append(self._plugin_id)
"""

# The old file server's pattern: its own [file_server] section, its route
# set in __init__, aiohttp's responses.
FILESERVE = """
import os
from aiohttp import web
from plugincore.baseplugin import BasePlugin

class ServeFiles(BasePlugin):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if 'file_server' not in self.config:
            raise AttributeError("Cannot find 'file_server' in config.")
        documents = self.config.file_server.documents
        route, self.docpath = documents.split(':', 1)
        self.index_file = self.config.file_server.get('indexfile', 'index.html')
        self._plugin_id = route
        self.log(f"serving {self.docpath} at /{route}")

    async def request_handler(self, **args):
        name = args.get('subpath') or self.index_file
        path = os.path.join(self.docpath, name)
        if not os.path.isfile(path):
            self.log.error(f"{args['client_ip']} - {args['request'].method} - {path} not found")
            return 404, web.Response(
                status=404, text='<h1>404 - Not Found</h1>', content_type='text/html'
            )
        if path.endswith('.html'):
            with open(path, 'rb') as f:
                content = f.read()
            return 200, web.Response(body=content, content_type='text/html')
        return 200, web.FileResponse(path)
"""

AIO = """
from aiohttp import web
from plugincore.baseplugin import BasePlugin

class Aio(BasePlugin):
    def request_handler(self, **data):
        kind = data.get('kind')
        if kind == 'text':
            return 200, web.Response(text='plain', headers={'X-Extra': '1'})
        if kind == 'json':
            return 201, web.json_response({'made': True}, status=201)
        if kind == 'cookie':
            response = web.Response(text='with a cookie')
            response.set_cookie('flavour', 'oat')
            return 200, response
        if kind == 'raise':
            raise web.HTTPNotFound()
        if kind == 'raisetext':
            raise web.HTTPForbidden(text='go away')
        if kind == 'returned':
            return 409, web.HTTPConflict()
        if kind == 'bare':
            return web.HTTPGone()
        if kind == 'redirect':
            raise web.HTTPFound('/aio?kind=text')
        if kind == 'later':
            return self.later()
        if kind == 'stream':
            return 200, web.StreamResponse()
        return 404, {'error': 'no such kind'}

    async def later(self):
        raise web.HTTPUnauthorized(text='who are you?')
"""

BAD_INIT = """
from plugincore.baseplugin import BasePlugin

class BadInit(BasePlugin):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        raise ValueError('no such interface')
"""

NEVER_READY = """
import asyncio
from plugincore.baseplugin import BasePlugin

class NeverReady(BasePlugin):
    async def initialize(self, **kwargs):
        await asyncio.Event().wait()

    def request_handler(self, **data):
        return 200, {}
"""

ANSWERS = """
from plugincore.baseplugin import BasePlugin

class Answers(BasePlugin):
    async def request_handler(self, **data):
        kind = data.get('kind')
        if kind == 'three':
            return 200, {}, {'X-A': '1'}
        if kind == 'object':
            return 200, object()
        if kind == 'bare':
            return {'not': 'a tuple'}
        if kind == 'status':
            return 'two hundred', {}
        if kind == 'raise':
            raise RuntimeError('broken')
        return 404, {'error': 'not here', 'kind': kind}
"""

BAD_ROUTE = """
from plugincore.baseplugin import BasePlugin
from tests.test_plugincore import TERMINATED

class BadRoute(BasePlugin):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._plugin_id = ROUTE

    def terminate_plugin(self):
        TERMINATED.append('badroute')

ROUTE = 'plugins'
"""


def old_ini(directory: str, plugins: str, body: str) -> str:
    """
    Write an old-style config file, C{[network]} and all, into
    C{directory}, for the plugins directory C{plugins}; give its path.
    """
    path = os.path.join(directory, "pserv.ini")
    with open(path, "w") as f:
        f.write(
            f"[network]\nbindto=127.0.0.1\nport=9192\n\n[paths]\nplugins={plugins}\n\n"
            + textwrap.dedent(body)
        )
    return path


class OldPluginCase(TestCase):
    """
    Old-style plugins written into a plugins directory, served in memory.
    """

    def setUp(self) -> None:
        self.dir = PluginDir(self)
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        TERMINATED.clear()
        self.addCleanup(TERMINATED.clear)

    def serveOld(self, ini: str = "", **kwargs: Any) -> defer.Deferred[Server]:
        """
        Serve the plugins written so far with an old-style config file
        holding C{ini}.
        """
        return serve(
            self,
            self.dir.path,
            config=old_ini(self.root, os.path.abspath(self.dir.path), ini),
            **kwargs,
        )

    def logged(self, text: str) -> list[LogEvent]:
        return [
            e
            for e in self.events
            if text in str(e.get("text", "")) + str(e.get("log_format", ""))
            or text in str(e.get("error", ""))
        ]


class RouteTests(OldPluginCase):
    """
    The route is C{self._plugin_id} after C{__init__}: the C{route_path}
    param, else the class name lower-cased, unless C{__init__} set it.
    """

    async def test_example(self) -> None:
        """
        The old guide's Example answers at /example with its JSON.
        """
        self.dir.write("example", EXAMPLE)
        server = await self.serveOld()
        answer = await server.get("/example?name=you")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(answer.json(), {"example": "Hi from example.py", "name": "you"})
        self.assertEqual(server.registry.get("example").module.rsplit(".")[-1], "example")

    async def test_classNameNotFileName(self) -> None:
        """
        The old rule: the class name, lower-cased, whatever the file's name;
        a str answer is HTML.
        """
        self.dir.write("greeting", GREETER)
        server = await self.serveOld()
        self.assertEqual(list(server.registry.plugins), ["hello"])
        answer = await server.get("/hello?name=you")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        self.assertEqual(answer.body, b"Hello, <b>you</b>")
        self.assertEqual((await server.get("/greeting")).status, 404)

    async def test_routePath(self) -> None:
        """
        A C{route_path} param names the route.
        """
        self.dir.write("example", EXAMPLE)
        server = await self.serveOld("[plugin_parms]\nexample = route_path=hi\n")
        self.assertEqual(list(server.registry.plugins), ["hi"])
        answer = await server.get("/hi")
        self.assertEqual(answer.json()["example"], "Hi from example.py")

    async def test_routeChangesOnReload(self) -> None:
        """
        A reload that names another route moves the plugin there.
        """
        self.dir.write("example", EXAMPLE)
        server = await self.serveOld()
        self.dir.write("example", EXAMPLE.replace("class Example", "class Sample"))
        outcome = await server.registry.reload("example")
        self.assertTrue(outcome.success, outcome.error)
        self.assertEqual(list(server.registry.plugins), ["sample"])
        self.assertEqual((await server.get("/sample")).status, 200)
        self.assertEqual((await server.get("/example")).status, 404)

    async def test_refusedRouteStopsTheInstance(self) -> None:
        """
        A route the server refuses (reserved, taken by another file) fails
        the load with the reason, and the instance made is terminated; the
        other plugins serve.
        """
        self.dir.write("example", EXAMPLE)
        self.dir.write("badroute", BAD_ROUTE)
        self.dir.write("other", EXAMPLE.replace("BasePlugin):", "BasePlugin):\n    pass\n"))
        server = await self.serveOld(
            "[plugin_parms]\nother = route_path=example\n", allow_load_errors=True
        )
        self.assertIn("'plugins' is reserved", server.report.failed["badroute"])
        self.assertIn("already served", server.report.failed["other"])
        self.assertEqual(TERMINATED, ["badroute"])
        self.assertEqual((await server.get("/example")).status, 200)

    async def test_pluginIdNotAString(self) -> None:
        """
        A C{_plugin_id} that is no string fails the load, saying so.
        """
        self.dir.write("badroute", BAD_ROUTE.replace("ROUTE = 'plugins'", "ROUTE = 7"))
        server = await self.serveOld(allow_load_errors=True)
        self.assertIn("_plugin_id is 7", server.report.failed["badroute"])

    async def test_fileserveOwnSection(self) -> None:
        """
        The old file server's pattern: its own C{[file_server]} section,
        its route set in C{__init__}, aiohttp's Response and FileResponse.
        """
        if NEEDS_AIOHTTP:
            raise self.skipTest(NEEDS_AIOHTTP)
        docs = os.path.join(self.root, "www")
        os.makedirs(docs)
        with open(os.path.join(docs, "index.html"), "w") as f:
            f.write("<h1>home</h1>")
        with open(os.path.join(docs, "data.csv"), "w") as f:
            f.write("a,b\n1,2\n")
        self.dir.write("fileserve", FILESERVE)
        server = await self.serveOld(f"[file_server]\ndocuments = html:{docs}\n")
        self.assertEqual(list(server.registry.plugins), ["html"])
        page = await server.get("/html")
        self.assertEqual((page.status, page.body), (200, b"<h1>home</h1>"))
        self.assertEqual(page.headers.getRawHeaders("content-type"), ["text/html"])
        self.assertEqual(
            page.headers.getRawHeaders("x-frame-options"), ["DENY"], "HTML gets its headers"
        )
        csv = await server.get("/html/data.csv")
        self.assertEqual((csv.status, csv.body), (200, b"a,b\n1,2\n"))
        self.assertTrue(csv.headers.getRawHeaders("content-type")[0].startswith("text/csv"))
        self.assertTrue(csv.headers.getRawHeaders("etag"))
        ranged = await server.get("/html/data.csv", headers={"Range": "bytes=0-2"})
        self.assertEqual((ranged.status, ranged.body), (206, b"a,b"))
        missing = await server.get("/html/nothing.html")
        self.assertEqual((missing.status, missing.body), (404, b"<h1>404 - Not Found</h1>"))
        self.assertTrue(self.logged("nothing.html not found"))
        self.assertTrue(self.logged(f"serving {docs} at /html"))

    async def test_fileserveWithoutItsSection(self) -> None:
        """
        Without its section the file server refuses to load, as it did:
        its exception, with file and line, is the reason.
        """
        if NEEDS_AIOHTTP:
            raise self.skipTest(NEEDS_AIOHTTP)
        self.dir.write("fileserve", FILESERVE)
        self.dir.write("example", EXAMPLE)
        server = await self.serveOld(allow_load_errors=True)
        error = server.report.failed["fileserve"]
        self.assertIn("AttributeError: Cannot find 'file_server' in config.", error)
        self.assertIn("(fileserve.py, line", error)
        self.assertEqual((await server.get("/example")).status, 200)


class KeywordTests(OldPluginCase):
    """
    What C{__init__}, C{self.config} and C{data} hold.
    """

    INI = """
        [auth]
        apikey = s3cret

        [plugin_parms]
        inspect = auth_type=plugin&apikey=pk&count=int:3&route_path=look&json=extra.json

        [inspect]
        colour = blue
        sizes = list:int:1 int:2
        """

    async def test_whatThePluginSees(self) -> None:
        """
        C{__init__} gets the typed params (those of the C{json=} file too),
        C{config}, C{route_path}, C{auth_type} and C{apikey}; C{self.config}
        has attribute and item access; C{data} has the merged fields (the
        key field removed), C{request_headers}, C{client_ip}, C{subpath}
        and C{request}.  The server checks the plugin's key itself.
        """
        with open(os.path.join(self.dir.path, "extra.json"), "w") as f:
            f.write('{"c": "from json", "count": 1}')
        self.dir.write("inspect", INSPECT)
        server = await self.serveOld(self.INI)
        self.assertEqual(list(server.registry.plugins), ["look"])
        refused = await server.get("/look")
        self.assertEqual(refused.status, 401)
        answer = await server.post(
            "/look/a/b?a=1",
            data={"b": "2", "apikey": "pk"},
            headers={"X-Thing": "yes"},
        )
        self.assertEqual(answer.status, 200, answer.body)
        seen = answer.json()
        self.assertEqual(
            seen["kwargs"],
            ["apikey", "auth", "auth_type", "c", "config", "count", "log", "route_path"],
        )
        self.assertEqual(
            {k: seen[k] for k in ("count", "route_path", "auth_type", "apikey", "plugin_id")},
            {
                "count": 3,
                "route_path": "look",
                "auth_type": "plugin",
                "apikey": "pk",
                "plugin_id": "look",
            },
        )
        self.assertEqual(seen["own_apikey"], "pk")
        self.assertEqual((seen["colour"], seen["sizes"]), ("blue", [1, 2]))
        self.assertTrue(seen["plugins_dir"])
        self.assertEqual((seen["has_inspect"], seen["has_nothing"]), (True, False))
        self.assertEqual(seen["default"], "fallback")
        self.assertEqual(seen["fields"], {"a": "1", "b": "2"})
        self.assertFalse(seen["apikey_field"])
        self.assertEqual(seen["header"], "yes")
        self.assertEqual(seen["client_ip"], "127.0.0.1")
        self.assertEqual(seen["subpath"], "a/b")
        self.assertEqual((seen["method"], seen["path"]), ("POST", "/look/a/b"))
        self.assertEqual(seen["remote"], "127.0.0.1")
        self.assertTrue(seen["check_auth"])

    async def test_globalKey(self) -> None:
        """
        C{auth_type=global}: the configured key is needed, and the plugin
        sees it as its C{_apikey}, as it did.
        """
        self.dir.write("inspect", INSPECT)
        server = await self.serveOld(
            "[auth]\napikey = s3cret\n[plugin_parms]\ninspect = auth_type=global\n"
            "[inspect]\ncolour = red\nsizes = list:\n"
        )
        self.assertEqual((await server.get("/inspect")).status, 401)
        answer = await server.get("/inspect", headers={"Authorization": "Bearer s3cret"})
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json()["own_apikey"], "s3cret")
        self.assertIsNone(answer.json()["subpath"])

    def test_configView(self) -> None:
        """
        L{Config}: a read-only mapping with attribute access, sections
        included; what is missing is an AttributeError or a KeyError.
        """
        config = Config.of({"auth": {"apikey": "k"}, "top": 1})
        self.assertEqual(config.auth.apikey, "k")
        self.assertEqual(config["auth"]["apikey"], "k")
        self.assertEqual(dict(config.auth), {"apikey": "k"})
        self.assertIn("auth", config)
        self.assertEqual(sorted(config), ["auth", "top"])
        self.assertRaises(AttributeError, getattr, config, "nothing")
        self.assertRaises(KeyError, config.__getitem__, "nothing")
        self.assertEqual(Config.of(None), {})
        self.assertIs(Config.of(config), config)

    def test_createWithoutSettings(self) -> None:
        """
        Made as the registry makes it, without settings and without the old
        base class's C{__init__}: the route and config are there anyway.
        """

        class Lazy(BasePlugin):
            def __init__(self, **kwargs: Any) -> None:
                self.seen = kwargs

            def request_handler(self, **data: Any) -> Any:
                return 200, {}

        instance, route = Lazy.construct("lazy", {"x": 1}, None)
        self.assertEqual(route, "lazy")
        assert isinstance(instance, Lazy)
        self.assertEqual(instance._plugin_id, "lazy")
        self.assertEqual(instance.config, {})
        self.assertEqual(instance.seen["x"], 1)
        self.assertEqual(instance.name, "lazy")


class LogTests(OldPluginCase):
    """
    C{self.log} writes to twisted.logger, with the plugin's route.
    """

    async def test_log(self) -> None:
        self.dir.write(
            "chatty",
            """
            from plugincore.baseplugin import BasePlugin

            class Chatty(BasePlugin):
                def __init__(self, **kwargs):
                    super().__init__(**kwargs)
                    self.log('made', 1)
                    kwargs['log'].info('%d widgets', 3)

                def request_handler(self, **data):
                    self.log.debug('debug {not a field}')
                    self.log.warning('careful')
                    try:
                        1 / 0
                    except ZeroDivisionError:
                        self.log.exception('it broke')
                    data['log'].error('via data')
                    self.log.common_log(ip=data['client_ip'], path='/x', method='GET',
                                        status='OK', size=3, file='/nowhere')
                    return 200, {}
            """,
        )
        server = await self.serveOld()
        await server.get("/chatty")
        self.flushLoggedErrors(ZeroDivisionError)
        mine = [e for e in self.events if e.get("log_namespace") == "plugins.chatty"]
        messages = [(e["log_level"].name, e.get("text")) for e in mine]
        self.assertEqual(
            messages,
            [
                ("info", "made 1"),
                ("info", "3 widgets"),
                ("debug", "debug {not a field}"),
                ("warn", "careful"),
                ("error", "it broke"),
                ("error", "via data"),
                ("info", None),
            ],
        )
        self.assertTrue(all(e["plugin"] == "chatty" for e in mine))
        self.assertIsNotNone(mine[4].get("log_failure"))
        self.assertEqual((mine[6]["ip"], mine[6]["status"]), ("127.0.0.1", "OK"))
        self.assertNotIn("file", mine[6])


class AiohttpAnswerTests(OldPluginCase):
    """
    aiohttp's responses, returned or raised, answer as they did.
    """

    def setUp(self) -> None:
        super().setUp()
        if NEEDS_AIOHTTP:
            raise self.skipTest(NEEDS_AIOHTTP)
        self.dir.write("aio", AIO)

    async def get(self, kind: str) -> Any:
        server = await self.serveOld()
        return await server.get(f"/aio?kind={kind}")

    async def test_response(self) -> None:
        answer = await self.get("text")
        self.assertEqual((answer.status, answer.body), (200, b"plain"))
        self.assertEqual(
            answer.headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"]
        )
        self.assertEqual(answer.headers.getRawHeaders("x-extra"), ["1"])
        self.assertEqual(answer.headers.getRawHeaders("x-content-type-options"), ["nosniff"])

    async def test_jsonResponse(self) -> None:
        answer = await self.get("json")
        self.assertEqual((answer.status, answer.json()), (201, {"made": True}))
        self.assertEqual(
            answer.headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"]
        )

    async def test_cookie(self) -> None:
        answer = await self.get("cookie")
        self.assertEqual(answer.headers.getRawHeaders("set-cookie"), ["flavour=oat; Path=/"])

    async def test_raised(self) -> None:
        """
        A raised HTTPException answers its status, as a JSON error.
        """
        answer = await self.get("raise")
        self.assertEqual((answer.status, answer.json()), (404, {"error": "not found"}))
        answer = await self.get("raisetext")
        self.assertEqual((answer.status, answer.json()), (403, {"error": "go away"}))

    async def test_raisedLater(self) -> None:
        """
        Raised in a coroutine the handler returns: the same.
        """
        answer = await self.get("later")
        self.assertEqual((answer.status, answer.json()), (401, {"error": "who are you?"}))

    async def test_returned(self) -> None:
        answer = await self.get("returned")
        self.assertEqual((answer.status, answer.json()), (409, {"error": "conflict"}))
        answer = await self.get("bare")
        self.assertEqual((answer.status, answer.json()), (410, {"error": "gone"}))

    async def test_redirect(self) -> None:
        answer = await self.get("redirect")
        self.assertEqual(answer.status, 302)
        self.assertEqual(answer.headers.getRawHeaders("location"), ["/aio?kind=text"])

    async def test_notFoundTuple(self) -> None:
        """
        C{(404, {...})} is a 404 (the old server sent it with 200).
        """
        answer = await self.get("nothing")
        self.assertEqual((answer.status, answer.json()), (404, {"error": "no such kind"}))

    async def test_streamResponse(self) -> None:
        """
        A bare StreamResponse (written by the old handler itself) cannot be
        answered: a logged 500.
        """
        answer = await self.get("stream")
        self.assertEqual((answer.status, answer.json()), (500, {"error": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(AnswerError)), 1)


class BadInputTests(OldPluginCase):
    """
    Broken old plugins are refused or answered 500 with a logged reason
    naming them, and the others keep serving.
    """

    async def test_initRaises(self) -> None:
        self.dir.write("badinit", BAD_INIT)
        self.dir.write("example", EXAMPLE)
        server = await self.serveOld(allow_load_errors=True)
        error = server.report.failed["badinit"]
        self.assertIn("ValueError: no such interface (badinit.py, line 7)", error)
        self.assertTrue(self.logged("failed to load"))
        self.assertEqual((await server.get("/example")).status, 200)
        self.assertEqual((await server.get("/badinit")).status, 404)

    async def test_initializeNeverFinishes(self) -> None:
        """
        An C{initialize} that never finishes fails the load after
        C{start_timeout}; its task is cancelled.
        """
        if NEEDS_ASYNCIO:
            raise self.skipTest(NEEDS_ASYNCIO)
        self.dir.write("neverready", NEVER_READY)
        self.dir.write("example", EXAMPLE)
        server = await self.serveOld(
            "[server]\nstart_timeout = float:0.2\n", allow_load_errors=True
        )
        self.assertEqual(server.report.failed["neverready"], "start() did not finish within 0.2 s")
        self.assertEqual((await server.get("/example")).status, 200)
        await task.deferLater(reactor, 0.02, lambda: None)
        waiting = [
            t
            for t in asyncio.all_tasks(asyncio.get_event_loop())
            if "NeverReady" in repr(t.get_coro()) and not t.done()
        ]
        self.assertEqual(waiting, [])

    async def test_badAnswers(self) -> None:
        """
        Not a 2-tuple, a value that is not an answer, a status that is not
        one, an exception: each a logged 500 naming the plugin, no
        traceback to the client.
        """
        self.dir.write("answers", ANSWERS)
        self.dir.write("example", EXAMPLE)
        server = await self.serveOld()
        for kind in ("three", "object", "bare", "status", "raise"):
            answer = await server.get(f"/answers?kind={kind}")
            self.assertEqual(
                (answer.status, answer.json()), (500, {"error": "internal error"}), kind
            )
            self.assertEqual((await server.get("/example")).status, 200)
        self.assertEqual(len(self.flushLoggedErrors(AnswerError)), 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        named = [
            e
            for e in self.events
            if e.get("plugin") == "answers" and e["log_level"].name in ("error", "critical")
        ]
        self.assertEqual(len(named), 5)
        answer = await server.get("/answers?kind=x")
        self.assertEqual((answer.status, answer.json()), (404, {"error": "not here", "kind": "x"}))


class AsyncioTests(OldPluginCase):
    """
    Old plugins' asyncio tasks run on the reactor's loop; ending them is
    C{terminate_plugin}'s job, as it was, and a reload leaves nothing
    running.
    """

    skip = NEEDS_ASYNCIO

    def counters(self) -> list[asyncio.Task[Any]]:
        return [
            t
            for t in asyncio.all_tasks(asyncio.get_event_loop())
            if t.get_coro().__qualname__ == "Counter.run" and not t.done()  # type: ignore[union-attr]
        ]

    async def test_netinfo(self) -> None:
        """
        Tasks started in C{__init__} and C{initialize} run; an async
        handler awaits asyncio; a reload and the stop end every task (the
        old generation's C{terminate_plugin} cancels them).
        """
        self.dir.write("netinfo", NETINFO + "\nVERSION = 1\n")
        self.dir.write("example", EXAMPLE)
        server = await self.serveOld("[plugin_parms]\nnetinfo = interval=float:0.01\n")
        first = (await server.get("/netinfo")).json()
        self.assertEqual((first["running"], first["version"]), (2, 1))
        await task.deferLater(reactor, 0.05, lambda: None)
        later = (await server.get("/netinfo")).json()
        self.assertGreater(later["ticks"], first["ticks"])
        old = self.counters()
        self.assertEqual(len(old), 2)

        self.dir.write("netinfo", NETINFO + "\nVERSION = 2\n")
        outcome = await server.registry.reload("netinfo")
        self.assertTrue(outcome.success, outcome.error)
        await task.deferLater(reactor, 0.02, lambda: None)
        self.assertTrue(all(t.done() for t in old))
        second = (await server.get("/netinfo")).json()
        self.assertEqual((second["running"], second["version"]), (2, 2))

        await server.registry.stop_all()
        await task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(self.counters(), [])

    async def test_asyncTerminate(self) -> None:
        """
        A coroutine returned by C{terminate_plugin} is awaited; an
        C{initialize} without keywords is called without them.
        """
        self.dir.write("ticker", NETINFO_ASYNC_STOP)
        server = await self.serveOld()
        await task.deferLater(reactor, 0.03, lambda: None)
        self.assertGreater((await server.get("/ticker")).json()["ticks"], 0)
        await server.registry.stop_all()
        self.assertEqual(TERMINATED, ["ticker"])


class PluginClassTests(TestCase):
    """
    L{plugin_class} finds an old plugin's class, never the imported
    L{BasePlugin}.
    """

    def module(self, source: str) -> types.ModuleType:
        module = types.ModuleType("_old_style_plugin")
        exec(textwrap.dedent(source), module.__dict__)
        return module

    def test_subclass(self) -> None:
        module = self.module(EXAMPLE)
        self.assertIs(plugin_class(module), module.Example)

    def test_baseAlone(self) -> None:
        module = self.module("from plugincore.baseplugin import BasePlugin\n")
        self.assertRaises(PluginLoadError, plugin_class, module)

    def test_intermediateBase(self) -> None:
        """
        A base class of the module's own under the plugin: the leaf serves.
        """
        module = self.module(EXAMPLE + "\nclass Loud(Example):\n    pass\n")
        self.assertIs(plugin_class(module), module.Loud)


class AnswerUnitTests(TestCase):
    """
    L{old_answer} on its own.
    """

    def test_values(self) -> None:
        self.assertEqual(old_answer((200, {"a": 1})), (200, {"a": 1}))
        self.assertEqual(old_answer((404, [1])), (404, [1]))
        self.assertEqual(old_answer((200, None)), (200, None))
        html = old_answer((200, "<p>"))
        self.assertIsInstance(html, Response)
        self.assertEqual(
            (html.body, html.status, html.content_type),
            ("<p>", 200, "text/html; charset=utf-8"),
        )
        raw = old_answer((200, b"\x00"))
        self.assertEqual((raw.body, raw.content_type), (b"\x00", None))
        mine = Response("x", 201)
        self.assertIs(old_answer((200, mine)), mine)
        self.assertIs(old_answer(mine), mine)
        self.assertRaises(AnswerError, old_answer, (200, {}, {}))
        self.assertRaises(AnswerError, old_answer, (200, object()))
        self.assertRaises(AnswerError, old_answer, {"a": 1})

    def test_withoutAiohttp(self) -> None:
        """
        plugincore works without aiohttp and never imports it.
        """
        code = textwrap.dedent(
            """
            import sys
            sys.modules['aiohttp'] = None  # as if not installed
            from plugincore.baseplugin import BasePlugin
            from plugincore.answers import old_answer, is_aiohttp

            class P(BasePlugin):
                def request_handler(self, **data):
                    return 200, 'ok'

            p, route = P.construct('p', {}, None)
            assert route == 'p', route
            assert old_answer((200, {'a': 1})) == (200, {'a': 1})
            assert old_answer((200, 'ok')).content_type.startswith('text/html')
            assert not is_aiohttp(object())
            assert sys.modules['aiohttp'] is None
            print('fine')
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "fine"), result.stderr)


class OldServerProcess(Process):
    """
    A real twistd, started with an old-style config file on the asyncio
    reactor (named explicitly, so that the test says what it needs).
    """

    def command(self, *extra: str) -> list[str]:
        command = super().command(*extra)
        index = command.index("pluginserver")
        return [*command[:index], "--reactor=asyncio", *command[index:]]


class ProcessTests(TestCase):
    """
    An old-style plugins directory and config file, served unchanged by a
    real C{twistd -n pluginserver}, over TCP.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_oldDirectoryRunsUnchanged(self) -> Any:
        if NEEDS_AIOHTTP:
            raise self.skipTest(NEEDS_AIOHTTP)
        server = OldServerProcess(self)
        www = os.path.join(server.dir, "www")
        os.makedirs(www)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("<h1>old pages</h1>")
        with open(server.config, "w") as f:
            f.write(
                textwrap.dedent(
                    f"""
                    [network]
                    bindto=127.0.0.1
                    port={server.port}

                    [paths]
                    plugins=plugins

                    [plugin_parms]
                    netinfo=interval=float:0.02
                    example=auth_type=plugin&apikey=pk

                    [file_server]
                    documents=www:www
                    """
                )
            )
        server.write_plugin("example", EXAMPLE)
        server.write_plugin("netinfo", NETINFO + "\nVERSION = 1\n")
        server.write_plugin("fileserve", FILESERVE)
        yield server.start()

        status, body = yield server.get("/plugins")
        self.assertEqual(body["loaded_plugins"], ["example", "netinfo", "www"])
        status, body = yield server.get("/example")
        self.assertEqual((status, body), (401, {"error": "unauthorized"}))
        status, body = yield server.get("/example?name=x", headers={"X-Custom-Auth": "pk"})
        self.assertEqual((status, body), (200, {"example": "Hi from example.py", "name": "x"}))

        status, body = yield server.get("/netinfo")
        self.assertEqual((status, body["running"], body["version"]), (200, 2, 1))
        yield task.deferLater(reactor, 0.2, lambda: None)
        status, later = yield server.get("/netinfo")
        self.assertGreater(later["ticks"], body["ticks"])

        pool = server.pool()
        response = yield treq.get(server.url + "/www/", pool=pool)
        self.assertEqual(response.code, 200)
        self.assertEqual((yield response.content()), b"<h1>old pages</h1>")

        # A reload: the old generation's terminate_plugin ends its tasks.
        server.write_plugin("netinfo", NETINFO + "\nVERSION = 2\n")
        status, body = yield server.get("/reload/netinfo")
        self.assertEqual((status, body["success"]), (200, True))
        status, body = yield server.get("/netinfo")
        self.assertEqual((status, body["running"], body["version"]), (200, 2, 2))

        status = yield server.stop()
        self.assertIn(status, (0, -15, 143))
        self.assertNotIn("Traceback", server.log())
