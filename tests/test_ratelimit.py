"""
Rate limits and the auth-failure limit: the buckets themselves, and in
memory through the server's own channel (429 with Retry-After, before the
plugin runs and before the body is read).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pluginserver.ratelimit import MAX_ADDRESSES, AuthFailures, Buckets, Limits, retry_after
from tests.helpers import ServerCase

KEY = "rate-key"

COUNTER = """
from pluginserver import Plugin

CALLS = []

class Counter(Plugin):
    methods = ("GET", "HEAD", "POST")

    def handle(self, request):
        CALLS.append(request.client)
        return {"calls": len(CALLS), "client": request.client}
"""


class BucketTests(SynchronousTestCase):
    def test_burstThenRate(self) -> None:
        buckets = Buckets(rate=2.0, burst=3)
        self.assertEqual([buckets.take("a", 0.0) for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertAlmostEqual(buckets.take("a", 0.0), 0.5)
        self.assertEqual(buckets.take("b", 0.0), 0.0)  # per address
        self.assertEqual(buckets.take("a", 0.5), 0.0)  # one token back after 1/rate
        self.assertGreater(buckets.take("a", 0.5), 0)

    def test_burstZeroMeansTheRate(self) -> None:
        buckets = Buckets(rate=5.0, burst=0)
        self.assertEqual(buckets.burst, 5)
        self.assertEqual(Buckets(rate=0.1, burst=0).burst, 1)

    def test_bounded(self) -> None:
        buckets = Buckets(rate=1.0, burst=1, size=10)
        for n in range(25):
            buckets.take(f"10.0.0.{n}", 0.0)
        self.assertEqual(len(buckets), 10)
        # The least recently seen went first: 10.0.0.24 still has no token.
        self.assertGreater(buckets.take("10.0.0.24", 0.0), 0)
        self.assertEqual(buckets.take("10.0.0.0", 0.0), 0.0)
        self.assertEqual(MAX_ADDRESSES, 100_000)

    def test_retryAfterIsWholeSeconds(self) -> None:
        self.assertEqual([retry_after(w) for w in (0.01, 1.0, 1.2, 59.5)], [1, 1, 2, 60])


class AuthFailureTests(SynchronousTestCase):
    def test_moreThanTheLimitInAMinute(self) -> None:
        failures = AuthFailures(limit=3)
        for t in range(3):
            failures.failed("a", float(t))
        self.assertEqual(failures.blocked("a", 3.0), 0.0)
        failures.failed("a", 3.0)
        self.assertEqual(failures.blocked("a", 10.0), 50.0)  # the rest of that minute
        self.assertEqual(failures.blocked("b", 10.0), 0.0)
        self.assertEqual(failures.blocked("a", 60.0), 0.0)
        self.assertEqual(len(failures), 0)  # forgotten once the minute is over

    def test_limitsDisengageWhenNothingIsLeft(self) -> None:
        now = [0.0]
        limits = Limits(lambda request: ("a", "p", True), lambda: now[0])
        limits.configure(0.0, 0, 1, {})
        self.assertFalse(limits.engaged)
        limits.failed("a")
        limits.failed("a")
        self.assertTrue(limits.engaged)
        self.assertEqual(limits.admit(None), 60.0)
        now[0] = 61.0
        self.assertEqual(limits.admit(None), 0.0)
        self.assertFalse(limits.engaged)


class RateLimitServerTests(ServerCase):
    @defer.inlineCallbacks
    def serveCounter(self, params: Any = None, **settings: Any) -> Any:
        self.dir.write("counter", COUNTER)
        self.dir.write("other", COUNTER.replace("Counter", "Other"))
        yield self.serve(params=params, **settings)

    def calls(self) -> list[str]:
        module = self.registry.get("counter").instance.handle.__globals__  # type: ignore[union-attr]
        calls: list[str] = module["CALLS"]
        return calls

    @defer.inlineCallbacks
    def test_offByDefault(self) -> Any:
        yield self.serveCounter()
        self.assertFalse(self.server.site.limits.engaged)  # type: ignore[union-attr]
        for _ in range(50):
            status, _, _ = yield self.call("GET", "/counter")
            self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_overTheLimitIs429BeforeThePluginRuns(self) -> Any:
        yield self.serveCounter(rate_limit=1.0, rate_burst=2)
        for _ in range(2):
            status, _, _ = yield self.call("GET", "/counter")
            self.assertEqual(status, 200)
        status, headers, body = yield self.call("GET", "/counter")
        self.assertEqual((status, body), (429, {"error": "too many requests"}))
        self.assertEqual(headers.getRawHeaders("retry-after"), ["1"])
        self.assertEqual(len(self.calls()), 2)
        # Every route shares the address's bucket; HEAD is counted too.
        status, _, _ = yield self.call("GET", "/other")
        self.assertEqual(status, 429)
        answer = yield self.server.request("HEAD", "/counter")
        self.assertEqual((answer.status, answer.body), (429, b""))
        self.clock.advance(1.0)
        status, _, _ = yield self.call("GET", "/counter")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_refusedBeforeTheBodyIsRead(self) -> Any:
        """
        A request with a body over the limit is answered as soon as its
        head has arrived: the body is never waited for, and the connection
        is closed.
        """
        yield self.serveCounter(rate_limit=0.5, rate_burst=1)
        status, _, _ = yield self.call("GET", "/counter")
        self.assertEqual(status, 200)
        head = (
            b"POST /counter HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 900000\r\n\r\n"
        )
        answer = yield self.server.send(head)
        self.assertEqual(answer.status, 429)
        self.assertEqual(answer.headers.getRawHeaders("retry-after"), ["2"])
        self.assertEqual(answer.headers.getRawHeaders("connection"), ["close"])
        self.assertEqual(answer.json(), {"error": "too many requests"})
        self.assertEqual(len(self.calls()), 1)

    @defer.inlineCallbacks
    def test_perClientAfterTrustedProxies(self) -> Any:
        yield self.serveCounter(
            rate_limit=1.0,
            rate_burst=1,
            trusted_proxies=(__import__("ipaddress").ip_network("127.0.0.1/32"),),
        )
        for client in ("10.0.0.1", "10.0.0.2"):
            status, _, body = yield self.call(
                "GET", "/counter", headers={"X-Forwarded-For": client}
            )
            self.assertEqual((status, body["client"]), (200, client))
        status, _, _ = yield self.call("GET", "/counter", headers={"X-Forwarded-For": "10.0.0.1"})
        self.assertEqual(status, 429)

    @defer.inlineCallbacks
    def test_pluginsOwnRate(self) -> Any:
        yield self.serveCounter(params={"counter": {"rate": 1.0, "burst": 1}})
        status, _, _ = yield self.call("GET", "/counter")
        self.assertEqual(status, 200)
        status, _, _ = yield self.call("GET", "/counter")
        self.assertEqual(status, 429)
        for _ in range(5):  # no global limit: the other route is free
            status, _, _ = yield self.call("GET", "/other")
            self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_authFailures(self) -> Any:
        """
        More than auth_failures wrong keys from one address in a minute:
        429 on every keyed route, even with the right key, until the minute
        is over; public routes stay open.
        """
        self.dir.write("public", COUNTER.replace("Counter", "Public"))
        yield self.serveCounter(params={"public": {"auth": "none"}}, apikey=KEY, auth_failures=3)
        for _ in range(3):
            status, _, _ = yield self.call("GET", "/counter", headers={"X-API-Key": "guess"})
            self.assertEqual(status, 401)
        status, _, _ = yield self.call("GET", "/counter", headers={"X-API-Key": KEY})
        self.assertEqual(status, 200)  # three failures: not more than the limit
        status, _, _ = yield self.call("GET", "/counter", headers={"X-API-Key": "guess"})
        self.assertEqual(status, 401)
        for path in ("/counter", "/plugins"):
            status, headers, body = yield self.call("GET", path, headers={"X-API-Key": KEY})
            self.assertEqual((status, body), (429, {"error": "too many requests"}), path)
            self.assertEqual(headers.getRawHeaders("retry-after"), ["60"])
        status, _, _ = yield self.call("GET", "/public")
        self.assertEqual(status, 200)
        self.clock.advance(60)
        status, _, _ = yield self.call("GET", "/counter", headers={"X-API-Key": KEY})
        self.assertEqual(status, 200)
        self.assertFalse(self.server.site.limits.engaged)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_missingKeyIsNotAFailure(self) -> Any:
        yield self.serveCounter(apikey=KEY, auth_failures=1)
        for _ in range(5):
            status, _, _ = yield self.call("GET", "/counter")
            self.assertEqual(status, 401)
        status, _, _ = yield self.call("GET", "/counter", headers={"X-API-Key": KEY})
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_reloadedLimits(self) -> Any:
        yield self.serveCounter()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.server._apply(__import__("attr").evolve(self.server.settings, rate_limit=1.0))
        self.assertTrue(self.server.site.limits.engaged)  # type: ignore[union-attr]
        status, _, _ = yield self.call("GET", "/counter")
        self.assertEqual(status, 200)
        status, _, _ = yield self.call("GET", "/counter")
        self.assertEqual(status, 429)
