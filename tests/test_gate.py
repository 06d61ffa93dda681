"""
One gate for every spelling of a path: the checks a route requires are made
on the same parsed target the dispatch serves, whatever the spelling.

These tests drive pluginserver's own channel, site and resource in memory
(L{pluginserver.testing}) with raw request bytes, so every spelling reaches
the server exactly as a client wrote it (no client library normalises it
first).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pluginserver.target import REMEMBERED_PATH, BadTarget, parse_path, split_absolute
from pluginserver.testing import Answer, Server, serve
from tests.helpers import PluginDir, plugin_source

KEY = "s3cret-key"


def now(server: Server, data: bytes) -> Answer | None:
    """
    Send one request; the answer if it was given at once (every check of the
    gate answers synchronously), else L{None}.
    """
    answers: list[Answer] = []
    server.send(data).addCallback(answers.append)
    return answers[0] if answers else None


def request(
    method: str = "GET",
    target: str = "/",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
    host: str | None = "127.0.0.1:8080",
) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ParsePathTests(SynchronousTestCase):
    """
    L{parse_path} gives one route name and subpath per path, or refuses it.
    """

    def test_plainPaths(self) -> None:
        for path, name, subpath in [
            (b"/hello", "hello", ""),
            (b"/hello/", "hello", ""),
            (b"/hello/a/b", "hello", "a/b"),
            (b"/hello/a/", "hello", "a/"),
            (b"/", "", ""),
            (b"/hello/.well-known/x", "hello", ".well-known/x"),
        ]:
            target = parse_path(path)
            self.assertEqual((target.name, target.subpath), (name, subpath), path)

    def test_percentEncodingIsDecodedPerSegment(self) -> None:
        target = parse_path(b"/%70lugins")
        self.assertEqual(target.name, "plugins")
        target = parse_path(b"/h%C3%A9llo/caf%c3%a9")
        self.assertEqual((target.name, target.subpath), ("h\u00e9llo", "caf\u00e9"))

    def test_refusedSpellings(self) -> None:
        for path in [
            b"//plugins",
            b"/reload//all",
            b"/hello/a//b",
            b"/./plugins",
            b"/hello/../plugins",
            b"/hello/%2e%2e/plugins",
            b"/hello/%2E",
            b"/reload%2fall",
            b"/reload%2Fall",
            b"/hello/a%5cb",
            b"/hello/a\\b",
            b"/hello/a%00b",
        ]:
            e = self.assertRaises(BadTarget, parse_path, path)
            self.assertEqual(e.status, 404, path)

    def test_notOriginForm(self) -> None:
        for path in [b"*", b"a/plugins", b"plugins", b""]:
            e = self.assertRaises(BadTarget, parse_path, path)
            self.assertEqual(e.status, 400, path)

    def test_invalidUTF8(self) -> None:
        e = self.assertRaises(BadTarget, parse_path, b"/hello/%ff")
        self.assertEqual(e.status, 400)

    def test_shortPathsAreRememberedLongOnesNot(self) -> None:
        """
        A path is parsed once while it is remembered (the same Target comes
        back); one longer than REMEMBERED_PATH is parsed each time, so that
        clients cannot fill the memory with long paths.  Either parses the
        same.
        """
        short = b"/hello/a/b"
        self.assertIs(parse_path(short), parse_path(short))
        long = b"/hello/" + b"a" * REMEMBERED_PATH
        first, second = parse_path(long), parse_path(long)
        self.assertIsNot(first, second)
        self.assertEqual(first, second)
        self.assertEqual((first.name, first.subpath), ("hello", "a" * REMEMBERED_PATH))
        # A refusal is never remembered: it raises every time.
        for _ in range(2):
            self.assertRaises(BadTarget, parse_path, b"/hello/../x")

    def test_absoluteForm(self) -> None:
        self.assertEqual(
            split_absolute(b"http://127.0.0.1:8080/plugins"), (b"127.0.0.1:8080", b"/plugins")
        )
        self.assertEqual(split_absolute(b"https://u:p@host"), (b"host", b"/"))
        self.assertIsNone(split_absolute(b"/plugins"))
        self.assertIsNone(split_absolute(b"*"))


ROUTES = ["/plugins", "/reload/all", "/reload/hello", "/metrics", "/hello", "/hello/sub/x"]
"""Every keyed route of the server under test, canonically spelt."""


def _encode_char(char: str, upper: bool) -> str:
    return "".join(("%%%02X" if upper else "%%%02x") % byte for byte in char.encode("utf-8"))


@st.composite
def spellings(draw: Any) -> tuple[str, str]:
    """
    A method and a request target that a lax server might take for one of
    L{ROUTES}.
    """
    route = draw(st.sampled_from(ROUTES))
    chars = []
    for char in route:
        how = draw(st.sampled_from(["plain", "plain", "plain", "upper", "lower", "double"]))
        if how == "double" and char == "/":
            chars.append("//")
        elif how in ("upper", "lower"):
            chars.append(_encode_char(char, how == "upper"))
        else:
            chars.append(char)
    path = "".join(chars)
    if not path.startswith("/"):
        path = "/" + path  # an encoded first slash: keep it a path
    path = draw(
        st.sampled_from(
            [
                path,
                path,
                path + "/",
                "/." + path,
                "/x/.." + path,
                "/%2e" + path,
                "a" + path,
                "*",
                "http://127.0.0.1:8080" + path,
                "http://localhost" + path,
                "HTTP://127.0.0.1" + path,
            ]
        )
    )
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]))
    return method, path


class GateTests(TestCase):
    """
    With a global key set, no spelling of a keyed route answers 2xx without
    the key, and none runs a reload.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dir = PluginDir(self)
        self.dir.write("hello", plugin_source('{"hello": request.subpath}'))
        self.server = yield serve(self, self.dir.path, apikey=KEY, metrics_public=False)
        self.registry = self.server.registry

    def generation(self) -> int:
        loaded = self.registry.get("hello")
        assert loaded is not None
        return loaded.generation

    @settings(max_examples=500, deadline=None)
    @given(spelling=spellings())
    def test_noSpellingPassesTheGateWithoutTheKey(self, spelling: tuple[str, str]) -> None:
        method, target = spelling
        answer = now(self.server, request(method, target))
        # Every refusal is synchronous; an answer still pending means the
        # request went past the gate (a reload started).
        self.assertIsNotNone(answer, f"{method} {target}: no answer from the gate")
        assert answer is not None
        self.assertFalse(200 <= answer.status < 300, f"{method} {target}: {answer.status}")
        self.assertIn(answer.status, (400, 401, 403, 404, 405), f"{method} {target}")
        self.assertEqual(self.generation(), 1, f"{method} {target} reloaded")

    @defer.inlineCallbacks
    def test_theKeyOpensEveryCanonicalSpelling(self) -> Any:
        bearer = {"Authorization": f"Bearer {KEY}"}
        for target in ["/plugins", "/%70lugins", "/metrics", "/hello", "/h%65llo/sub/x"]:
            answer = yield self.server.send(request("GET", target, bearer))
            self.assertEqual(answer.status, 200, target)
        answer = yield self.server.send(request("GET", "/reload/%61ll", bearer))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json()["status"], "All plugins reloaded")
        answer = yield self.server.send(request("GET", "/h%65llo/a%20b", bearer))
        self.assertEqual(answer.json(), {"hello": "a b"})

    @defer.inlineCallbacks
    def test_encodedSpellingsAreTheSameRoute(self) -> Any:
        # Normalised before the gate: the key decides, never the spelling.
        for target in ["/%70lugins", "/%72eload/all", "/reload/%68ello"]:
            answer = yield self.server.send(request("GET", target))
            self.assertEqual(answer.status, 401, target)
            self.assertEqual(
                answer.headers.getRawHeaders("www-authenticate"), ['Bearer realm="pluginserver"']
            )
        self.assertEqual(self.generation(), 1)

    def test_oddSpellingsAre404WithoutTraceback(self) -> None:
        bearer = {"Authorization": f"Bearer {KEY}"}
        for target in ["//plugins", "//metrics", "//reload/hello", "/reload//all", "/x/../plugins"]:
            for headers in ({}, bearer):
                answer = now(self.server, request("GET", target, headers))
                assert answer is not None
                self.assertEqual(answer.status, 404, target)
                self.assertEqual(answer.json(), {"error": "not found"})
                self.assertEqual(answer.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(self.generation(), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_traversalAttemptsAreLoggedOnceAMinute(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def refusals() -> list[str]:
            return [formatEvent(e) for e in events if "Refused path" in formatEvent(e)]

        for target in ["/hello/..%2f..%2fetc/passwd", "/hello/%2e%2e/x", "/hello/a%5cb"]:
            answer = now(self.server, request("GET", target))
            assert answer is not None
            self.assertEqual(answer.status, 404)
        (line,) = refusals()
        self.assertIn("'/hello/..%2f..%2fetc/passwd' from 127.0.0.1", line)
        self.assertIn("a segment holding '/'", line)
        self.server.clock.advance(61)
        now(self.server, request("GET", "/hello/%2e%2e/x"))
        self.assertEqual(len(refusals()), 2)
        self.assertIn("a '..' segment", refusals()[1])

    def test_targetsNotInOriginForm(self) -> None:
        for target in ["*", "a/plugins", "plugins"]:
            answer = now(self.server, request("OPTIONS", target))
            assert answer is not None
            self.assertEqual(answer.status, 400, target)
            self.assertEqual(answer.json(), {"error": "bad request target"})


class FramingTests(TestCase):
    """
    RFC 9112 §3.2: one Host header, and an absolute-form target's host is
    the request's host.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dir = PluginDir(self)
        self.dir.write(
            "hello", plugin_source('{"hello": request.subpath, "host": request.headers["host"]}')
        )
        self.dir.write(
            "status",
            plugin_source("(int(request.args['s']), {'s': request.args['s']})"),
        )
        self.server = yield serve(self, self.dir.path, allowed_hosts=["127.0.0.1", "localhost"])

    def answer(self, data: bytes) -> Answer:
        answer = now(self.server, data)
        assert answer is not None
        return answer

    def test_twoHostHeadersAre400(self) -> None:
        answer = self.answer(request("GET", "/hello", {"Host": "evil.example"}))
        self.assertEqual(
            (answer.status, answer.json()), (400, {"error": "more than one Host header"})
        )

    def test_http11WithoutHostIs400(self) -> None:
        answer = self.answer(request("GET", "/hello", host=None))
        self.assertEqual((answer.status, answer.json()), (400, {"error": "missing Host header"}))

    def test_http10WithoutHostMeetsTheAllowList(self) -> None:
        # HTTP/1.0 may omit Host; the allow-list still decides.
        answer = self.answer(request("GET", "/hello", version="HTTP/1.0", host=None))
        self.assertEqual(answer.status, 400)
        self.assertEqual(answer.json()["error"], "host not allowed")

    def test_absoluteFormWithAnAllowedHostIsServedAsItsPath(self) -> None:
        answer = self.answer(request("GET", "http://localhost:8080/hello/a", host="evil.example"))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json(), {"hello": "a", "host": "localhost:8080"})

    def test_absoluteFormWithAHostNotAllowedIs400(self) -> None:
        answer = self.answer(request("GET", "http://evil.example/hello", host="127.0.0.1"))
        self.assertEqual(answer.status, 400)
        self.assertEqual(
            answer.json(),
            {
                "error": "host not allowed",
                "detail": "host 'evil.example' is not in [server] allowed_hosts",
            },
        )

    def test_statusOutside200To599IsALogged500(self) -> None:
        for status in (100, 101, 199, 600, 0, -1, 1000):
            answer = self.answer(request("GET", f"/status?s={status}"))
            self.assertEqual((answer.status, answer.json()), (500, {"error": "internal error"}))
        for status in (200, 299, 404, 599):
            answer = self.answer(request("GET", f"/status?s={status}"))
            self.assertEqual((answer.status, answer.json()), (status, {"s": str(status)}))


class CrossSiteTests(TestCase):
    """
    A page of another site cannot make a browser act on this server, even
    with no key and CORS off.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dir = PluginDir(self)
        self.dir.write("hello", plugin_source('{"method": request.method}'))
        self.server = yield serve(self, self.dir.path)
        self.registry = self.server.registry

    def status(
        self, method: str, target: str, headers: dict[str, str], server: Server | None = None
    ) -> int:
        answer = now(server or self.server, request(method, target, headers))
        assert answer is not None, (method, target, headers)
        if answer.status == 403:
            self.assertEqual(answer.json(), {"error": "cross-site request refused"})
        return answer.status

    def test_foreignOriginCannotUseUtilityRoutes(self) -> None:
        evil = {"Origin": "https://evil.example"}
        self.assertEqual(self.status("GET", "/plugins", evil), 403)
        self.assertEqual(self.status("POST", "/plugins", evil), 403)
        self.assertEqual(self.status("GET", "/reload/hello", evil), 403)
        self.assertEqual(self.status("GET", "/reload/all", {"Sec-Fetch-Site": "cross-site"}), 403)
        self.assertEqual(self.status("GET", "/plugins", {"Origin": "null"}), 403)
        # Another port of the same host is another origin.
        self.assertEqual(self.status("GET", "/plugins", {"Origin": "http://127.0.0.1:3000"}), 403)
        self.assertEqual(self.registry.get("hello").generation, 1)  # type: ignore[union-attr]

    def test_foreignOriginCannotPostToPlugins(self) -> None:
        evil = {"Origin": "https://evil.example"}
        for method in ("POST", "PUT", "DELETE"):
            self.assertEqual(self.status(method, "/hello", evil), 403)
        self.assertEqual(self.status("POST", "/hello", {"Sec-Fetch-Site": "cross-site"}), 403)
        # Reading is what CORS governs, not this rule.
        self.assertEqual(self.status("GET", "/hello", evil), 200)
        self.assertEqual(self.status("HEAD", "/hello", evil), 200)

    def test_sameOriginAndNonBrowsersAreUnaffected(self) -> None:
        self.assertEqual(self.status("GET", "/plugins", {}), 200)
        self.assertEqual(self.status("POST", "/hello", {}), 200)
        same = {"Origin": "http://127.0.0.1:8080", "Sec-Fetch-Site": "same-origin"}
        self.assertEqual(self.status("GET", "/plugins", same), 200)
        self.assertEqual(self.status("POST", "/hello", same), 200)
        self.assertEqual(self.status("POST", "/hello", {"Sec-Fetch-Site": "none"}), 200)

    def test_defaultPortsAreTheSameOrigin(self) -> None:
        answer = now(
            self.server,
            request("POST", "/hello", {"Origin": "http://localhost"}, host="localhost:80"),
        )
        assert answer is not None
        self.assertEqual(answer.status, 200)

    @defer.inlineCallbacks
    def test_corsAllowedOriginMayAct(self) -> Any:
        server = yield serve(
            self, self.dir.path, cors_enabled=True, cors_origins=["https://app.example"]
        )
        app = {"Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"}
        self.assertEqual(self.status("POST", "/hello", app, server), 200)
        self.assertEqual(self.status("GET", "/plugins", app, server), 200)
        answer = now(server, request("POST", "/hello", {"Origin": "https://evil.example"}))
        assert answer is not None
        self.assertEqual((answer.status, answer.json()), (403, {"error": "origin not allowed"}))
