"""
Security in memory: API keys from every source, per-plugin auth, CORS,
the address and Host allow-lists, and the headers every answer carries.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from unittest import mock

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pluginserver import keys as keys_module
from pluginserver.keys import KeySet
from pluginserver.security import SecurityPolicy
from tests.helpers import ServerCase, plugin_source

KEY = "s3cret-global"
PLUGIN_KEY = "s3cret-plugin"
ARGS = plugin_source("request.args")


def nets(*cidrs: str) -> Any:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


class KeyTests(ServerCase):
    @defer.inlineCallbacks
    def serveWithKeys(self, **settings: Any) -> Any:
        self.dir.write("guarded", ARGS)
        self.dir.write("own", ARGS)
        self.dir.write("public", ARGS)
        params = {
            "own": {"auth": "plugin", "apikey": PLUGIN_KEY},
            "public": {"auth": "none"},
        }
        yield self.serve(params=params, apikey=KEY, **settings)

    @defer.inlineCallbacks
    def assertUnauthorized(self, method: str, path: str, **kwargs: Any) -> Any:
        status, headers, body = yield self.call(method, path, **kwargs)
        self.assertEqual((status, body), (401, {"error": "unauthorized"}), path)
        self.assertEqual(headers.getRawHeaders("www-authenticate"), ['Bearer realm="pluginserver"'])

    @defer.inlineCallbacks
    def test_everyKeySourceIsAccepted(self) -> Any:
        yield self.serveWithKeys()
        sources = [
            dict(headers={"Authorization": f"Bearer {KEY}"}),
            dict(headers={"X-API-Key": KEY}),
            dict(headers={"X-Custom-Auth": KEY}),
            dict(data={"apikey": KEY, "x": "1"}),
            dict(json={"apikey": KEY, "x": "1"}),
            dict(
                data=(
                    b'--B\r\nContent-Disposition: form-data; name="apikey"\r\n\r\n'
                    + KEY.encode()
                    + b"\r\n--B--\r\n"
                ),
                headers={"content-type": "multipart/form-data; boundary=B"},
            ),
        ]
        for kwargs in sources:
            status, _, body = yield self.call("POST", "/guarded", **kwargs)
            self.assertEqual(status, 200, kwargs)
            self.assertNotIn("apikey", body)

    @defer.inlineCallbacks
    def test_missingOrWrongKeyIsRefused(self) -> Any:
        yield self.serveWithKeys()
        yield self.assertUnauthorized("GET", "/guarded")
        yield self.assertUnauthorized("GET", "/guarded", headers={"X-API-Key": "wrong"})
        yield self.assertUnauthorized("GET", "/guarded", headers={"Authorization": f"Basic {KEY}"})
        yield self.assertUnauthorized("POST", "/guarded", data={"apikey": KEY + "x"})
        # The plugin's own key is not the global one, and vice versa.
        yield self.assertUnauthorized("GET", "/own", headers={"X-API-Key": KEY})
        status, _, _ = yield self.call("GET", "/own", headers={"X-API-Key": PLUGIN_KEY})
        self.assertEqual(status, 200)
        yield self.assertUnauthorized("GET", "/guarded", headers={"X-API-Key": PLUGIN_KEY})

    @defer.inlineCallbacks
    def test_queryKeyOnlyWhenAllowed(self) -> Any:
        yield self.serveWithKeys()
        yield self.assertUnauthorized("GET", f"/guarded?apikey={KEY}")
        # A key in the query does not count even next to a wrong body key.
        yield self.assertUnauthorized("POST", f"/guarded?apikey={KEY}", data={"apikey": "no"})
        yield self.serveWithKeys(allow_query_key=True)
        status, _, body = yield self.call("GET", f"/guarded?apikey={KEY}&x=1")
        self.assertEqual((status, body), (200, {"x": "1"}))

    @defer.inlineCallbacks
    def test_publicPluginNeedsNoKey(self) -> Any:
        yield self.serveWithKeys()
        status, _, _ = yield self.call("GET", "/public")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_utilityRoutesNeedTheGlobalKey(self) -> Any:
        yield self.serveWithKeys()
        for path in ("/plugins", "/reload/all", "/reload/guarded"):
            yield self.assertUnauthorized("GET", path)
            yield self.assertUnauthorized("GET", path, headers={"X-API-Key": PLUGIN_KEY})
            status, _, _ = yield self.call("GET", path, headers={"X-API-Key": KEY})
            self.assertEqual(status, 200, path)
        status, _, _ = yield self.call("POST", "/plugins", data={"apikey": KEY})
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_noGlobalKeyMeansOpen(self) -> Any:
        self.dir.write("p", ARGS)
        yield self.serve()
        status, _, _ = yield self.call("GET", "/p")
        self.assertEqual(status, 200)
        status, _, _ = yield self.call("GET", "/plugins")
        self.assertEqual(status, 200)


class ComparisonTests(SynchronousTestCase):
    def test_keysAreComparedInConstantTime(self) -> None:
        with mock.patch.object(
            keys_module.hmac, "compare_digest", wraps=keys_module.hmac.compare_digest
        ) as spy:
            keys = KeySet.of("abc")
            self.assertIsNotNone(keys.match("abc"))
            self.assertIsNone(keys.match("abd"))
            self.assertIsNone(keys.match(None))
        self.assertEqual(spy.call_count, 2)


class CORSTests(ServerCase):
    @defer.inlineCallbacks
    def test_allowedOriginIsEchoedWithCredentials(self) -> Any:
        self.dir.write("p", ARGS)
        yield self.serve(cors_enabled=True, cors_origins=("https://a.example",))
        status, headers, _ = yield self.call("GET", "/p", headers={"Origin": "https://a.example"})
        self.assertEqual(status, 200)
        self.assertEqual(
            headers.getRawHeaders("access-control-allow-origin"), ["https://a.example"]
        )
        self.assertEqual(headers.getRawHeaders("vary"), ["Origin"])
        self.assertEqual(headers.getRawHeaders("access-control-allow-credentials"), ["true"])

    @defer.inlineCallbacks
    def test_otherOriginIsRefused(self) -> Any:
        self.dir.write("p", ARGS)
        yield self.serve(cors_enabled=True, cors_origins=("https://a.example",))
        status, headers, body = yield self.call(
            "GET", "/p", headers={"Origin": "https://evil.example"}
        )
        self.assertEqual((status, body), (403, {"error": "origin not allowed"}))
        self.assertIsNone(headers.getRawHeaders("access-control-allow-origin"))

    @defer.inlineCallbacks
    def test_noOriginIsUnaffected(self) -> Any:
        self.dir.write("p", ARGS)
        yield self.serve(cors_enabled=True, cors_origins=("https://a.example",))
        status, headers, _ = yield self.call("GET", "/p")
        self.assertEqual(status, 200)
        self.assertIsNone(headers.getRawHeaders("access-control-allow-origin"))

    @defer.inlineCallbacks
    def test_preflightNeedsNoKey(self) -> Any:
        self.dir.write(
            "p",
            "from pluginserver import Plugin\n"
            "class P(Plugin):\n    methods = ('GET', 'PUT')\n"
            "    def handle(self, request):\n        return 1\n",
        )
        yield self.serve(cors_enabled=True, cors_origins=("https://a.example",), apikey=KEY)
        status, headers, body = yield self.call(
            "OPTIONS",
            "/p",
            headers={"Origin": "https://a.example", "Access-Control-Request-Method": "PUT"},
        )
        self.assertEqual((status, body), (204, None))
        self.assertEqual(headers.getRawHeaders("access-control-allow-methods"), ["GET, HEAD, PUT"])
        self.assertEqual(
            headers.getRawHeaders("access-control-allow-headers"),
            ["Authorization, Content-Type, X-API-Key, X-Custom-Auth"],
        )
        self.assertTrue(headers.getRawHeaders("access-control-max-age"))
        self.assertEqual(
            headers.getRawHeaders("access-control-allow-origin"), ["https://a.example"]
        )
        # The real request still needs the key.
        status, _, _ = yield self.call("PUT", "/p", headers={"Origin": "https://a.example"})
        self.assertEqual(status, 401)

    @defer.inlineCallbacks
    def test_anyOriginNeverWithCredentials(self) -> Any:
        self.dir.write("p", ARGS)
        yield self.serve(cors_enabled=True, cors_origins=("*",))
        status, headers, _ = yield self.call("GET", "/p", headers={"Origin": "https://who.example"})
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders("access-control-allow-origin"), ["*"])
        self.assertIsNone(headers.getRawHeaders("access-control-allow-credentials"))


class AddressAndHostTests(ServerCase):
    @defer.inlineCallbacks
    def test_clientOutsideTheAllowListIsForbidden(self) -> Any:
        self.dir.write("p", plugin_source("request.client"))
        yield self.serve(access_allow=nets("10.0.0.0/8"))
        status, _, body = yield self.call("GET", "/p")
        self.assertEqual((status, body), (403, {"error": "forbidden"}))
        status, _, body = yield self.call("GET", "/plugins")
        self.assertEqual((status, body), (403, {"error": "forbidden"}))

    @defer.inlineCallbacks
    def test_clientInsideTheAllowListIsServed(self) -> Any:
        self.dir.write("p", plugin_source("request.client"))
        yield self.serve(access_allow=nets("127.0.0.0/8", "::1"))
        status, _, body = yield self.call("GET", "/p")
        self.assertEqual((status, body), (200, "127.0.0.1"))

    @defer.inlineCallbacks
    def test_forwardedForFromATrustedProxy(self) -> Any:
        self.dir.write("p", plugin_source("request.client"))
        yield self.serve(access_allow=nets("10.0.0.0/8"), trusted_proxies=nets("127.0.0.1"))
        status, _, body = yield self.call(
            "GET", "/p", headers={"X-Forwarded-For": "192.0.2.9, 10.1.2.3"}
        )
        self.assertEqual((status, body), (200, "10.1.2.3"))
        status, _, body = yield self.call("GET", "/p", headers={"X-Forwarded-For": "192.0.2.9"})
        self.assertEqual((status, body), (403, {"error": "forbidden"}))

    @defer.inlineCallbacks
    def test_forwardedForFromAnyoneElseIsIgnored(self) -> Any:
        self.dir.write("p", plugin_source("request.client"))
        yield self.serve(trusted_proxies=nets("192.0.2.1"))
        status, _, body = yield self.call("GET", "/p", headers={"X-Forwarded-For": "10.9.9.9"})
        self.assertEqual((status, body), (200, "127.0.0.1"))

    @defer.inlineCallbacks
    def test_hostAllowList(self) -> Any:
        self.dir.write("p", plugin_source("1"))
        yield self.serve(allowed_hosts=("localhost", "127.0.0.1", "[::1]"))
        for host in ("localhost", "localhost:8080", "127.0.0.1:1", "[::1]:8080", "LOCALHOST"):
            status, _, _ = yield self.call("GET", "/p", headers={"Host": host})
            self.assertEqual(status, 200, host)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(3):
            status, headers, body = yield self.call(
                "GET", "/p", headers={"Host": "evil.example:8080"}
            )
            self.assertEqual(
                (status, body),
                (
                    400,
                    {
                        "error": "host not allowed",
                        "detail": "host 'evil.example' is not in [server] allowed_hosts",
                    },
                ),
            )
            self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
            self.assertEqual(headers.getRawHeaders("cache-control"), ["no-store"])
        # Logged once for the three (once a minute per host), naming the file.
        refusals = [formatEvent(e) for e in events if "Refused a request" in formatEvent(e)]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn("host 'evil.example' is not in [server] allowed_hosts", refusals[0])
        self.assertIn("test.ini", refusals[0])
        self.clock.advance(61)
        yield self.call("GET", "/p", headers={"Host": "evil.example"})
        refusals = [formatEvent(e) for e in events if "Refused a request" in formatEvent(e)]
        self.assertEqual(len(refusals), 2)


class PolicyTests(SynchronousTestCase):
    def test_proxyChainSkipsTrustedHops(self) -> None:
        policy = SecurityPolicy(trusted_proxies=nets("127.0.0.1", "10.0.0.0/8"))
        self.assertEqual(
            policy.client_address("127.0.0.1", [b"203.0.113.5, 10.0.0.2"]), "203.0.113.5"
        )
        self.assertEqual(policy.client_address("198.51.100.1", [b"10.0.0.2"]), "198.51.100.1")

    def test_ipv6AndMappedAddresses(self) -> None:
        policy = SecurityPolicy(access_allow=nets("127.0.0.0/8", "::1", "2001:db8::/32"))
        self.assertTrue(policy.address_allowed("::1"))
        self.assertTrue(policy.address_allowed("::ffff:127.0.0.1"))
        self.assertTrue(policy.address_allowed("2001:db8::5"))
        self.assertFalse(policy.address_allowed("2001:db9::5"))
        self.assertFalse(policy.address_allowed("not an address"))


class OtherMethodKeyTests(ServerCase):
    @defer.inlineCallbacks
    def test_formKeyOnPut(self) -> Any:
        self.dir.write(
            "p",
            "from pluginserver import Plugin\n"
            "class P(Plugin):\n    methods = ('PUT',)\n"
            "    def handle(self, request):\n        return request.args\n",
        )
        yield self.serve(apikey=KEY)
        status, _, body = yield self.call("PUT", "/p", data={"apikey": KEY, "x": "1"})
        self.assertEqual((status, body), (200, {"x": "1"}))
        status, _, _ = yield self.call("PUT", "/p", data={"apikey": "wrong"})
        self.assertEqual(status, 401)
        # The query still does not count when it is not allowed.
        status, _, _ = yield self.call("PUT", f"/p?apikey={KEY}", data={"x": "1"})
        self.assertEqual(status, 401)


class DefaultPortOriginTests(ServerCase):
    @defer.inlineCallbacks
    def test_originConfiguredWithDefaultPortMatches(self) -> Any:
        from pluginserver.config import load_settings

        ini = self.mktemp()
        with open(ini, "w") as f:
            f.write(
                f"[paths]\nplugins = {self.dir.path}\n[cors]\nenabled = bool:true\n"
                "origin_url = https://a.example:443\n"
            )
        settings = load_settings(ini)
        self.dir.write("p", ARGS)
        yield self.serve(cors_enabled=True, cors_origins=settings.cors_origins)
        status, headers, _ = yield self.call("GET", "/p", headers={"Origin": "https://a.example"})
        self.assertEqual(status, 200)
        self.assertEqual(
            headers.getRawHeaders("access-control-allow-origin"), ["https://a.example"]
        )


class QueryKeySmugglingTests(ServerCase):
    @defer.inlineCallbacks
    def test_blankQueryValueDoesNotTurnAQueryKeyIntoABodyKey(self) -> Any:
        """
        twisted.web keeps blank query values in request.args; a query key
        must not pass as a body key by shifting the count.
        """
        self.dir.write("p", ARGS)
        yield self.serve(apikey=KEY)
        for path in ("/p", "/plugins", "/reload/all"):
            status, _, _ = yield self.call("POST", f"{path}?apikey=&apikey={KEY}")
            self.assertEqual(status, 401, path)
            status, _, _ = yield self.call("POST", f"{path}?apikey=&apikey={KEY}", data={"x": "1"})
            self.assertEqual(status, 401, path)


ADMIN = "s3cret-admin"


class AdminKeyTests(ServerCase):
    """
    With [auth] admin_apikey, the utility routes need the admin key: the
    global key there is 403, no key or a wrong one 401; the admin key is
    also accepted wherever the global key is.
    """

    @defer.inlineCallbacks
    def serveWithAdmin(self, **settings: Any) -> Any:
        self.dir.write("guarded", ARGS)
        self.dir.write("own", ARGS)
        params = {"own": {"auth": "plugin", "apikey": PLUGIN_KEY}}
        yield self.serve(params=params, apikey=KEY, admin_apikey=ADMIN, **settings)

    @defer.inlineCallbacks
    def test_utilityRoutesNeedTheAdminKey(self) -> Any:
        yield self.serveWithAdmin()
        for path in ("/plugins", "/reload/guarded", "/reload/all", "/metrics", "/openapi.json"):
            status, _, body = yield self.call("GET", path, headers={"X-API-Key": KEY})
            self.assertEqual((status, body), (403, {"error": "forbidden"}), path)
            status, _, body = yield self.call("GET", path, headers={"X-API-Key": "wrong"})
            self.assertEqual((status, body), (401, {"error": "unauthorized"}), path)
            status, _, body = yield self.call("GET", path)
            self.assertEqual((status, body), (401, {"error": "unauthorized"}), path)
            answer = yield self.server.request(
                "GET", path, headers={"Authorization": f"Bearer {ADMIN}"}
            )
            self.assertEqual(answer.status, 200, path)
        status, _, _ = yield self.call("GET", "/health")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_adminKeyOpensGlobalRoutesNotPluginKeys(self) -> Any:
        yield self.serveWithAdmin()
        for key in (KEY, ADMIN):
            status, _, _ = yield self.call("GET", "/guarded", headers={"X-API-Key": key})
            self.assertEqual(status, 200, key)
        status, _, _ = yield self.call("GET", "/own", headers={"X-API-Key": ADMIN})
        self.assertEqual(status, 401)

    @defer.inlineCallbacks
    def test_withoutAdminKeyTheGlobalKeyAsBefore(self) -> Any:
        self.dir.write("guarded", ARGS)
        yield self.serve(apikey=KEY)
        status, _, _ = yield self.call("GET", "/plugins", headers={"X-API-Key": KEY})
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_keyListsRotate(self) -> Any:
        """
        A list of keys: each one valid; the settings keep no key.
        """
        self.dir.write("guarded", ARGS)
        yield self.serve(apikey=KeySet.of("old-key", "new-key"))
        for key in ("old-key", "new-key"):
            status, _, _ = yield self.call("GET", "/guarded", headers={"X-API-Key": key})
            self.assertEqual(status, 200, key)
        self.assertNotIn("old-key", repr(self.server.settings))


class AuditTests(ServerCase):
    @defer.inlineCallbacks
    def test_reloadsAreAudited(self) -> Any:
        """
        Each reload by route is one audit event: the client, the key's id
        (never the key) and the outcome.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.dir.write("guarded", ARGS)
        yield self.serve(apikey=KEY, admin_apikey=ADMIN)
        yield self.call("GET", "/reload/guarded", headers={"X-API-Key": ADMIN})
        yield self.call("POST", "/reload/all", headers={"X-API-Key": ADMIN})
        yield self.call("GET", "/reload/nothere", headers={"X-API-Key": ADMIN})
        self.dir.write("guarded", "this is not python\n")
        yield self.call("GET", "/reload/guarded", headers={"X-API-Key": ADMIN})
        audited = [e for e in events if e.get("audit") == "reload"]
        self.assertEqual(
            [(e["target"], e["success"]) for e in audited],
            [("guarded", True), ("all", True), ("nothere", False), ("guarded", False)],
        )
        keyId = keys_module.key_id(ADMIN)
        for event in audited:
            self.assertEqual(event["log_namespace"], "pluginserver.audit")
            self.assertEqual((event["client"], event["key_id"]), ("127.0.0.1", keyId))
            text = formatEvent(event)
            self.assertIn(keyId, text)
            self.assertIn("127.0.0.1", text)
        for event in events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn(ADMIN, text)
            self.assertNotIn(KEY, text)

    def test_signalAndWorkerForms(self) -> None:
        from pluginserver.security import audit_reload

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        audit_reload("signal", None, "all", False, {"config": "bad"}, worker=2)
        (event,) = [e for e in events if e.get("audit") == "reload"]
        self.assertEqual(
            formatEvent(event), "Audit: reload all by signal (key none) in worker 2: failed config"
        )


class CertificateModeTests(ServerCase):
    @defer.inlineCallbacks
    def test_certModeWithoutCertificateIs401(self) -> Any:
        """
        auth=cert: no key opens it; without a verified client certificate
        (here: no TLS at all) it is 401.
        """
        self.dir.write("certonly", ARGS)
        yield self.serve(params={"certonly": {"auth": "cert"}}, apikey=KEY)
        for headers in ({}, {"X-API-Key": KEY}):
            status, _, body = yield self.call("GET", "/certonly", headers=headers)
            self.assertEqual((status, body), (401, {"error": "unauthorized"}))

    def test_describeCertificate(self) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        from pluginserver.security import describe_certificate

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "client one"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            ]
        )
        expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(0xABC123)
            .not_valid_before(expires - datetime.timedelta(days=1))
            .not_valid_after(expires)
            .sign(key, hashes.SHA256())
        )
        self.assertEqual(
            describe_certificate(cert),
            {
                "subject": {"CN": "client one", "O": "Example"},
                "issuer": {"CN": "client one", "O": "Example"},
                "serial": "ABC123",
                "not_after": "2030-01-02T03:04:05+00:00",
                "sha256": cert.fingerprint(hashes.SHA256()).hex(),
            },
        )
