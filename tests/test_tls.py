"""
TLS and key handling in a real twistd process: TLS 1.2 as the floor, no
plain-HTTP fallback, fail-closed start-up, certificate rotation, and keys
that never reach the log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import tempfile
import warnings
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.certs import der_of, make_certificate
from tests.process import Server, listening, run_twistd, sleep

HELLO = """
from pluginserver import Plugin

class Hello(Plugin):
    def handle(self, request):
        return {"hello": request.args.get("name", "world")}
"""

TLS_LISTEN = "ssl:{port}:interface=127.0.0.1:privateKey=server.key:certKey=server.crt"


def handshake(port: int, maximum: ssl.TLSVersion | None = None) -> bytes:
    """
    Connect with a client that checks nothing (so only the protocol version
    can make it fail) and return the server's certificate (DER).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        # Let this client speak old protocols at all: OpenSSL's default
        # security level would refuse them on the client side.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            # Deprecated protocols, on purpose: the server must refuse them.
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = maximum
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


class TLSTests(TestCase):
    timeout = 120

    def tlsServer(self) -> Server:
        directory = self.mktemp()
        os.makedirs(directory)
        _, _, pem = make_certificate(directory)
        server = Server(self, listen=TLS_LISTEN, trust=pem)
        for name in ("server.key", "server.crt"):
            shutil.copy(os.path.join(directory, name), server.dir)
        server.write_plugin("hello", HELLO)
        self.pem = pem
        return server

    @defer.inlineCallbacks
    def test_trustedClientIsServedOldProtocolsAndPlainHTTPAreNot(self) -> Any:
        server = self.tlsServer()
        yield server.start()
        status, body = yield server.get("/hello?name=tls")
        self.assertEqual((status, body), (200, {"hello": "tls"}))
        # The same permissive client succeeds at TLS 1.2 ...
        self.assertEqual(handshake(server.port, ssl.TLSVersion.TLSv1_2), der_of(self.pem))
        # ... and fails when capped at TLS 1.1: the server refuses it.
        self.assertRaises(ssl.SSLError, handshake, server.port, ssl.TLSVersion.TLSv1_1)
        # Plain HTTP on the TLS port gets no HTTP answer.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
            try:
                answer = s.recv(4096)
            except (TimeoutError, ConnectionResetError):
                answer = b""
        self.assertNotIn(b"HTTP/1.", answer)
        self.assertNotIn(b"hello", answer)
        yield server.stop()

    @defer.inlineCallbacks
    def test_certificateRotationOnSIGHUP(self) -> Any:
        server = self.tlsServer()
        yield server.start()
        self.assertEqual(handshake(server.port), der_of(self.pem))
        _, _, newPem = make_certificate(server.dir, "server")
        server.signal(signal.SIGHUP)
        for _ in range(100):
            if handshake(server.port) == der_of(newPem):
                break
            yield sleep(0.05)
        self.assertEqual(handshake(server.port), der_of(newPem))
        server.trust = newPem

        # A bad new pair (key of another certificate) is refused and the
        # current certificate keeps serving.
        other = self.mktemp()
        os.makedirs(other)
        otherKey, _, _ = make_certificate(other, "other")
        shutil.copy(otherKey, os.path.join(server.dir, "server.key"))
        status, body = yield server.get("/reload/all")
        self.assertEqual(status, 500)
        (listener,) = [k for k in body["failed"] if k.startswith("ssl:")]
        self.assertIn("server.key", listener)
        self.assertEqual(handshake(server.port), der_of(newPem))
        status, body = yield server.get("/hello")
        self.assertEqual(status, 200)
        yield server.stop()


class FailClosedTests(TestCase):
    timeout = 60

    def startFails(self, server: Server) -> str:
        result = run_twistd(["-n", "pluginserver", "--config", server.config], server.dir)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertFalse(listening(server.port))
        return lines[0]

    def test_mismatchedKeyAndCertificate(self) -> None:
        server = Server(self, listen=TLS_LISTEN)
        make_certificate(server.dir, "server")
        other = self.mktemp()
        os.makedirs(other)
        otherKey, _, _ = make_certificate(other, "other")
        shutil.copy(otherKey, os.path.join(server.dir, "server.key"))
        line = self.startFails(server)
        self.assertIn(server.config, line)
        self.assertIn("[server] listen", line)
        self.assertIn("Certificate public and private keys do not match", line)

    def test_missingCertificate(self) -> None:
        server = Server(self, listen=TLS_LISTEN)
        line = self.startFails(server)
        self.assertIn("[server] listen", line)
        self.assertIn("No such file or directory", line)
        self.assertIn("server.crt", line)

    def test_oldStyleSSLSectionFailsClosedToo(self) -> None:
        server = Server(self)
        with open(server.config, "w") as f:
            f.write(
                f"[network]\nbindto = 127.0.0.1\nport = int:{server.port}\n"
                "[SSL]\nenabled = bool:true\nkeyfile = missing.key\ncertfile = missing.crt\n"
                "[paths]\nplugins = plugins\n"
            )
        line = self.startFails(server)
        self.assertIn("[SSL]", line)
        self.assertIn("missing", line)

    def test_loweringTheTLSFloorIsRefused(self) -> None:
        server = Server(self, listen=TLS_LISTEN + ":sslmethod=TLSv1_METHOD")
        make_certificate(server.dir, "server")
        line = self.startFails(server)
        self.assertIn("sslmethod= is not allowed", line)


class KeyLoggingTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_keysNeverReachTheLog(self) -> Any:
        key = "k3y-that-must-not-be-logged"
        server = Server(self, ini=f"[auth]\napikey = {key}\nallow_query_key = bool:true\n")
        server.write_plugin("hello", HELLO)
        server.write_plugin(
            "broken",
            "from pluginserver import Plugin\n"
            "class B(Plugin):\n"
            "    def handle(self, request):\n"
            "        raise ValueError(request.args)\n",
        )
        yield server.start(headers={"X-API-Key": key})
        yield server.get(f"/hello?apikey={key}")
        yield server.request("POST", "/hello", data={"apikey": key})
        yield server.request("POST", "/hello", json={"apikey": key})
        yield server.get("/hello", headers={"Authorization": f"Bearer {key}"})
        yield server.get(f"/broken?apikey={key}")
        yield server.get(f"/nowhere?apikey={key}")
        yield server.get(f"/hello?apikey={key}wrong")
        yield server.stop()
        log = server.log()
        self.assertIn("Plugin broken generation 1 failed", log)
        self.assertNotIn(key, log)


class ListenerMixTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_tcpTLSAndUnixAtOnce(self) -> Any:
        """
        Three listeners in one process; a unix-socket client, having no
        address, is not refused by the address allow-list (the socket
        file's permissions guard it); a refused TLS body is answered 413
        with nothing in the log.
        """
        from tests.process import free_port

        tlsPort = free_port()
        # A unix socket path is limited to 107 bytes: the test's own
        # directory may be deeper than that, wherever CI clones the project.
        socketDir = tempfile.mkdtemp(prefix="ps")
        self.addCleanup(shutil.rmtree, socketDir, True)
        socketPath = os.path.join(socketDir, "ps.sock")
        listen = (
            "tcp:{port}:interface=127.0.0.1 "
            f"ssl:{tlsPort}:interface=127.0.0.1:privateKey=server.key:certKey=server.crt "
            f"unix:{socketPath}"
        )
        server = Server(
            self,
            listen=listen,
            server="max_body = int:1000\n",
            ini="[access]\nallow = list:127.0.0.0/8 ::1\n",
        )
        make_certificate(server.dir, "server")
        server.write_plugin("hello", HELLO)
        yield server.start()
        status, body = yield server.get("/hello?name=tcp")
        self.assertEqual((status, body), (200, {"hello": "tcp"}))

        def overUnix() -> bytes:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(socketPath)
                s.sendall(b"GET /hello?name=unix HTTP/1.0\r\nHost: localhost\r\n\r\n")
                chunks = []
                while chunk := s.recv(4096):
                    chunks.append(chunk)
                return b"".join(chunks)

        def overTLS(request: bytes) -> bytes:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with (
                socket.create_connection(("127.0.0.1", tlsPort), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(request)
                chunks = []
                try:
                    while chunk := tls.recv(4096):
                        chunks.append(chunk)
                except (ssl.SSLError, OSError):
                    pass
                return b"".join(chunks)

        from twisted.internet.threads import deferToThread

        answer = yield deferToThread(overUnix)
        self.assertTrue(answer.startswith(b"HTTP/1.0 200"), answer[:100])
        self.assertTrue(answer.endswith(b'{"hello":"unix"}'), answer[-100:])
        answer = yield deferToThread(
            overTLS, b"GET /hello?name=tls HTTP/1.0\r\nHost: localhost\r\n\r\n"
        )
        self.assertTrue(answer.endswith(b'{"hello":"tls"}'), answer[-100:])
        answer = yield deferToThread(
            overTLS,
            b"POST /hello HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:100])
        yield sleep(0.5)
        yield server.stop()
        log = server.log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)
