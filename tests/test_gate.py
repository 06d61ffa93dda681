"""
One gate for every spelling of a path: the checks a route requires are made
on the same parsed target the dispatch serves, whatever the spelling.

These tests drive pluginserver's own channel, site and resource over a
StringTransport with raw request bytes, so every spelling reaches the server
exactly as a client wrote it (no client library normalises it first).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pluginserver.metrics import Metrics
from pluginserver.target import BadTarget, parse_path, split_absolute
from pluginserver.web import PluginServerResource
from tests.helpers import FakeRuntime, PluginDir, plugin_source, settings_for

KEY = "s3cret-key"


class Answer:
    """
    A parsed HTTP answer: status, headers (lower-case names) and body.
    """

    def __init__(self, raw: bytes, method: bytes = b"GET") -> None:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ")[1])
        self.headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()
        self.body = b""
        if method == b"HEAD" or self.status in (204, 304):
            return
        if self.headers.get(b"transfer-encoding") == b"chunked":
            while True:
                size, _, rest = rest.partition(b"\r\n")
                length = int(size, 16)
                if length == 0:
                    break
                self.body += rest[:length]
                rest = rest[length + 2 :]
        else:
            self.body = rest[: int(self.headers.get(b"content-length", b"0"))]

    def json(self) -> Any:
        return json.loads(self.body)


def complete(raw: bytes, method: bytes) -> bool:
    """
    Whether C{raw} holds a whole answer to a request with C{method}.
    """
    head, mark, body = raw.partition(b"\r\n\r\n")
    if not mark:
        return False
    if method == b"HEAD" or head.split(b" ", 2)[1] in (b"204", b"304"):
        return True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
        if name.strip().lower() == b"transfer-encoding":
            return body.endswith(b"0\r\n\r\n")
    return True


class Wire:
    """
    pluginserver's site over a registry, spoken to with raw bytes.
    """

    def __init__(self, runtime: FakeRuntime) -> None:
        from pluginserver.site import PluginServerSite

        self.clock = task.Clock()
        metrics = Metrics(lambda: {})
        self.resource = PluginServerResource(runtime, self.clock, None, metrics)
        self.site = PluginServerSite(self.resource, reactor=self.clock)

    def send(self, data: bytes) -> tuple[StringTransport, Any]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        channel.makeConnection(transport)
        channel.dataReceived(data)
        return transport, channel

    def now(self, data: bytes) -> Answer | None:
        """
        Send one request; the answer if it was given at once (every check of
        the gate answers synchronously), else L{None}.
        """
        transport, channel = self.send(data)
        raw = transport.value()
        channel.connectionLost(None)
        method = data.split(b" ", 1)[0]
        return Answer(raw, method) if complete(raw, method) else None

    @defer.inlineCallbacks
    def later(self, data: bytes, timeout: float = 10.0) -> Any:
        """
        Send one request and fire with its answer, however long it takes
        (reloads run in threads).
        """
        from twisted.internet import reactor

        transport, channel = self.send(data)
        method = data.split(b" ", 1)[0]
        waited = 0.0
        while not complete(transport.value(), method) and waited < timeout:
            yield task.deferLater(reactor, 0.01, lambda: None)
            waited += 0.01
        channel.connectionLost(None)
        return Answer(transport.value(), method)


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

    def setUp(self) -> Any:
        self.dir = PluginDir(self)
        self.dir.write("hello", plugin_source('{"hello": request.subpath}'))
        self.registry = self.dir.registry(self)
        self.runtime = FakeRuntime(
            self.registry, settings_for(self.dir.path, apikey=KEY, metrics_public=False)
        )
        self.wire = Wire(self.runtime)
        return self.registry.load_all()

    def generation(self) -> int:
        loaded = self.registry.get("hello")
        assert loaded is not None
        return loaded.generation

    @settings(max_examples=500, deadline=None)
    @given(spelling=spellings())
    def test_noSpellingPassesTheGateWithoutTheKey(self, spelling: tuple[str, str]) -> None:
        method, target = spelling
        answer = self.wire.now(request(method, target))
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
            answer = yield self.wire.later(request("GET", target, bearer))
            self.assertEqual(answer.status, 200, target)
        answer = yield self.wire.later(request("GET", "/reload/%61ll", bearer))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json()["status"], "All plugins reloaded")
        answer = yield self.wire.later(request("GET", "/h%65llo/a%20b", bearer))
        self.assertEqual(answer.json(), {"hello": "a b"})

    @defer.inlineCallbacks
    def test_encodedSpellingsAreTheSameRoute(self) -> Any:
        # Normalised before the gate: the key decides, never the spelling.
        for target in ["/%70lugins", "/%72eload/all", "/reload/%68ello"]:
            answer = yield self.wire.later(request("GET", target))
            self.assertEqual(answer.status, 401, target)
            self.assertEqual(answer.headers[b"www-authenticate"], b'Bearer realm="pluginserver"')
        self.assertEqual(self.generation(), 1)

    def test_oddSpellingsAre404WithoutTraceback(self) -> None:
        bearer = {"Authorization": f"Bearer {KEY}"}
        for target in ["//plugins", "//metrics", "//reload/hello", "/reload//all", "/x/../plugins"]:
            for headers in ({}, bearer):
                answer = self.wire.now(request("GET", target, headers))
                assert answer is not None
                self.assertEqual(answer.status, 404, target)
                self.assertEqual(answer.json(), {"error": "not found"})
                self.assertEqual(answer.headers[b"content-type"], b"application/json")
        self.assertEqual(self.generation(), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_targetsNotInOriginForm(self) -> None:
        for target in ["*", "a/plugins", "plugins"]:
            answer = self.wire.now(request("OPTIONS", target))
            assert answer is not None
            self.assertEqual(answer.status, 400, target)
            self.assertEqual(answer.json(), {"error": "bad request target"})


class FramingTests(TestCase):
    """
    RFC 9112 §3.2: one Host header, and an absolute-form target's host is
    the request's host.
    """

    def setUp(self) -> Any:
        self.dir = PluginDir(self)
        self.dir.write(
            "hello", plugin_source('{"hello": request.subpath, "host": request.headers["host"]}')
        )
        self.dir.write(
            "status",
            plugin_source("(int(request.args['s']), {'s': request.args['s']})"),
        )
        self.registry = self.dir.registry(self)
        self.runtime = FakeRuntime(
            self.registry,
            settings_for(self.dir.path, allowed_hosts=["127.0.0.1", "localhost"]),
        )
        self.wire = Wire(self.runtime)
        return self.registry.load_all()

    def answer(self, data: bytes) -> Answer:
        answer = self.wire.now(data)
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

    def setUp(self) -> Any:
        self.dir = PluginDir(self)
        self.dir.write("hello", plugin_source('{"method": request.method}'))
        self.registry = self.dir.registry(self)
        self.wire = self.serve()
        return self.registry.load_all()

    def serve(self, **changes: Any) -> Wire:
        return Wire(FakeRuntime(self.registry, settings_for(self.dir.path, **changes)))

    def status(
        self, method: str, target: str, headers: dict[str, str], wire: Wire | None = None
    ) -> int:
        answer = (wire or self.wire).now(request(method, target, headers))
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
        answer = self.wire.now(
            request("POST", "/hello", {"Origin": "http://localhost"}, host="localhost:80")
        )
        assert answer is not None
        self.assertEqual(answer.status, 200)

    def test_corsAllowedOriginMayAct(self) -> None:
        wire = self.serve(cors_enabled=True, cors_origins=["https://app.example"])
        app = {"Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"}
        self.assertEqual(self.status("POST", "/hello", app, wire), 200)
        self.assertEqual(self.status("GET", "/plugins", app, wire), 200)
        answer = wire.now(request("POST", "/hello", {"Origin": "https://evil.example"}))
        assert answer is not None
        self.assertEqual((answer.status, answer.json()), (403, {"error": "origin not allowed"}))
