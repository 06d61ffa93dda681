"""
In-memory route tests: pluginserver.testing against the server's resource,
site and channel, with a real registry over a temporary plugins directory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from tests.helpers import ServerCase, plugin_source

ECHO = """
from pluginserver import Plugin

class Echo(Plugin):
    def handle(self, request):
        return {"method": request.method, "subpath": request.subpath,
                "args": request.args, "json": request.json,
                "client": request.client, "ua": request.headers.get("user-agent")}
"""


class PluginRouteTests(ServerCase):
    @defer.inlineCallbacks
    def test_getAPlugin(self) -> Any:
        self.dir.write("hello", plugin_source("{'hello': request.args.get('name', 'world')}"))
        yield self.serve()
        status, headers, body = yield self.call("GET", "/hello?name=you")
        self.assertEqual((status, body), (200, {"hello": "you"}))
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-store"])

    @defer.inlineCallbacks
    def test_unknownRouteIsJSON404(self) -> Any:
        yield self.serve()
        # "/" redirects to the dashboard (404 with it off: tests/test_dashboard.py).
        for path in ("/nope", "/nope/deeper", "/reload"):
            status, _, body = yield self.call("GET", path)
            self.assertEqual((status, body), (404, {"error": "not found"}), path)

    @defer.inlineCallbacks
    def test_subpathIsDecoded(self) -> Any:
        self.dir.write("echo", ECHO)
        yield self.serve()
        _, _, body = yield self.call("GET", "/echo/a/b%20c")
        self.assertEqual(body["subpath"], "a/b c")
        _, _, body = yield self.call("GET", "/echo")
        self.assertEqual(body["subpath"], "")

    @defer.inlineCallbacks
    def test_argumentsFromEverySource(self) -> Any:
        self.dir.write("echo", ECHO)
        yield self.serve()
        _, _, body = yield self.call("POST", "/echo?q=1&apikey=k", data={"form": "2", "q": "3"})
        self.assertEqual(body["args"], {"q": "3", "form": "2"})
        _, _, body = yield self.call(
            "POST", "/echo?q=1", json={"j": [1, 2], "apikey": "k", "n": None}
        )
        self.assertEqual(body["args"], {"q": "1", "j": [1, 2], "n": None})
        self.assertEqual(body["json"], {"j": [1, 2], "apikey": "k", "n": None})
        multipart = (
            b'--B\r\nContent-Disposition: form-data; name="field"\r\n\r\nv\r\n'
            b'--B\r\nContent-Disposition: form-data; name="apikey"\r\n\r\nk\r\n'
            b'--B\r\nContent-Disposition: form-data; name="upload"; filename="f.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\ntext\r\n--B--\r\n"
        )
        _, _, body = yield self.call(
            "POST",
            "/echo",
            data=multipart,
            headers={"content-type": "multipart/form-data; boundary=B"},
        )
        self.assertEqual(body["args"], {"field": "v", "upload": "text"})

    @defer.inlineCallbacks
    def test_curlStyleJSONBodyWithFormContentType(self) -> Any:
        self.dir.write("echo", ECHO)
        yield self.serve()
        _, _, body = yield self.call(
            "POST",
            "/echo",
            data=b'{"a": 1}',
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        self.assertEqual(body["args"], {"a": 1})
        self.assertEqual(body["json"], {"a": 1})

    @defer.inlineCallbacks
    def test_nonObjectJSONBodyIsPassedAsJSON(self) -> Any:
        self.dir.write("echo", ECHO)
        yield self.serve()
        status, _, body = yield self.call(
            "POST", "/echo", data=b"[1, 2]", headers={"content-type": "application/json"}
        )
        self.assertEqual((status, body["json"], body["args"]), (200, [1, 2], {}))

    @defer.inlineCallbacks
    def test_malformedJSONIs400(self) -> Any:
        self.dir.write("echo", ECHO)
        yield self.serve()
        status, _, body = yield self.call(
            "POST", "/echo", data=b"{nope", headers={"content-type": "application/json"}
        )
        self.assertEqual((status, body), (400, {"error": "malformed JSON body"}))

    @defer.inlineCallbacks
    def test_invalidUTF8Is400(self) -> Any:
        self.dir.write("echo", ECHO)
        yield self.serve()
        status, _, body = yield self.call("GET", "/echo?x=%ff")
        self.assertEqual((status, body), (400, {"error": "invalid UTF-8 in argument 'x'"}))
        status, _, body = yield self.call("GET", "/echo/%ff")
        self.assertEqual((status, body), (400, {"error": "invalid UTF-8 in path"}))

    @defer.inlineCallbacks
    def test_statusTupleAndHTTPError(self) -> Any:
        self.dir.write("made", plugin_source("(201, {'made': True})"))
        self.dir.write(
            "refuse",
            plugin_source("None", extra="").replace(
                "return None", "raise HTTPError(409, 'already there')"
            ),
        )
        yield self.serve()
        status, _, body = yield self.call("POST", "/made")
        self.assertEqual((status, body), (201, {"made": True}))
        status, _, body = yield self.call("GET", "/refuse")
        self.assertEqual((status, body), (409, {"error": "already there"}))

    @defer.inlineCallbacks
    def test_exceptionIs500WithoutDetails(self) -> Any:
        self.dir.write("boom", plugin_source("open('/secret/path/x')"))
        self.dir.write("unencodable", plugin_source("object()"))
        yield self.serve()
        for path in ("/boom", "/unencodable"):
            status, _, body = yield self.call("GET", path)
            self.assertEqual((status, body), (500, {"error": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(FileNotFoundError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    @defer.inlineCallbacks
    def test_asyncAndDeferredHandlers(self) -> Any:
        self.dir.write(
            "later",
            "from twisted.internet import defer\n"
            "from pluginserver import Plugin, HTTPError\n"
            "class Later(Plugin):\n"
            "    async def handle(self, request):\n"
            "        value = await defer.succeed(request.subpath)\n"
            "        if value == 'no':\n"
            "            raise HTTPError(418, 'teapot')\n"
            "        return {'later': value}\n",
        )
        self.dir.write(
            "deferred",
            plugin_source(
                "defer.succeed((202, 'accepted'))", extra="from twisted.internet import defer\n"
            ),
        )
        yield self.serve()
        status, _, body = yield self.call("GET", "/later/yes")
        self.assertEqual((status, body), (200, {"later": "yes"}))
        status, _, body = yield self.call("GET", "/later/no")
        self.assertEqual((status, body), (418, {"error": "teapot"}))
        status, _, body = yield self.call("GET", "/deferred")
        self.assertEqual((status, body), (202, "accepted"))

    @defer.inlineCallbacks
    def test_slowHandlerTimesOutWith504(self) -> Any:
        self.dir.write(
            "slow", plugin_source("defer.Deferred()", extra="from twisted.internet import defer\n")
        )
        yield self.serve(request_timeout=5.0)
        d = self.call("GET", "/slow")
        self.assertNoResult(d)
        self.clock.advance(5)
        status, _, body = yield d
        self.assertEqual((status, body), (504, {"error": "timeout"}))

    @defer.inlineCallbacks
    def test_methodNotAllowedNamesAllowed(self) -> Any:
        self.dir.write(
            "getonly",
            "from pluginserver import Plugin\n"
            "class G(Plugin):\n    methods = ('GET',)\n"
            "    def handle(self, request):\n        return {'m': request.method}\n",
        )
        yield self.serve()
        status, headers, body = yield self.call("POST", "/getonly")
        self.assertEqual((status, body), (405, {"error": "method not allowed"}))
        self.assertEqual(headers.getRawHeaders("allow"), ["GET, HEAD"])
        status, headers, body = yield self.call("HEAD", "/getonly")
        self.assertEqual((status, body), (200, None))
        self.assertEqual(headers.getRawHeaders("content-length"), [str(len(b'{"m":"HEAD"}'))])


class UtilityRouteTests(ServerCase):
    @defer.inlineCallbacks
    def test_pluginsListsEveryPlugin(self) -> Any:
        self.dir.write("hello", plugin_source("1"))
        yield self.serve()
        status, _, body = yield self.call("GET", "/plugins")
        self.assertEqual(status, 200)
        self.assertEqual(body["loaded_plugins"], ["hello"])
        info = body["plugins"]["hello"]
        self.assertEqual(
            sorted(info), ["auth", "file", "generation", "loaded_at", "module", "route"]
        )
        self.assertEqual((info["route"], info["generation"], info["auth"]), ("/hello", 1, "global"))
        self.assertTrue(info["file"].endswith("hello.py"))

    @defer.inlineCallbacks
    def test_reloadOne(self) -> Any:
        self.dir.write("p", plugin_source("'v1'"))
        yield self.serve()
        self.dir.write("p", plugin_source("'v2'"))
        status, _, body = yield self.call("POST", "/reload/p")
        self.assertEqual((status, body), (200, {"reloaded": "p", "success": True, "generation": 2}))
        _, _, body = yield self.call("GET", "/p")
        self.assertEqual(body, "v2")
        self.dir.write("p", "x = (\n")
        status, _, body = yield self.call("GET", "/reload/p")
        self.assertEqual(status, 500)
        self.assertEqual(
            body,
            {
                "reloaded": "p",
                "success": False,
                "error": "SyntaxError: '(' was never closed (p.py, line 1)",
                "generation": 2,
            },
        )
        _, _, body = yield self.call("GET", "/p")
        self.assertEqual(body, "v2")
        status, _, body = yield self.call("GET", "/reload/nope")
        self.assertEqual((status, body), (404, {"error": "no plugin named 'nope'"}))

    @defer.inlineCallbacks
    def test_reloadAll(self) -> Any:
        self.dir.write("a", plugin_source("'a'"))
        self.dir.write("gone", plugin_source("'gone'"))
        yield self.serve()
        self.dir.write("b", plugin_source("'b'"))
        self.dir.remove("gone")
        status, _, body = yield self.call("GET", "/reload/all")
        self.assertEqual(
            (status, body),
            (
                200,
                {
                    "status": "All plugins reloaded",
                    "loaded_plugins": ["a", "b"],
                    "added": ["b"],
                    "removed": ["gone"],
                    "failed": {},
                },
            ),
        )
        status, _, body = yield self.call("GET", "/b")
        self.assertEqual((status, body), (200, "b"))
        status, _, _ = yield self.call("GET", "/gone")
        self.assertEqual(status, 404)
        self.dir.write("a", "def (\n")
        status, _, body = yield self.call("POST", "/reload/all")
        self.assertEqual(status, 500)
        self.assertEqual(list(body["failed"]), ["a"])
        self.assertEqual(body["loaded_plugins"], ["a", "b"])

    @defer.inlineCallbacks
    def test_wrongMethodOnUtilityRoute(self) -> Any:
        yield self.serve()
        status, headers, body = yield self.call("DELETE", "/plugins")
        self.assertEqual((status, body), (405, {"error": "method not allowed"}))
        self.assertIn("GET", headers.getRawHeaders("allow")[0])


class OtherMethodFormTests(ServerCase):
    @defer.inlineCallbacks
    def test_putPatchAndDeleteFormBodiesAreArguments(self) -> Any:
        self.dir.write(
            "echo",
            "from pluginserver import Plugin\n"
            "class E(Plugin):\n    methods = ('PUT', 'PATCH', 'DELETE')\n"
            "    def handle(self, request):\n        return request.args\n",
        )
        yield self.serve()
        for method in ("PUT", "PATCH", "DELETE"):
            status, _, body = yield self.call(
                method, "/echo?q=1", data={"form": "2", "q": "3", "apikey": "k"}
            )
            self.assertEqual((status, body), (200, {"q": "3", "form": "2"}), method)
        multipart = b'--B\r\nContent-Disposition: form-data; name="field"\r\n\r\nv\r\n--B--\r\n'
        status, _, body = yield self.call(
            "PUT",
            "/echo",
            data=multipart,
            headers={"content-type": "multipart/form-data; boundary=B"},
        )
        self.assertEqual((status, body), (200, {"field": "v"}))


class GenerationLeakTests(ServerCase):
    @defer.inlineCallbacks
    def test_servedGenerationsAreReleased(self) -> Any:
        """
        Serving requests must not keep a replaced generation alive (a cache
        keyed by generation once did).
        """
        import gc

        source = (
            "from pluginserver import Plugin\n"
            "class Kept(Plugin):\n"
            "    def handle(self, request):\n        return {'v': VERSION}\n"
        )
        self.dir.write("kept", source + "VERSION = 0\n")
        yield self.serve(apikey="k")
        for version in range(1, 6):
            self.dir.write("kept", source + f"VERSION = {version}\n")
            yield self.registry.reload("kept")
            status, _, body = yield self.call("GET", "/kept", headers={"X-API-Key": "k"})
            self.assertEqual((status, body), (200, {"v": version}))
        gc.collect()
        alive = [o for o in gc.get_objects() if type(o).__name__ == "Kept"]
        self.assertEqual(len(alive), 1)


class BadInputTests(ServerCase):
    @defer.inlineCallbacks
    def test_deepJSONIs400(self) -> Any:
        self.dir.write("echo", ECHO)
        yield self.serve()
        deep = b"[" * 5000 + b"]" * 5000
        for contentType in ("application/json", "application/x-www-form-urlencoded"):
            status, _, body = yield self.call(
                "POST", "/echo", data=deep, headers={"content-type": contentType}
            )
            self.assertEqual((status, body), (400, {"error": "JSON body nested too deeply"}))

    @defer.inlineCallbacks
    def test_nonFiniteNumbersAreNotJSON(self) -> Any:
        self.dir.write("echo", ECHO)
        self.dir.write("nan", plugin_source("{'x': float('nan')}"))
        yield self.serve()
        for body in (b'{"a": 1e999}', b'{"a": NaN}', b"[Infinity]"):
            status, _, answer = yield self.call(
                "POST", "/echo", data=body, headers={"content-type": "application/json"}
            )
            self.assertEqual((status, answer), (400, {"error": "malformed JSON body"}), body)
        status, _, answer = yield self.call("GET", "/nan")
        self.assertEqual((status, answer), (500, {"error": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @defer.inlineCallbacks
    def test_curlStyleJSONKeepsOnlyItsOwnFields(self) -> Any:
        self.dir.write("echo", ECHO)
        yield self.serve()
        _, _, body = yield self.call(
            "POST",
            "/echo?q=1",
            data=b'{"note": "fish&chips=yes"}',
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        self.assertEqual(body["args"], {"q": "1", "note": "fish&chips=yes"})

    @defer.inlineCallbacks
    def test_noContentHasNoBodyHeaders(self) -> Any:
        self.dir.write("nothing", plugin_source("(204, None)"))
        yield self.serve()
        answer = yield self.server.request("POST", "/nothing")
        self.assertEqual((answer.status, answer.body), (204, b""))
        self.assertIsNone(answer.headers.getRawHeaders("content-length"))
        self.assertIsNone(answer.headers.getRawHeaders("content-type"))

    @defer.inlineCallbacks
    def test_invalidUTF8OutsidePluginsIsJSON400(self) -> Any:
        yield self.serve()
        for path in ("/%ff", "/reload/%ff", "/plugins%ff"):
            status, _, body = yield self.call("GET", path)
            self.assertEqual((status, body), (400, {"error": "invalid UTF-8 in path"}), path)

    @defer.inlineCallbacks
    def test_headDoesNotReload(self) -> Any:
        self.dir.write("p", plugin_source("1"))
        yield self.serve()
        for path in ("/reload/p", "/reload/all"):
            status, headers, _ = yield self.call("HEAD", path)
            self.assertEqual(status, 405)
            self.assertEqual(headers.getRawHeaders("allow"), ["GET, POST"])
        self.assertEqual(self.registry.get("p").generation, 1)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_aHandlerThatHoldsTheReactorIsNamedInAWarning(self) -> Any:
        self.dir.write(
            "slow",
            plugin_source(
                "time.sleep(float(request.args.get('s', '0'))) or 1", extra="import time"
            ),
        )
        yield self.serve()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def warnings() -> list[str]:
            return [formatEvent(e) for e in events if "held the reactor" in formatEvent(e)]

        yield self.call("GET", "/slow?s=0.1")
        self.assertEqual(warnings(), [])
        for _ in range(2):
            status, _, _ = yield self.call("GET", "/slow?s=0.6")
            self.assertEqual(status, 200)
        # Once a minute per generation, not once per request.
        self.assertEqual(len(warnings()), 1)
        self.assertIn("Plugin slow generation 1 held the reactor", warnings()[0])
        self.assertIn("blocking = True", warnings()[0])
        self.clock.advance(61)
        yield self.call("GET", "/slow?s=0.6")
        self.assertEqual(len(warnings()), 2)

    @defer.inlineCallbacks
    def test_baseExceptionFromHandleIsA500(self) -> Any:
        self.dir.write("bye", plugin_source("sys.exit(3)", extra="import sys"))
        yield self.serve()
        status, _, body = yield self.call("GET", "/bye")
        self.assertEqual((status, body), (500, {"error": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(SystemExit)), 1)
