"""
Tests for L{pluginserver.tap}: the command line, start-up validation,
C{--check}, C{--version} and C{--help}, in memory; and, with a real
process, an unknown key on SIGHUP.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import platform
import re
import signal
import sys
import textwrap
from typing import Any

import twisted
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pluginserver import tap, version
from pluginserver.config import Settings, load_settings
from tests.certs import make_certificate
from tests.process import Server, listening, run_twistd, sleep

HELLO = """
from pluginserver import Plugin

class Hello(Plugin):
    def handle(self, request):
        return {"hello": "world"}
"""

LOOPBACK = "tcp:0:interface=127.0.0.1"


class TapCase(SynchronousTestCase):
    """
    Each test has a directory holding ps.ini and a plugins directory.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.plugins = os.path.join(self.dir, "plugins")
        os.makedirs(self.plugins)
        self.config = os.path.join(self.dir, "ps.ini")
        self.write(f"[server]\nlisten = {LOOPBACK}\n")
        self.stdout = io.StringIO()
        self.patch(sys, "stdout", self.stdout)

    def write(self, ini: str) -> None:
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(ini))

    def writePlugin(self, name: str, source: str) -> None:
        with open(os.path.join(self.plugins, name + ".py"), "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(source))

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--config", self.config, *args])
        return options

    def exit(self, *args: str) -> SystemExit:
        """
        Parse options that must end the program; the exit.
        """
        return self.assertRaises(SystemExit, self.parse, *args)

    def failure(self, *args: str) -> str:
        """
        Parse options that must fail start-up: the one line it prints.
        """
        code = self.exit(*args).code
        self.assertIsInstance(code, str)
        assert isinstance(code, str)
        self.assertEqual(len(code.splitlines()), 1, code)
        self.assertTrue(code.startswith("pluginserver: "), code)
        return code

    def settings(self) -> Settings:
        return load_settings(self.config, {})


class StartupTests(TapCase):
    """
    postOptions: the settings, or one line and a non-zero exit.
    """

    def test_settings(self) -> None:
        options = self.parse()
        settings = options["settings"]
        self.assertIsInstance(settings, Settings)
        self.assertEqual(settings.listen, (LOOPBACK,))
        self.assertEqual(settings.plugins_dir, self.plugins)
        self.assertEqual(self.stdout.getvalue(), "")

    def test_overrides(self) -> None:
        other = os.path.join(self.dir, "other")
        os.makedirs(other)
        settings = self.parse("--listen", "tcp:0", "-l", "unix:ps.sock", "--plugins", other)[
            "settings"
        ]
        self.assertEqual(settings.listen[0], "tcp:0")
        self.assertEqual(settings.listen_origin, "--listen")
        self.assertEqual(settings.plugins_dir, other)

    def test_badValue(self) -> None:
        self.write("[server]\nmax_body = int:lots\n")
        self.assertEqual(
            self.failure(),
            f"pluginserver: {self.config}: [server] max_body: expected an integer, "
            "found 'int:lots'",
        )

    def test_unknownKey(self) -> None:
        self.write("[auth]\napi_key = x\n")
        self.assertEqual(
            self.failure(),
            f"pluginserver: {self.config}: [auth] api_key: unknown key (did you mean apikey?)",
        )

    def test_unknownKeyOnCheckToo(self) -> None:
        self.write("[auth]\napi_key = x\n")
        self.assertIn("[auth] api_key: unknown key", self.failure("--check"))
        self.assertEqual(self.stdout.getvalue(), "")

    def test_missingPluginsDirectory(self) -> None:
        os.rmdir(self.plugins)
        self.assertEqual(
            self.failure(),
            f"pluginserver: {self.config}: [paths] plugins: {self.plugins} is not a directory",
        )

    def test_missingPluginsDirectoryFromCommandLine(self) -> None:
        missing = os.path.join(self.dir, "nowhere")
        self.assertEqual(
            self.failure("--plugins", missing),
            f"pluginserver: --plugins: {missing} is not a directory",
        )

    def test_missingPluginsDirectoryNamesMisspeltSection(self) -> None:
        """
        [path] instead of [paths]: the default directory is missing, and the
        error says why it was not the one written.
        """
        os.rmdir(self.plugins)
        self.write("[path]\nplugins = ../plugins\n")
        self.assertEqual(
            self.failure(),
            f"pluginserver: {self.config}: [paths] plugins: {self.plugins} is not a directory "
            "(note: [path] looks like a misspelling of [paths])",
        )

    def test_badListenerInFile(self) -> None:
        self.write("[server]\nlisten = tcp:0:interface=127.0.0.1 ssl:0:privateKey=absent.key\n")
        self.assertEqual(
            self.failure(),
            f"pluginserver: {self.config}: [server] listen: ssl:0:privateKey="
            f"{self.dir}/absent.key: No such file or directory: {self.dir}/absent.key",
        )

    def test_badListenerOnCommandLine(self) -> None:
        line = self.failure("--listen", "tcp:notaport")
        self.assertTrue(line.startswith("pluginserver: --listen: tcp:notaport: "), line)

    def test_pluginsDirectoryFirst(self) -> None:
        os.rmdir(self.plugins)
        self.write("[server]\nlisten = tcp:notaport\n")
        self.assertIn("[paths] plugins", self.failure())

    def test_warningsDoNotStopStartUp(self) -> None:
        self.write("[server]\nlisten = tcp:0\n[sever]\nx = 1\n")
        settings = self.parse()["settings"]
        self.assertEqual(len(settings.warnings), 2)
        self.assertEqual(self.stdout.getvalue(), "")


class ValidateTests(TapCase):
    """
    The one validation start-up and --check share.
    """

    def test_allGood(self) -> None:
        from twisted.internet import reactor

        validation = tap.validate(self.settings(), reactor)
        self.assertEqual(validation.problems(), [])
        self.assertEqual(validation.listeners, (tap.ListenerCheck(LOOPBACK, None, False),))
        self.assertIsNone(validation.plugins_problem)

    def test_everyProblem(self) -> None:
        from twisted.internet import reactor

        os.rmdir(self.plugins)
        self.write("[server]\nlisten = tcp:notaport tcp:0 tcp:alsobad\n")
        problems = tap.validate(self.settings(), reactor).problems()
        self.assertEqual(len(problems), 3, problems)
        self.assertIn("[paths] plugins", problems[0])
        self.assertIn("tcp:notaport: ", problems[1])
        self.assertIn("tcp:alsobad: ", problems[2])


class CheckTests(TapCase):
    """
    C{--check}: the report and the exit status.
    """

    def check(self) -> tuple[int, list[str]]:
        out = io.StringIO()
        status = tap.check(self.settings(), out)
        return status, out.getvalue().splitlines()

    def test_ok(self) -> None:
        self.writePlugin("hello", HELLO)
        status, lines = self.check()
        self.assertEqual(
            lines,
            [
                f"config {self.config}: ok",
                f"listener {LOOPBACK}: ok (plain)",
                f"plugins directory {self.plugins}: ok",
                "plugin hello: ok (/hello, auth=global)",
                "OK",
            ],
        )
        self.assertEqual(status, 0)

    def test_tlsListener(self) -> None:
        key, cert, _ = make_certificate(self.dir)
        self.write(
            f"[server]\nlisten = ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}\n"
        )
        status, lines = self.check()
        self.assertEqual(status, 0)
        self.assertIn(
            f"listener ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}: ok (TLS)", lines
        )

    def test_failed(self) -> None:
        self.writePlugin("hello", HELLO)
        self.writePlugin("bad", "def (\n")
        self.write(
            f"[server]\nlisten = {LOOPBACK} ssl:0:interface=127.0.0.1:privateKey=absent.key\n"
        )
        status, lines = self.check()
        self.assertEqual(status, 1)
        self.assertEqual(
            lines,
            [
                f"config {self.config}: ok",
                f"listener {LOOPBACK}: ok (plain)",
                f"listener ssl:0:interface=127.0.0.1:privateKey={self.dir}/absent.key: FAILED: "
                f"No such file or directory: {self.dir}/absent.key",
                f"plugins directory {self.plugins}: ok",
                "plugin bad: FAILED: SyntaxError: invalid syntax (bad.py, line 1)",
                "plugin hello: ok (/hello, auth=global)",
                "2 problem(s)",
            ],
        )

    def test_missingPluginsDirectory(self) -> None:
        os.rmdir(self.plugins)
        self.write(f"[server]\nlisten = {LOOPBACK}\n[path]\nplugins = ../p\n")
        status, lines = self.check()
        self.assertEqual(status, 1)
        self.assertEqual(
            lines,
            [
                f"config {self.config}: ok",
                f"listener {LOOPBACK}: ok (plain)",
                f"plugins directory {self.plugins}: FAILED: not a directory "
                "(note: [path] looks like a misspelling of [paths])",
                f"warning: {self.config}: [path]: unknown section (did you mean [paths]?)",
                "1 problem(s), 1 warning(s)",
            ],
        )

    def test_warningsAloneExitZero(self) -> None:
        self.writePlugin("hello", HELLO)
        self.write(
            "[server]\nlisten = tcp:0\nallowed_hosts = list:localhost 127.0.0.1 [::1]\n[Server]\n"
        )
        status, lines = self.check()
        self.assertEqual(status, 0)
        self.assertEqual(
            [line for line in lines if line.startswith("warning: ")],
            [
                f"warning: {self.config}: [Server]: unknown section (did you mean [server]?)",
                f"warning: {self.config}: [server] listen: tcp:0: listens on all interfaces, "
                "but [server] allowed_hosts admits loopback names only: clients from "
                "elsewhere get 400 (host not allowed)",
                f"warning: {self.config}: [server] listen: tcp:0: listens on all interfaces "
                "and [auth] apikey is empty: whoever reaches it may call the utility routes "
                "and every plugin whose auth is global without a key",
            ],
        )
        self.assertEqual(lines[-1], "OK, 3 warning(s)")
        self.assertEqual(lines[-5], "plugin hello: ok (/hello, auth=global)")

    def test_noWarningForLocalListeners(self) -> None:
        self.write(
            f"[server]\nlisten = {LOOPBACK} unix:ps.sock systemd:domain=INET:index=0\n"
            "allowed_hosts = localhost\n"
        )
        _, lines = self.check()
        self.assertEqual([line for line in lines if line.startswith("warning")], [])

    def test_throughOptions(self) -> None:
        """
        C{--check} on the command line prints the report on standard output
        and exits with its status.
        """
        self.writePlugin("hello", HELLO)
        self.assertEqual(self.exit("--check").code, 0)
        self.assertEqual(self.stdout.getvalue().splitlines()[-1], "OK")

    def test_throughOptionsFailed(self) -> None:
        """
        A problem start-up would stop on is a FAILED line under --check, and
        exit status 1.
        """
        self.assertEqual(
            self.exit("--check", "--listen", "tcp:notaport:interface=127.0.0.1").code, 1
        )
        out = self.stdout.getvalue()
        self.assertIn("listener tcp:notaport:interface=127.0.0.1: FAILED: ValueError: ", out)
        self.assertTrue(out.endswith("1 problem(s)\n"), out)

    def test_throughOptionsPluginsOverride(self) -> None:
        missing = os.path.join(self.dir, "nowhere")
        self.assertEqual(self.exit("--check", "--plugins", missing).code, 1)
        self.assertIn(
            f"plugins directory {missing}: FAILED: not a directory\n", self.stdout.getvalue()
        )


class VersionTests(TapCase):
    def test_version(self) -> None:
        self.assertEqual(self.exit("--version").code, 0)
        self.assertEqual(
            self.stdout.getvalue(),
            f"pluginserver {importlib.metadata.version('pluginserver')} "
            f"(Twisted {twisted.__version__}, Python {platform.python_version()})\n",
        )

    def test_versionIsTheDistributions(self) -> None:
        self.assertEqual(version.version(), importlib.metadata.version("pluginserver"))

    def test_notInstalled(self) -> None:
        def missing(name: str) -> str:
            raise importlib.metadata.PackageNotFoundError(name)

        self.patch(version, "distribution_version", missing)
        self.assertEqual(version.version(), "unknown")
        self.assertTrue(tap.version_line().startswith("pluginserver unknown (Twisted "))


class HelpTests(TapCase):
    def help(self) -> str:
        return str(tap.Options())

    def test_helpExits(self) -> None:
        self.assertEqual(self.exit("--help").code, 0)
        self.assertEqual(self.stdout.getvalue(), self.help() + "\n")

    def test_synopsis(self) -> None:
        first = self.help().splitlines()[0]
        self.assertEqual(
            first,
            "[--config FILE] [--listen ENDPOINT ...] [--plugins DIR] [--workers N] [--check]",
        )

    def test_everyOption(self) -> None:
        text = self.help()
        for option in (
            "-c, --config=",
            "--check",
            "-l, --listen=",
            "-p, --plugins=",
            "-w, --workers=",
            "--version",
        ):
            self.assertIn(option, text)
        self.assertIn("[default: etc/ps.ini]", text)
        self.assertIn("Print pluginserver's version", text)
        self.assertIn("docs/configuration.md", text)

    def test_wrappedAsParagraphs(self) -> None:
        """
        The option texts are wrapped paragraphs: no run of spaces inside a
        sentence (a docstring's indentation would leave them), and no line
        wider than 80 columns.
        """
        options = self.help().split("Options:\n", 1)[1].split("\n\n", 1)[0]
        column = options.splitlines()[0].index("The configuration file")
        for line in options.splitlines():
            self.assertLessEqual(len(line), 80, line)
            self.assertIsNone(re.search(r"\S {2,}\S", line[column:]), line)
        self.assertIn("tcp:8080:interface=127.0.0.1 or", options)
        self.assertNotIn("\n", tap.Options.opt_listen.__doc__ or "\n")


class UnknownKeyProcessTests(TestCase):
    """
    A real twistd: an unknown key stops start-up, and on SIGHUP keeps the
    old settings serving.
    """

    timeout = 60

    def test_startUp(self) -> None:
        server = Server(self, ini="[auth]\napi_key = x\n")
        result = run_twistd(["-n", "pluginserver", "--config", server.config], server.dir)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.strip().splitlines(),
            [f"pluginserver: {server.config}: [auth] api_key: unknown key (did you mean apikey?)"],
        )
        self.assertFalse(listening(server.port))

    @defer.inlineCallbacks
    def test_sighupKeepsTheOldSettings(self) -> Any:
        server = Server(self)
        server.write_plugin("hello", HELLO)
        yield server.start()
        pid = server.pid()
        line = f"{server.config}: [auth] api_key: unknown key (did you mean apikey?)"
        # Were this file read, /hello would need the key.
        server.write_config("[auth]\napikey = secret\napi_key = secret\n")
        server.signal(signal.SIGHUP)
        for _ in range(200):
            if line in server.log():
                break
            yield sleep(0.05)
        self.assertEqual(server.log().count(line), 1, server.log())
        status, body = yield server.get("/hello")
        self.assertEqual((status, body), (200, {"hello": "world"}))
        self.assertEqual(server.pid(), pid)
        # /reload/all reports it too, and still serves with the old settings.
        status, body = yield server.get("/reload/all")
        self.assertEqual((status, body["failed"]), (500, {"config": line}))
        status, body = yield server.get("/hello")
        self.assertEqual((status, body), (200, {"hello": "world"}))
