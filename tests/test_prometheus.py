# -*- test-case-name: tests.test_prometheus -*-
"""
A real Prometheus (Debian's C{prometheus} package) scraping a real server
over TLS with a key, configured with the very files docs/operations.md
shows ("Watching a fleet"), and C{promtool} checking those files.

The tests install nothing: .ci/run makes sure the package is there.  On a
developer machine without it they are skipped, saying so; under CI
(C{CI=true}) a missing binary fails them, so that CI cannot go green
without running them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any
from urllib.parse import urlencode

import psutil
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from pluginserver.metrics import Metrics
from tests.certs import make_certificate
from tests.process import Server, free_port, sleep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPERATIONS = os.path.join(ROOT, "docs", "operations.md")
SYSTEMINFO = os.path.join(ROOT, "plugins", "systeminfo.py")

KEY = "prometheus-scrapes-with-this-key"
TLS_LISTEN = "ssl:{port}:interface=127.0.0.1:privateKey=server.key:certKey=server.crt"
SCRAPES_TIMEOUT = 60.0
"""Seconds Prometheus gets to start and scrape both jobs twice."""

ALERTS = {"HostDown", "DiskAlmostFull", "PluginReloadFailing"}


def need(program: str) -> str:
    """
    The path of C{program}; a skip saying why when it is missing, or a
    failure under CI (C{CI=true}), where it must be there.
    """
    path = shutil.which(program)
    if path is not None:
        return path
    reason = (
        f"{program} is not installed (Debian: apt-get install --no-install-recommends "
        "prometheus; .ci/run installs it)"
    )
    if os.environ.get("CI", "").lower() == "true":
        raise AssertionError(f"{reason}, and CI=true: CI must run this test")
    raise SkipTest(reason)


def doc_blocks() -> dict[str, str]:
    """
    The fenced blocks of docs/operations.md marked
    C{<!-- prometheus: NAME -->}, by NAME.
    """
    with open(OPERATIONS, encoding="utf-8") as f:
        text = f.read()
    return {
        name: body
        for name, body in re.findall(
            r"<!-- prometheus: (\w+) -->\n```\w*\n(.*?)\n```", text, flags=re.DOTALL
        )
    }


def write(path: str, text: str, mode: int = 0o644) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def configure(directory: str, pem: bytes, targets: list[str], interval: str = "15s") -> str:
    """
    Write the configuration of docs/operations.md into C{directory}, with
    its files (key, CA, rules, targets) where it says /etc/prometheus/ and
    the scrape and evaluation intervals made C{interval}; give back the
    path of prometheus.yml.
    """
    blocks = doc_blocks()
    config = blocks["config"]
    for key in ("scrape_interval", "evaluation_interval"):
        config, found = re.subn(rf"{key}: 15s", f"{key}: {interval}", config)
        assert found == 1, key
    config = config.replace("/etc/prometheus/", directory + "/")
    write(os.path.join(directory, "pluginserver.key"), KEY + "\n", 0o600)
    write(os.path.join(directory, "internal-ca.pem"), pem.decode("ascii"))
    write(os.path.join(directory, "pluginserver-rules.yml"), blocks["rules"])
    documented = json.loads(blocks["targets"])
    documented[0]["targets"] = targets
    write(os.path.join(directory, "targets", "pluginserver-test.json"), json.dumps(documented))
    return write(os.path.join(directory, "prometheus.yml"), config)


class DocumentedFilesTests(TestCase):
    """
    promtool accepts the rules and the configuration the docs show.
    """

    timeout = 60

    def setUp(self) -> None:
        self.promtool = need("promtool")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def promtool_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.promtool, *args],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )

    def test_rules(self) -> None:
        """
        The alert rules example is valid: three rules, templates included.
        """
        path = write(os.path.join(self.dir, "rules.yml"), doc_blocks()["rules"])
        done = self.promtool_run("check", "rules", path)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("SUCCESS: 3 rules found", done.stdout)
        found = set(re.findall(r"alert: (\w+)", doc_blocks()["rules"]))
        self.assertEqual(found, ALERTS)

    def test_config(self) -> None:
        """
        The scrape configuration is valid, with the rules it names.
        """
        _, _, pem = make_certificate(self.dir)
        path = configure(self.dir, pem, ["host1.example.net:8443"])
        done = self.promtool_run("check", "config", path)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("SUCCESS: 3 rules found", done.stdout)


class Prometheus:
    """
    One Prometheus process on 127.0.0.1 with its own temporary storage,
    stopped by PID when the test ends.
    """

    def __init__(self, case: TestCase, binary: str, config: str, directory: str) -> None:
        self.case = case
        self.port = free_port()
        self.log = os.path.join(directory, "prometheus.log")
        out = open(self.log, "wb")  # noqa: SIM115 - closed by the cleanup
        case.addCleanup(out.close)
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={os.path.join(directory, 'data')}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        case.addCleanup(self.kill)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        case.addCleanup(self.pool.closeCachedConnections)

    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-4000:]

    @defer.inlineCallbacks
    def api(self, path: str, **params: str) -> Any:
        """
        GET /api/v1/PATH: the C{data} of a successful answer.
        """
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urlencode(params)
        response = yield treq.get(url, pool=self.pool, timeout=10)
        body = yield response.json()
        assert body["status"] == "success", body
        return body["data"]

    @defer.inlineCallbacks
    def query(self, expr: str) -> Any:
        """
        An instant query: its result vector.
        """
        data = yield self.api("query", query=expr)
        return data["result"]

    @defer.inlineCallbacks
    def stop(self, timeout: float = 15.0) -> Any:
        """
        SIGTERM by PID and wait for it to end; fire with its exit status.
        """
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not stop in {timeout} s:\n{self.output()}")
            yield sleep(0.1)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class RealPrometheusTests(TestCase):
    """
    A real Prometheus scrapes a real server (TLS, a global key) with the
    documented configuration.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_scrapesTheServer(self) -> Any:
        binary = need("prometheus")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        _, _, pem = make_certificate(directory)
        server = Server(
            self,
            listen=TLS_LISTEN,
            trust=pem,
            ini=f"""
            [auth]
            apikey = {KEY}
            [plugin_parms]
            systeminfo = interval=float:0.5&packages_interval=float:0
            """,
        )
        for name in ("server.key", "server.crt"):
            shutil.copy(os.path.join(directory, name), server.dir)
        shutil.copy(SYSTEMINFO, server.plugins)
        yield server.start(headers={"Authorization": f"Bearer {KEY}"})
        instance = f"localhost:{server.port}"
        config = configure(directory, pem, [instance], interval="1s")
        prometheus = Prometheus(self, binary, config, directory)
        at = f'instance="{instance}"'

        # Bounded: both jobs scraped at least twice, or fail saying why.
        deadline = time.monotonic() + SCRAPES_TIMEOUT
        scrapes: dict[str, float] = {}
        while True:
            if prometheus.process.poll() is not None:
                self.fail(
                    f"prometheus exited {prometheus.process.returncode}:\n{prometheus.output()}"
                )
            try:
                counted = yield prometheus.query(f"count_over_time(up{{{at}}}[5m])")
                scrapes = {r["metric"]["job"]: float(r["value"][1]) for r in counted}
            except Exception:
                pass  # not listening yet
            if set(scrapes) == {"node", "pluginserver"} and min(scrapes.values()) >= 2:
                break
            if time.monotonic() > deadline:
                targets = yield prometheus.api("targets")
                self.fail(
                    f"not two scrapes of each job in {SCRAPES_TIMEOUT} s: {scrapes}\n"
                    f"targets: {json.dumps(targets)[:2000]}\n{prometheus.output()}"
                )
            yield sleep(0.5)

        up = yield prometheus.query(f"up{{{at}}}")
        targets = yield prometheus.api("targets")
        self.assertEqual(
            {r["metric"]["job"]: r["value"][1] for r in up},
            {"node": "1", "pluginserver": "1"},
            json.dumps(targets)[:2000],
        )
        memory = yield prometheus.query(f"node_memory_MemTotal_bytes{{{at}}}")
        self.assertEqual(len(memory), 1, memory)
        self.assertEqual(float(memory[0]["value"][1]), psutil.virtual_memory().total)
        self.assertEqual(memory[0]["metric"]["job"], "node")
        cpu = yield prometheus.query(f"node_cpu_seconds_total{{{at}}}")
        self.assertEqual(
            {r["metric"]["cpu"] for r in cpu}, {str(i) for i in range(psutil.cpu_count())}
        )
        self.assertIn("idle", {r["metric"]["mode"] for r in cpu})
        requests = yield prometheus.query(f"pluginserver_requests_total{{{at}}}")
        self.assertTrue(requests)
        self.assertEqual({r["metric"]["job"] for r in requests}, {"pluginserver"})
        # The node job's own scrapes, counted by the server.
        routes = {(r["metric"]["route"], r["metric"]["status"]) for r in requests}
        self.assertIn(("systeminfo", "200"), routes)
        # The documented rules are loaded and sound (none in error).
        rules = yield prometheus.api("rules")
        loaded = {
            rule["name"]: rule["health"] for group in rules["groups"] for rule in group["rules"]
        }
        self.assertEqual(set(loaded), ALERTS)

        status = yield prometheus.stop()
        self.assertEqual(status, 0, prometheus.output())
        yield server.stop()


class ReloadFailureSeriesTests(SynchronousTestCase):
    """
    The series the PluginReloadFailing rule reads exists, at 0, from a
    plugin's first load on: Prometheus's increase() sees no increase in a
    series' first sample, so a series born at its first failure would
    never fire the alert.
    """

    def reloads(self, metrics: Metrics) -> dict[tuple[str, str], float]:
        return {
            (s.labels["plugin"], s.labels["result"]): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples
            if s.name == "pluginserver_plugin_reloads_total"
        }

    def test_bothSeriesFromTheFirstLoad(self) -> None:
        metrics = Metrics(lambda: {})
        metrics.reload_outcome("hello", True)
        self.assertEqual(self.reloads(metrics), {("hello", "success"): 1, ("hello", "failure"): 0})
        metrics.reload_outcome("hello", False)
        metrics.reload_outcome("broken", False)
        self.assertEqual(
            self.reloads(metrics),
            {
                ("hello", "success"): 1,
                ("hello", "failure"): 1,
                ("broken", "success"): 0,
                ("broken", "failure"): 1,
            },
        )
