"""
Operations against a real twistd process: /metrics scraped by a Prometheus
text-format parser, the access log (redacted, reopened on SIGUSR1), JSON
logs, and the configuration check.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from tests.process import Server, listening, run_twistd, sleep

HELLO = """
from pluginserver import Plugin

class Hello(Plugin):
    def handle(self, request):
        return {"hello": request.args.get("name", "world")}
"""

BROKEN = """
from pluginserver import Plugin

class Broken(Plugin):
    def handle(self, request):
        raise RuntimeError("boom")
"""

KEY = "ops-k3y-secret"


def samples(text: str) -> dict[Any, float]:
    """
    Every sample of a Prometheus text exposition, by (name, sorted labels).
    """
    found: dict[Any, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


class MetricsTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def scrape(self, server: Server, **kwargs: Any) -> Any:
        import treq

        response = yield treq.get(server.url + "/metrics", pool=server.pool(), timeout=10, **kwargs)
        body = yield response.text()
        return response.code, response.headers.getRawHeaders("content-type"), body

    @defer.inlineCallbacks
    def test_metricsAreScrapedAndParsed(self) -> Any:
        server = Server(self, ini=f"[auth]\napikey = {KEY}\n")
        server.write_plugin("hello", HELLO)
        server.write_plugin("broken", BROKEN)
        auth = {"X-API-Key": KEY}
        yield server.start(headers=auth)
        for _ in range(3):
            yield server.get("/hello", headers=auth)
        yield server.get("/broken", headers=auth)
        yield server.get("/nowhere/at/all", headers=auth)
        server.write_plugin("hello", HELLO + "\n# changed\n")
        yield server.get("/reload/hello", headers=auth)
        server.write_plugin("hello", "def (\n")
        yield server.get("/reload/hello", headers=auth)

        status, _, _ = yield self.scrape(server)
        self.assertEqual(status, 401)
        status, contentType, text = yield self.scrape(server, headers=auth)
        self.assertEqual(status, 200)
        self.assertTrue(contentType[0].startswith("text/plain; version=0.0.4"))
        found = samples(text)
        self.assertEqual(
            found["pluginserver_requests_total", (("route", "hello"), ("status", "200"))], 3
        )
        self.assertEqual(
            found["pluginserver_requests_total", (("route", "broken"), ("status", "500"))], 1
        )
        self.assertEqual(
            found["pluginserver_requests_total", (("route", "other"), ("status", "404"))], 1
        )
        self.assertEqual(
            found["pluginserver_request_duration_seconds_count", (("route", "hello"),)], 3
        )
        self.assertEqual(
            found[
                "pluginserver_request_duration_seconds_bucket", (("le", "+Inf"), ("route", "hello"))
            ],
            3,
        )
        self.assertGreater(
            found["pluginserver_request_duration_seconds_sum", (("route", "hello"),)], 0
        )
        self.assertEqual(found["pluginserver_plugin_errors_total", (("plugin", "broken"),)], 1)
        self.assertEqual(
            found[
                "pluginserver_plugin_reloads_total", (("plugin", "hello"), ("result", "success"))
            ],
            2,
        )
        self.assertEqual(
            found[
                "pluginserver_plugin_reloads_total", (("plugin", "hello"), ("result", "failure"))
            ],
            1,
        )
        self.assertEqual(found["pluginserver_plugin_generation", (("plugin", "hello"),)], 2)
        self.assertGreater(found["process_resident_memory_bytes", ()], 0)

    @defer.inlineCallbacks
    def test_metricsCanBePublic(self) -> Any:
        server = Server(
            self, server="metrics_public = bool:true\n", ini=f"[auth]\napikey = {KEY}\n"
        )
        server.write_plugin("hello", HELLO)
        yield server.start(headers={"X-API-Key": KEY})
        status, _, text = yield self.scrape(server)
        self.assertEqual(status, 200)
        self.assertIn("pluginserver_plugin_generation", text)
        status, _ = yield server.get("/plugins")
        self.assertEqual(status, 401)


class LogTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_accessLogIsRedactedAndReopenedOnSIGUSR1(self) -> Any:
        server = Server(
            self,
            server="access_log = access.log\n",
            ini=f"[auth]\napikey = {KEY}\nallow_query_key = bool:true\n",
        )
        server.write_plugin("hello", HELLO)
        yield server.start(headers={"X-API-Key": KEY})
        yield server.get(f"/hello?name=a&apikey={KEY}")
        yield server.get(f"/hello?apikey={KEY}&name=b", headers={"User-Agent": "ops-test"})
        path = os.path.join(server.dir, "access.log")
        text = ""
        for _ in range(60):  # flushed every second
            if os.path.exists(path):
                with open(path) as f:
                    text = f.read()
                if "name=b" in text:
                    break
            yield sleep(0.1)
        self.assertIn('"GET /hello?name=a&apikey=REDACTED HTTP/1.1" 200', text)
        self.assertIn('"GET /hello?apikey=REDACTED&name=b HTTP/1.1" 200', text)
        self.assertIn('"ops-test"', text)
        self.assertNotIn(KEY, text)

        os.rename(path, path + ".1")
        server.signal(signal.SIGUSR1)
        yield sleep(0.3)
        yield server.get("/hello?name=after", headers={"X-API-Key": KEY})
        for _ in range(60):
            if os.path.exists(path):
                with open(path) as f:
                    if "name=after" in f.read():
                        break
            yield sleep(0.1)
        with open(path) as f:
            self.assertIn("name=after", f.read())
        with open(path + ".1") as f:
            self.assertNotIn("name=after", f.read())
        yield server.stop()
        self.assertNotIn(KEY, server.log())

    @defer.inlineCallbacks
    def test_jsonLogsOneEventPerLineWithPluginAndGeneration(self) -> Any:
        server = Server(self, server="log_format = json\n")
        server.write_plugin("hello", HELLO)
        yield server.start()
        server.write_plugin("hello", HELLO + "\n# v2\n")
        yield server.get("/reload/hello")
        status = yield server.stop()
        self.assertEqual(status, -signal.SIGTERM)
        events = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        loads = [e for e in events if e.get("plugin") == "hello" and "generation" in e]
        self.assertEqual(
            [(e["generation"], e["text"].split(" from ")[0]) for e in loads],
            [
                (1, "Plugin hello generation 1 loaded"),
                (2, "Plugin hello generation 2 loaded"),
                (2, "Plugin hello generation 2 removed"),
            ],
        )


class CheckTests(TestCase):
    timeout = 60

    def test_checkReportsAndDoesNotListen(self) -> None:
        server = Server(self)
        server.write_plugin("hello", HELLO)
        result = run_twistd(["pluginserver", "--config", server.config, "--check"], server.dir)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(f"listener tcp:{server.port}:interface=127.0.0.1: ok (plain)", result.stdout)
        self.assertIn("plugin hello: ok (/hello, auth=global)", result.stdout)
        self.assertTrue(result.stdout.rstrip().endswith("OK"))
        self.assertFalse(listening(server.port))

    def test_checkFailsOnABrokenPlugin(self) -> None:
        server = Server(self)
        server.write_plugin("hello", HELLO)
        server.write_plugin("bad", "from pluginserver import Plugin\nimport no_such_module\n")
        result = run_twistd(["pluginserver", "--config", server.config, "--check"], server.dir)
        self.assertEqual(result.returncode, 1)
        self.assertIn(
            "plugin bad: FAILED: ModuleNotFoundError: No module named 'no_such_module' "
            "(bad.py, line 2)",
            result.stdout,
        )
        self.assertIn("1 problem(s)", result.stdout)


class CheckRouteTests(TestCase):
    timeout = 60

    def test_checkNamesTheRouteAndItsAuth(self) -> None:
        server = Server(self, ini="[plugin_parms]\nstatus = auth=none\n")
        server.write_plugin(
            "api_status",
            "from pluginserver import Plugin\n"
            "class S(Plugin):\n    name = 'status'\n"
            "    def handle(self, request):\n        return 1\n",
        )
        result = run_twistd(["pluginserver", "--config", server.config, "--check"], server.dir)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("plugin api_status: ok (/status, auth=none)", result.stdout)


class SystemdTests(TestCase):
    timeout = 60

    def test_systemdListenerOutsideSystemdIsOneClearLine(self) -> None:
        server = Server(self, listen="systemd:domain=INET:index=0")
        result = run_twistd(["-n", "pluginserver", "--config", server.config], server.dir)
        self.assertEqual(result.returncode, 1)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("no socket was passed by systemd", lines[0])

    @defer.inlineCallbacks
    def test_socketActivation(self) -> Any:
        """
        systemd-socket-activate binds the port and passes it, as a .socket
        unit does; the server listens on the descriptor it is given.
        """
        import shutil
        import subprocess

        from tests.process import twistd

        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise SkipTest("systemd-socket-activate is not installed")
        server = Server(self, listen="systemd:domain=INET:index=0")
        server.write_plugin("hello", HELLO)
        out = open(server.logfile, "ab")  # noqa: SIM115 - closed by the cleanup
        self.addCleanup(out.close)
        server.process = subprocess.Popen(
            [
                activate,
                "--fdname=pluginserver",
                "-l",
                f"127.0.0.1:{server.port}",
                twistd(),
                "-n",
                "--pidfile=",
                "pluginserver",
                "--config",
                server.config,
            ],
            cwd=server.dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                status, body = yield server.get("/hello")
                break
            except Exception:
                yield sleep(0.1)
        self.assertEqual((status, body), (200, {"hello": "world"}))
        self.assertIn("Serving 1 plugins", server.log())
        exit = yield server.stop()
        self.assertEqual(exit, -signal.SIGTERM)


class AccessLineTests(TestCase):
    """
    The fast access-log line is exactly twisted.web's combined format.
    """

    def request(self, uri: bytes, agent: bytes | None, referrer: bytes | None = None) -> Any:
        from twisted.web.http import Request
        from twisted.web.test.requesthelper import DummyChannel

        request = Request(DummyChannel(), False)
        request.method = b"GET"
        request.uri = uri
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = 17
        if agent is not None:
            request.requestHeaders.setRawHeaders(b"user-agent", [agent])
        if referrer is not None:
            request.requestHeaders.setRawHeaders(b"referer", [referrer])
        return request

    def test_sameLineAsTwisted(self) -> None:
        from twisted.web.http import combinedLogFormatter

        from pluginserver.site import redacted_log_line

        stamp = "[29/Nov/2026:18:04:01 +0000]"
        for uri, agent, referrer in [
            (b"/hello?name=a", b"curl/7.88.1", None),
            (b"/hello", None, b"https://a.example/"),
            (b'/q?x="quoted"', b"agent \\ with backslash", None),
            (b"/caf\xc3\xa9", b"ua \xff", b'"'),
        ]:
            request = self.request(uri, agent, referrer)
            self.assertEqual(
                redacted_log_line(stamp, request), combinedLogFormatter(stamp, request), uri
            )

    def test_keysRedactedOnBothPaths(self) -> None:
        from pluginserver.site import redacted_log_line

        stamp = "[29/Nov/2026:18:04:01 +0000]"
        for agent in (b"plain", b'"quoted"'):
            line = redacted_log_line(stamp, self.request(b"/h?apikey=SECRET&a=1", agent))
            self.assertIn("/h?apikey=REDACTED&a=1", line)
            self.assertNotIn("SECRET", line)
        # The server decodes field names: so does the redaction.
        for uri, shown in [
            (b"/h?api%6Bey=SECRET", "/h?api%6Bey=REDACTED"),
            (b"/h?a=1;APIKEY=SECRET&b=2", "/h?a=1;APIKEY=REDACTED&b=2"),
            (b"/h?+apikey=SECRET", "/h?+apikey=REDACTED"),
        ]:
            line = redacted_log_line(stamp, self.request(uri, b"plain"))
            self.assertIn(shown, line)
            self.assertNotIn("SECRET", line)
