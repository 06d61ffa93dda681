"""
The second security layer in a real twistd process: key rotation by SIGHUP
with no request failing, key files re-read on /reload/all, bad input at
start-up and on SIGHUP, the rate-limit memory bound under 200,000 client
addresses, and Debian's nginx in front with the snippet of
docs/operations.md.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from tests.process import Server, free_port, listening, run_twistd, sleep

HELLO = """
from pluginserver import Plugin

class Hello(Plugin):
    def handle(self, request):
        return {"hello": "world", "client": request.client}
"""

OLD, NEW, NEWER = "old-key-1111", "new-key-2222", "newer-key-3333"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_key(directory: str, name: str, key: str) -> None:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)


@defer.inlineCallbacks
def until(condition: Any, what: str, timeout: float = 15.0) -> Any:
    """
    Wait (bounded) until C{condition()} (which may return a Deferred) is true.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = yield defer.maybeDeferred(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield sleep(0.05)


class RotationTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_rotationWithoutAFailedRequest(self) -> Any:
        """
        Two keys valid at once; the old one removed by SIGHUP while a client
        with the new key keeps asking: none of its requests fails.  A key
        file is read again on /reload/all; a bad key form on SIGHUP keeps
        the keys in force and logs the error.
        """
        server = Server(self, ini="[auth]\napikey = list:file:old.key file:new.key\n")
        write_key(server.dir, "old.key", OLD)
        write_key(server.dir, "new.key", NEW)
        server.write_plugin("hello", HELLO)
        yield server.start(headers={"X-API-Key": NEW})
        for key in (OLD, NEW):
            status, _ = yield server.get("/hello", headers={"X-API-Key": key})
            self.assertEqual(status, 200, key)

        statuses: list[int] = []
        done = [False]

        @defer.inlineCallbacks
        def client() -> Any:
            while not done[0]:
                status, _ = yield server.get("/hello", headers={"X-API-Key": NEW})
                statuses.append(status)

        running = client()
        yield until(lambda: len(statuses) > 5, "the client's first answers")
        server.write_config("[auth]\napikey = file:new.key\n")
        server.signal(signal.SIGHUP)

        @defer.inlineCallbacks
        def oldRefused() -> Any:
            status, _ = yield server.get("/hello", headers={"X-API-Key": OLD})
            return status == 401

        yield until(oldRefused, "the old key to be refused")
        count = len(statuses)
        yield until(lambda: len(statuses) > count + 5, "answers after the reload")
        done[0] = True
        yield running
        self.assertEqual(set(statuses), {200}, statuses)

        # file: is read again on /reload/all.
        write_key(server.dir, "new.key", NEWER)
        status, body = yield server.get("/reload/all", headers={"X-API-Key": NEW})
        self.assertEqual(status, 200, body)
        status, _ = yield server.get("/hello", headers={"X-API-Key": NEWER})
        self.assertEqual(status, 200)
        status, _ = yield server.get("/hello", headers={"X-API-Key": NEW})
        self.assertEqual(status, 401)

        # A bad form on SIGHUP: the keys in force stay, the error is logged.
        server.write_config("[auth]\napikey = sha256:0123\n")
        server.signal(signal.SIGHUP)
        yield until(lambda: "[auth] apikey: sha256:" in server.log(), "the error in the log")
        status, _ = yield server.get("/hello", headers={"X-API-Key": NEWER})
        self.assertEqual(status, 200)

        # Audit: SIGHUP and the route reload, with key ids, never the keys.
        log = server.log()
        self.assertIn("Audit: reload all by signal (key none)", log)
        newId = hashlib.sha256(NEW.encode()).hexdigest()[:8]
        self.assertIn(f"Audit: reload all by 127.0.0.1 (key {newId})", log)
        for key in (OLD, NEW, NEWER):
            self.assertNotIn(key, log)
            self.assertNotIn(hashlib.sha256(key.encode()).hexdigest(), log)


class BadInputTests(TestCase):
    timeout = 120

    def test_startUpRefusesWithOneLine(self) -> None:
        """
        A malformed sha256:, a missing key file, an unreadable CA,
        client_auth = maybe and rate = float:-1: exit 1 with one line naming
        the file, the section and the key.
        """
        cases = [
            ("[auth]\napikey = sha256:abcd\n", "[auth] apikey:"),
            ("[auth]\nadmin_apikey = file:missing.key\n", "[auth] admin_apikey:"),
            ("[tls]\nclient_auth = require\nclient_ca = unreadable.pem\n", "[tls] client_ca:"),
            ("[tls]\nclient_auth = maybe\n", "[tls] client_auth:"),
            ("[limits]\nrate = float:-1\n", "[limits] rate:"),
        ]
        for ini, where in cases:
            server = Server(self, ini=ini)
            with open(os.path.join(server.dir, "unreadable.pem"), "w") as f:
                f.write("-----BEGIN CERTIFICATE-----\n")
            os.chmod(os.path.join(server.dir, "unreadable.pem"), 0)
            if os.access(os.path.join(server.dir, "unreadable.pem"), os.R_OK):
                os.remove(os.path.join(server.dir, "unreadable.pem"))  # root reads anything
            result = run_twistd(["-n", "pluginserver", "--config", server.config], server.dir)
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            lines = result.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertIn(f"{server.config}: {where}", lines[0])
            self.assertFalse(listening(server.port))


def rss(pid: int) -> int:
    """
    The resident set size of process C{pid}, in bytes.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def pipelined(port: int, addresses: Any, batch: int = 1000) -> dict[bytes, int]:
    """
    GET /hello once for each address in X-Forwarded-For, pipelined on one
    keep-alive connection; counts the answers by status line.
    """
    counts: dict[bytes, int] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        pending = list(addresses)
        for start in range(0, len(pending), batch):
            chunk = pending[start : start + batch]
            s.sendall(
                b"".join(
                    b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: %s\r\n\r\n"
                    % a.encode()
                    for a in chunk
                )
            )
            received = b""
            while received.count(b"HTTP/1.1 ") < len(chunk):
                data = s.recv(1 << 20)
                if not data:
                    raise AssertionError("connection closed")
                received += data
            for line in re.findall(rb"HTTP/1\.1 \d\d\d", received):
                counts[line] = counts.get(line, 0) + 1
    return counts


class MemoryTests(TestCase):
    timeout = 600

    @defer.inlineCallbacks
    def test_200000AddressesThroughATrustedProxy(self) -> Any:
        """
        200,000 distinct client addresses (X-Forwarded-For from a trusted
        proxy), each with its bucket: the buckets are bounded, and the
        server's RSS grows by less than 30 MB.
        """
        server = Server(
            self,
            ini="[limits]\nrate = float:1000\nburst = int:10\n"
            "[access]\ntrusted_proxies = list:127.0.0.1\n",
        )
        server.write_plugin("hello", HELLO)
        yield server.start()
        pid = server.pid()

        def address(n: int) -> str:
            return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"

        # Warm up: code paths, allocator arenas, the first buckets.
        pipelined(server.port, [address(n) for n in range(5000)])
        before = rss(pid)
        counts = pipelined(server.port, [address(n) for n in range(5000, 205000)])
        after = rss(pid)
        self.assertEqual(counts, {b"HTTP/1.1 200": 200000})
        growth = after - before
        self.assertLess(growth, 30 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB")
        # Still limiting: the last address has its bucket.
        counts = pipelined(server.port, [address(204999)] * 20, batch=20)
        self.assertIn(b"HTTP/1.1 429", counts)


# ---------------------------------------------------------------------------
# nginx in front, for real


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )


def operations_snippet() -> str:
    """
    The nginx snippet of docs/operations.md (the block after the
    C{<!-- nginx -->} marker).
    """
    with open(os.path.join(ROOT, "docs", "operations.md")) as f:
        text = f.read()
    match = re.search(r"<!-- nginx -->\n```nginx\n(.*?)```", text, re.S)
    assert match is not None, "docs/operations.md has no <!-- nginx --> snippet"
    return match.group(1)


def get(
    port: int, path: str, source: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else None
    finally:
        connection.close()


class ReverseProxyTests(TestCase):
    timeout = 120

    def startNginx(self, upstream: int) -> int:
        binary = nginx_binary()
        if binary is None:
            if os.environ.get("CI") == "true":
                self.fail("nginx is not installed (.ci/run installs Debian's nginx-light)")
            raise SkipTest("nginx is not installed")
        prefix = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(prefix, "logs"))
        port = free_port()
        snippet = operations_snippet().replace("127.0.0.1:8080", f"127.0.0.1:{upstream}")
        config = os.path.join(prefix, "nginx.conf")
        with open(config, "w") as f:
            f.write(
                textwrap.dedent(
                    f"""\
                    worker_processes 1;
                    daemon off;
                    pid {prefix}/nginx.pid;
                    error_log {prefix}/logs/error.log warn;
                    events {{ worker_connections 64; }}
                    http {{
                        access_log off;
                        client_body_temp_path {prefix}/body;
                        proxy_temp_path {prefix}/proxy;
                        fastcgi_temp_path {prefix}/fastcgi;
                        uwsgi_temp_path {prefix}/uwsgi;
                        scgi_temp_path {prefix}/scgi;
                        server {{
                            listen 127.0.0.1:{port};
                            server_name localhost;
                    """
                )
                + textwrap.indent(snippet, " " * 8)
                + "    }\n}\n"
            )
        log = open(os.path.join(prefix, "logs", "stderr.log"), "wb")  # noqa: SIM115
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [binary, "-p", prefix, "-c", config, "-e", f"{prefix}/logs/error.log"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

        def stop() -> None:
            # By its PID, never by name.
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)

        self.addCleanup(stop)
        deadline = time.monotonic() + 10
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(prefix, "logs", "error.log"), errors="replace") as f:
                    raise AssertionError(f"nginx did not start:\n{f.read()}")
            time.sleep(0.05)
        return port

    @defer.inlineCallbacks
    def test_behindNginx(self) -> Any:
        """
        Through nginx, request.client is the real client (127.0.0.2 and
        127.0.0.3 here, nginx being 127.0.0.1), whatever X-Forwarded-For it
        sent itself; rate limits count per real client; and an
        X-Forwarded-For sent straight to the server from an address that is
        not a trusted proxy is ignored.
        """
        server = Server(
            self,
            ini="[limits]\nrate = float:0.5\nburst = int:3\n"
            "[access]\ntrusted_proxies = list:127.0.0.1\n",
        )
        server.write_plugin("hello", HELLO)
        yield server.start()
        proxy = self.startNginx(server.port)
        spoof = {"X-Forwarded-For": "203.0.113.9"}
        status, body = get(proxy, "/hello", "127.0.0.2", spoof)
        self.assertEqual((status, body["client"]), (200, "127.0.0.2"))
        for _ in range(2):
            status, body = get(proxy, "/hello", "127.0.0.2")
            self.assertEqual(status, 200)
        status, body = get(proxy, "/hello", "127.0.0.2", spoof)
        self.assertEqual((status, body), (429, {"error": "too many requests"}))
        status, body = get(proxy, "/hello", "127.0.0.3")
        self.assertEqual((status, body["client"]), (200, "127.0.0.3"))
        # Straight to the server from an untrusted address: the header is
        # ignored, and the limit is that address's own.
        status, body = get(server.port, "/hello", "127.0.0.4", spoof)
        self.assertEqual((status, body["client"]), (200, "127.0.0.4"))
