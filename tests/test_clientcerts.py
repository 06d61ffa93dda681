"""
Client certificates for real: a twistd process with an ssl: listener that
asks for (C{optional}) or demands (C{require}) a certificate signed by
C{[tls] client_ca}, a CA made in the test; clients with no certificate, one
from another CA, an expired one and a good one; C{auth=cert} plugins and
C{request.client_cert}; the CA read again on SIGHUP.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.certs import CA, make_certificate
from tests.process import STARTUP_TIMEOUT, Server, sleep

TLS_LISTEN = "ssl:{port}:interface=127.0.0.1:privateKey=server.key:certKey=server.crt"

WHO = """
from pluginserver import Plugin

class Who(Plugin):
    def handle(self, request):
        return {"cert": request.client_cert, "client": request.client}
"""

REFUSED = (ssl.SSLError, OSError, http.client.HTTPException)
"""What a client sees when the handshake refuses its certificate (with TLS
1.3 the server's alert may only arrive with the first read)."""


class ClientCertificateTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.certs = os.path.abspath(self.mktemp())
        os.makedirs(self.certs)
        _, self.serverCert, _ = make_certificate(self.certs, "server")
        self.ca = CA.make(self.certs, "ca")
        self.otherCA = CA.make(self.certs, "otherca")
        self.good = self.ca.issue(self.certs, "good-client", serial=0x1234)
        self.expired = self.ca.issue(self.certs, "expired-client", expired=True)
        self.stranger = self.otherCA.issue(self.certs, "stranger")

    def server(self, mode: str, params: str = "") -> Server:
        server = Server(
            self,
            listen=TLS_LISTEN,
            ini=f"[tls]\nclient_auth = {mode}\nclient_ca = ca.pem\n[plugin_parms]\n{params}",
        )
        for name in ("server.key", "server.crt"):
            shutil.copy(os.path.join(self.certs, name), server.dir)
        shutil.copy(self.ca.path, os.path.join(server.dir, "ca.pem"))
        server.write_plugin("who", WHO)
        return server

    def fetch(
        self, server: Server, path: str, cert: tuple[str, str] | None, **headers: str
    ) -> tuple[int, Any]:
        """
        GET C{path} over TLS with this client certificate (key, cert), or
        none; raises what the client sees when the handshake fails.
        """
        context = ssl.create_default_context(cafile=self.serverCert)
        if cert is not None:
            context.load_cert_chain(cert[1], cert[0])
        connection = http.client.HTTPSConnection(
            "localhost", server.port, context=context, timeout=10
        )
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            return response.status, json.loads(body) if body else None
        finally:
            connection.close()

    @defer.inlineCallbacks
    def start(self, server: Server) -> Any:
        """
        Start it and wait until it answers a client with the good
        certificate.
        """
        server.start_process()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                status, _ = self.fetch(server, "/who", self.good)
                if status == 200:
                    return
            except REFUSED:
                pass
            assert server.process is not None
            if server.process.poll() is not None:
                raise AssertionError(f"twistd exited:\n{server.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not serving:\n{server.log()}")
            yield sleep(0.1)

    def assertRefused(self, server: Server, cert: tuple[str, str] | None) -> None:
        with self.assertRaises(REFUSED):
            self.fetch(server, "/who", cert)

    @defer.inlineCallbacks
    def test_require(self) -> Any:
        """
        require: no certificate, one from another CA and an expired one
        all fail the handshake; a good one is served, and the plugin sees
        it as request.client_cert.
        """
        server = self.server("require")
        yield self.start(server)
        for cert in (None, self.stranger, self.expired):
            self.assertRefused(server, cert)
        status, body = self.fetch(server, "/who", self.good)
        self.assertEqual(status, 200)
        cert = body["cert"]
        self.assertEqual(cert["subject"], {"CN": "good-client", "O": "pluginserver tests"})
        self.assertEqual(cert["issuer"], {"CN": "pluginserver test ca"})
        self.assertEqual(cert["serial"], "1234")
        self.assertRegex(cert["not_after"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
        self.assertRegex(cert["sha256"], r"^[0-9a-f]{64}$")
        self.assertEqual(body["client"], "127.0.0.1")

    @defer.inlineCallbacks
    def test_optionalAndCertMode(self) -> Any:
        """
        optional: served with or without a certificate (a bad one still
        fails); an auth=cert plugin needs a verified certificate, and a
        certificate is enough there (no key), while other plugins still
        need the key.
        """
        server = self.server("optional", "who = auth=cert\nkeyed = auth=global\n")
        server.write_plugin("keyed", WHO.replace("Who", "Keyed"))
        with open(server.config, "a") as f:
            f.write("[auth]\napikey = k3y\n")
        yield self.start(server)
        status, body = self.fetch(server, "/who", None)
        self.assertEqual((status, body), (401, {"error": "unauthorized"}))
        status, body = self.fetch(server, "/who", None, **{"X-API-Key": "k3y"})
        self.assertEqual(status, 401)
        status, body = self.fetch(server, "/keyed", None, **{"X-API-Key": "k3y"})
        self.assertEqual((status, body["cert"]), (200, None))
        status, body = self.fetch(server, "/keyed", self.good)
        self.assertEqual(status, 401)  # a certificate is not a key
        status, body = self.fetch(server, "/keyed", self.good, **{"X-API-Key": "k3y"})
        self.assertEqual((status, body["cert"]["subject"]["CN"]), (200, "good-client"))
        for cert in (self.stranger, self.expired):
            self.assertRefused(server, cert)

    @defer.inlineCallbacks
    def test_caReloadedOnSighup(self) -> Any:
        """
        The CA is read again on SIGHUP with the key and certificate: after
        the CA file is replaced, the other CA's clients are served and the
        old CA's are refused; a CA file that is no longer readable keeps
        the old one in force, and says so in the log.
        """
        server = self.server("require")
        yield self.start(server)
        shutil.copy(self.otherCA.path, os.path.join(server.dir, "ca.pem"))
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while True:
            try:
                status, _ = self.fetch(server, "/who", self.stranger)
                if status == 200:
                    break
            except REFUSED:
                pass
            self.assertLess(time.monotonic(), deadline, server.log())
            yield sleep(0.1)
        self.assertRefused(server, self.good)
        os.remove(os.path.join(server.dir, "ca.pem"))
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "Configuration not reloaded" not in server.log():
            self.assertLess(time.monotonic(), deadline, server.log())
            yield sleep(0.1)
        self.assertIn("[tls] client_ca: cannot read", server.log())
        status, _ = self.fetch(server, "/who", self.stranger)
        self.assertEqual(status, 200)
        exit = yield server.stop()
        self.assertIn(exit, (0, -signal.SIGTERM))
