"""
Real-process tests: C{twistd pluginserver} started on 127.0.0.1 with a
temporary configuration, driven over TCP, reloaded and signalled.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.process import Server, listening, run_twistd, sleep

HELLO = """
from pluginserver import Plugin

class Hello(Plugin):
    def handle(self, request):
        return {"hello": request.args.get("name", "world")}
"""

MARKER = """
import os
from pluginserver import Plugin

class Marker(Plugin):
    def stop(self):
        with open(os.path.join(os.path.dirname(__file__), "..", "stopped"), "a") as f:
            f.write("stopped\\n")

    def handle(self, request):
        return {"version": VERSION, "param": self.params.get("word")}
"""


class ProcessTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_servesReloadsAndStopsCleanly(self) -> Any:
        """
        The whole walkthrough in one process: routes, edit + /reload/<name>
        with the same PID, /reload/all add and remove, SIGHUP, SIGTERM.
        """
        server = Server(self)
        server.write_plugin("hello", HELLO)
        server.write_plugin("marker", MARKER + "\nVERSION = 1\n")
        yield server.start()
        pid = server.pid()

        status, body = yield server.get("/hello?name=you")
        self.assertEqual((status, body), (200, {"hello": "you"}))
        status, body = yield server.get("/plugins")
        self.assertEqual(body["loaded_plugins"], ["hello", "marker"])
        status, body = yield server.get("/nowhere")
        self.assertEqual((status, body), (404, {"error": "not found"}))

        # Edit and reload one plugin.
        server.write_plugin("marker", MARKER + "\nVERSION = 2\n")
        status, body = yield server.request("POST", "/reload/marker")
        self.assertEqual(
            (status, body), (200, {"reloaded": "marker", "success": True, "generation": 2})
        )
        status, body = yield server.get("/marker")
        self.assertEqual(body, {"version": 2, "param": None})

        # A broken edit keeps the old generation serving.
        server.write_plugin("marker", "def (\n")
        status, body = yield server.get("/reload/marker")
        self.assertEqual(status, 500)
        self.assertIn("SyntaxError", body["error"])
        self.assertIn("(marker.py, line 1)", body["error"])
        status, body = yield server.get("/marker")
        self.assertEqual(body, {"version": 2, "param": None})

        # Add and remove files, /reload/all.
        server.write_plugin("marker", MARKER + "\nVERSION = 3\n")
        server.write_plugin("added", HELLO)
        server.remove_plugin("hello")
        status, body = yield server.get("/reload/all")
        self.assertEqual(status, 200)
        self.assertEqual(
            (body["added"], body["removed"], body["loaded_plugins"]),
            (["added"], ["hello"], ["added", "marker"]),
        )
        status, _ = yield server.get("/hello")
        self.assertEqual(status, 404)
        status, body = yield server.get("/added?name=new")
        self.assertEqual((status, body), (200, {"hello": "new"}))

        # SIGHUP re-reads the config: the plugin gets its new params.
        server.write_config("[plugin_parms]\nmarker = word=hup\n")
        server.signal(signal.SIGHUP)
        for _ in range(100):
            status, body = yield server.get("/marker")
            if body.get("param") == "hup":
                break
            yield sleep(0.05)
        self.assertEqual(body, {"version": 3, "param": "hup"})
        self.assertEqual(server.pid(), pid)
        # SIGHUP reloads every plugin, changed or not.
        status, body = yield server.get("/plugins")
        self.assertEqual(body["plugins"]["added"]["generation"], 2)

        # SIGTERM: plugins' stop() ran (one per generation), the exit is
        # the signal's, no traceback.
        status = yield server.stop()
        self.assertEqual(status, -signal.SIGTERM)
        with open(os.path.join(server.dir, "stopped")) as f:
            self.assertEqual(f.read().count("stopped"), 4)
        log = server.log()
        self.assertNotIn("Traceback", log)
        self.assertIn("pluginserver stopped", log)
        self.assertFalse(os.path.exists(server.pidfile))

    @defer.inlineCallbacks
    def test_daemonWithPidfile(self) -> Any:
        server = Server(self, daemon=True)
        server.write_plugin("hello", HELLO)
        yield server.start()
        self.assertTrue(os.path.exists(server.pidfile))
        pid = server.pid()
        self.assertNotEqual(pid, server.process.pid if server.process else None)
        status, body = yield server.get("/hello")
        self.assertEqual((status, body), (200, {"hello": "world"}))
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if not os.path.exists(server.pidfile):
                break
            yield sleep(0.05)
        self.assertFalse(os.path.exists(server.pidfile))
        self.assertFalse(listening(server.port))
        self.assertIn("pluginserver stopped", server.log())


class StartupFailureTests(TestCase):
    timeout = 60

    def test_badConfigIsOneLineAndExit1(self) -> None:
        server = Server(self, ini="max_body = int:lots\n")
        # The [server] section is first in the file; make the bad key land there.
        with open(server.config) as f:
            text = f.read().replace("max_body = int:lots\n", "")
        text = text.replace("[server]\n", "[server]\nmax_body = int:lots\n", 1)
        with open(server.config, "w") as f:
            f.write(text)
        result = run_twistd(["-n", "pluginserver", "--config", server.config], server.dir)
        self.assertEqual(result.returncode, 1)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(server.config, lines[0])
        self.assertIn("[server] max_body", lines[0])
        self.assertFalse(listening(server.port))

    def test_missingPluginsDirectory(self) -> None:
        server = Server(self)
        os.rmdir(server.plugins)
        result = run_twistd(["-n", "pluginserver", "--config", server.config], server.dir)
        self.assertEqual(result.returncode, 1)
        self.assertIn("[paths] plugins", result.stderr)
        self.assertIn("is not a directory", result.stderr)

    def test_portInUse(self) -> None:
        import socket

        server = Server(self)
        with socket.socket() as s:
            s.bind(("127.0.0.1", server.port))
            s.listen()
            result = run_twistd(["-n", "pluginserver", "--config", server.config], server.dir)
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertIn(f"cannot listen on tcp:{server.port}:interface=127.0.0.1", output)
        self.assertIn("Address already in use", output)
        self.assertNotIn("Traceback", output)


class DeprecationTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_noDeprecatedAPIAtRuntime(self) -> Any:
        """
        With every DeprecationWarning an error, the server starts, serves,
        reloads and stops without one.
        """
        server = Server(self, environ={"PYTHONWARNINGS": "error::DeprecationWarning"})
        server.write_plugin("hello", HELLO)
        yield server.start()
        status, _ = yield server.get("/hello")
        self.assertEqual(status, 200)
        status, _ = yield server.get("/reload/all")
        self.assertEqual(status, 200)
        status, _ = yield server.get("/nowhere")
        self.assertEqual(status, 404)
        self.assertEqual((yield server.stop()), -signal.SIGTERM)
        self.assertNotIn("Warning", server.log())
        self.assertNotIn("Traceback", server.log())
