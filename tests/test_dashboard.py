# -*- test-case-name: tests.test_dashboard -*-
"""
Tests for the bundled dashboard (C{/dashboard/}, L{pluginserver.webui}).

How it is served (headers, ETag, the redirect of C{/}, C{[server]
dashboard}) is tested in memory.  What it does is tested in a real headless
Chromium (Debian's C{chromium} and C{chromium-driver}, through selenium)
against a real C{twistd pluginserver}: live data, reloads, errors, keys, bad
answers and markup in error texts.  Without the browser those tests are
skipped, except under CI (C{CI=true}), where a missing browser fails them:
.ci/run installs it.

Each browser test starts its own browser and stops it, and its server, by
PID; every wait is bounded.  C{DASHBOARD_SCREENSHOT=PATH} also writes the
1440 px screenshot of the live test there (how docs/dashboard.png is made).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import tempfile
import textwrap
import time
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from pluginserver import webui
from tests.helpers import HELLO, ServerCase
from tests.process import Server

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these the browser's own connections go out and are refused
    # by a closed network, which costs time and logs errors.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

WAIT = 15.0
"""The longest any browser wait lasts, seconds (data must come within 5)."""

# Records every CSP violation of the page, from before its first script.
CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""

NONE = "\N{EN DASH}"
"""What the page shows for a value it does not have yet."""

MARKUP = "<img src=x onerror=\"window.__pwned=1;document.title='pwned'\">"
"""An error text that would run script if the page inserted it as HTML."""


class DashboardServedTests(ServerCase):
    """
    The page and its files, served in memory.
    """

    @defer.inlineCallbacks
    def test_pageHeaders(self) -> Any:
        """
        C{/dashboard/} is the page, with the dashboard's strict CSP, the
        headers of every HTML answer, C{no-cache} and an C{ETag} that a
        second request answers 304.
        """
        yield self.serve()
        answer = yield self.server.request("GET", "/dashboard/")
        self.assertEqual(answer.status, 200)
        headers = answer.headers
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders("content-security-policy"), [webui.POLICY.decode()])
        self.assertEqual(headers.getRawHeaders("x-frame-options"), ["DENY"])
        self.assertEqual(headers.getRawHeaders("referrer-policy"), ["no-referrer"])
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-cache"])
        self.assertIn(b"dashboard.js", answer.body)
        [etag] = headers.getRawHeaders("etag")
        again = yield self.server.request("GET", "/dashboard/", headers={"if-none-match": etag})
        self.assertEqual(again.status, 304)
        self.assertEqual(again.body, b"")

    @defer.inlineCallbacks
    def test_assets(self) -> Any:
        """
        The script, the stylesheet and the vendored chart library are
        served under C{/dashboard/}, with their types; nothing outside it.
        """
        yield self.serve()
        for path, kind in [
            ("/dashboard/dashboard.js", "text/javascript; charset=utf-8"),
            ("/dashboard/dashboard.css", "text/css; charset=utf-8"),
            ("/dashboard/vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
            ("/dashboard/vendor/uPlot.min.css", "text/css; charset=utf-8"),
        ]:
            answer = yield self.server.request("GET", path)
            self.assertEqual(answer.status, 200, path)
            self.assertEqual(answer.headers.getRawHeaders("content-type"), [kind], path)
            self.assertTrue(answer.headers.getRawHeaders("etag"), path)
        for path in ["/dashboard/../pluginserver/webui.py", "/dashboard/%2e%2e/webui.py"]:
            answer = yield self.server.request("GET", path)
            self.assertEqual(answer.status, 404, path)

    @defer.inlineCallbacks
    def test_rootRedirects(self) -> Any:
        """
        C{/} and C{/dashboard} redirect (302) to C{/dashboard/}.
        """
        yield self.serve()
        for path in ("/", "/dashboard"):
            answer = yield self.server.request("GET", path)
            self.assertEqual(answer.status, 302, path)
            self.assertEqual(answer.headers.getRawHeaders("location"), ["/dashboard/"], path)

    @defer.inlineCallbacks
    def test_pageNeedsNoKey(self) -> Any:
        """
        With a global key, the page is served without one; its data is not.
        """
        yield self.serve(apikey="s3cret")
        answer = yield self.server.request("GET", "/dashboard/")
        self.assertEqual(answer.status, 200)
        answer = yield self.server.request("GET", "/")
        self.assertEqual(answer.status, 302)
        answer = yield self.server.request("GET", "/plugins")
        self.assertEqual(answer.status, 401)

    @defer.inlineCallbacks
    def test_off(self) -> Any:
        """
        C{[server] dashboard = bool:false} serves neither the page nor the
        redirect.
        """
        yield self.serve(dashboard=False)
        for path in ("/", "/dashboard/", "/dashboard/dashboard.js"):
            answer = yield self.server.request("GET", path)
            self.assertEqual(answer.status, 404, path)

    def test_noInlineCode(self) -> None:
        """
        The page has no inline script, inline style or event attribute
        (its CSP would refuse them), and loads nothing from elsewhere.
        """
        with open(os.path.join(webui.DIRECTORY, "index.html")) as f:
            page = f.read()
        for script in re.findall(r"<script\b[^>]*>", page):
            self.assertIn(" src=", script)
        self.assertNotIn("<style", page)
        self.assertIsNone(re.search(r"\sstyle=", page))
        self.assertIsNone(re.search(r"\son[a-z]+=", page))
        self.assertIsNone(re.search(r"(src|href)=\"(https?:)?//", page))
        with open(os.path.join(webui.DIRECTORY, "dashboard.js")) as f:
            script = f.read()
        # Nothing from the server is inserted as HTML.
        self.assertIsNone(
            re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)
        )

    def test_packageData(self) -> None:
        """
        Every file of the dashboard is package data in setup.py, so that
        C{pip install .} installs it.
        """
        with open(os.path.join(REPO, "setup.py")) as f:
            setup = f.read()
        patterns = re.findall(r'"(dashboard/[^"]*)"', setup)
        self.assertTrue(patterns)
        root = os.path.dirname(webui.DIRECTORY)
        for directory, _, files in os.walk(webui.DIRECTORY):
            for name in files:
                relative = os.path.relpath(os.path.join(directory, name), root)
                self.assertTrue(
                    any(fnmatch.fnmatch(relative, p) for p in patterns),
                    f"{relative} not in setup.py",
                )


# -- the browser --------------------------------------------------------------------


def _tool(name: str, *others: str) -> str | None:
    for candidate in (name, *others):
        found = shutil.which(candidate)
        if found is not None:
            return found
    return None


class Browser:
    """
    One headless Chromium, driven through chromium-driver, stopped by PID
    when the test ends.
    """

    def __init__(self, case: TestCase, width: int = 1440, height: int = 1000) -> None:
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError:
            _missing("selenium is not installed (pip install '.[test]')")
        chromium = _tool("chromium", "chromium-browser")
        driver = _tool("chromedriver", "chromium-driver")
        if chromium is None or driver is None:
            _missing("chromium and chromium-driver are not installed (apt-get install them)")
        profile = tempfile.mkdtemp(prefix="ps-chromium-")
        case.addCleanup(shutil.rmtree, profile, True)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # Given the driver's path, selenium does not look for one online.
        service = Service(driver)
        self.driver = webdriver.Chrome(options=options, service=service)
        self._pid = service.process.pid if service.process is not None else None
        case.addCleanup(self.quit)
        self.driver.set_page_load_timeout(WAIT)
        self.driver.set_script_timeout(WAIT)
        self.driver.set_window_size(width, height)
        self.driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument", {"source": CSP_RECORDER}
        )
        self.logs: list[dict[str, Any]] = []

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            if self._pid is not None:
                try:
                    os.kill(self._pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def wait(self, what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
        """
        Poll C{check} until it gives a true value (returned), for at most
        C{timeout} seconds; fail naming C{what} and showing the page's text.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = check()
            except Exception as e:  # a stale element while the page redraws
                last = e
            else:
                if last:
                    return last
            if time.monotonic() > deadline:
                body = self.js("return document.body.innerText")
                raise AssertionError(
                    f"{what}: not within {timeout} s (last: {last!r})\npage:\n{body[:3000]}"
                )
            time.sleep(0.1)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def text(self, selector: str) -> str:
        """
        The visible text of the first element C{selector} finds, or "".
        """
        found: str = self.js(
            "const e = document.querySelector(arguments[0]);"
            "return e && !e.closest('[hidden]') ? e.innerText : '';",
            selector,
        )
        return found

    def click(self, selector: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, selector).click()

    def samples(self) -> int:
        return int(self.js("return Number(document.body.dataset.samples || 0)"))

    def console(self) -> list[dict[str, Any]]:
        """
        Every console entry so far (the driver hands each one out once).
        """
        self.logs.extend(self.driver.get_log("browser"))
        return self.logs

    def errors(self, network: bool = False) -> list[str]:
        """
        The console's errors: script errors and CSP reports (with
        C{network}, failed requests too: a 401 or 500 the test caused is
        logged by the browser as one).
        """
        return [
            entry["message"]
            for entry in self.console()
            if entry["level"] == "SEVERE" and (network or entry.get("source") != "network")
        ]

    def violations(self) -> list[str]:
        found: list[str] = self.js("return window.__cspViolations || []")
        return found

    def screenshot(self, path: str) -> None:
        """
        Save the whole page, as tall as it is, to C{path}.
        """
        width = int(self.js("return window.innerWidth"))
        height = int(self.js("return document.documentElement.scrollHeight"))
        self.driver.set_window_size(width, min(max(height + 40, 800), 4000))
        time.sleep(0.5)  # the charts resize to the new window
        self.driver.save_screenshot(path)


def _missing(reason: str) -> NoReturn:
    """
    Skip a browser test whose browser is missing, or fail it under CI.
    """
    if os.environ.get("CI", "").lower() == "true":
        raise AssertionError(f"the dashboard's browser tests need a browser: {reason}")
    raise SkipTest(reason)


def systeminfo_source() -> str:
    with open(os.path.join(REPO, "plugins", "systeminfo.py")) as f:
        return f.read()


FAKE_SYSTEMINFO = """
import os, time
from pluginserver import HTTPError, Plugin, Response

MODE = os.path.join(os.path.dirname(__file__), "..", "mode")

class SystemInfo(Plugin):
    '''A systeminfo without a stream, answering as the file "mode" says.'''

    def handle(self, request):
        if request.subpath:
            raise HTTPError(404, "not found")
        with open(MODE) as f:
            mode = f.read().strip()
        if mode == "403":
            raise HTTPError(403, "forbidden")
        if mode == "500":
            raise HTTPError(503, "busy")
        if mode == "badjson":
            return Response('{"cpu": not json', content_type="application/json")
        if mode == "markup":
            raise HTTPError(500, MARKUP)
        now = time.time()
        memory = {"total": 2**30, "available": 2**29, "used": 2**29, "free": 2**29, "percent": 50.0}
        return {
            "cpu": {"model": "test cpu", "count": 1, "percent": 12.5, "per_cpu": {"cpu0": 12.5},
                    "freq_mhz": None, "loadavg": {"1m": 0.5, "5m": 0.4, "15m": 0.3}, "times": {}},
            "ram": memory, "swap": memory,
            "disk": [{"device": "/dev/test", "mount": "/", "fstype": "ext4", "total": 2**31,
                      "used": 2**30, "free": 2**30, "percent": 50.0}],
            "net": [{"iface": "test0", "addresses": ["10.0.0.1/8"], "is_up": True,
                     "bytes_sent": 1, "bytes_recv": 2, "tx_bps": 3.0, "rx_bps": 4.0}],
            "uptime": {"seconds": int(now), "boot_time": 0, "pretty": str(int(now))},
            "info": {"sysname": "Linux", "nodename": "fakehost", "release": "1", "version": "1",
                     "machine": "x"},
            "packages": {"manager": None, "installed": None, "upgradable": None,
                         "checked_at": None},
            "sampled_at": now,
        }
"""


class DashboardBrowserTests(TestCase):
    """
    The dashboard in a real headless Chromium against a real twistd.
    """

    timeout = 240

    def browser(self, width: int = 1440) -> Browser:
        return Browser(self, width)

    @defer.inlineCallbacks
    def test_liveDataAndReloads(self) -> Any:
        """
        With no key configured: C{/} leads to the page; the host's charts
        and tables fill with live data within 5 s and change with each
        sample; Reload shows the new generation, a broken file its error
        with file and line; a reload done elsewhere is followed, and the
        stream comes back after systeminfo's reload; markup in an error
        text is shown as text; the API tab lists the routes.  No console
        error, no CSP violation; a screenshot is saved.
        """
        server = Server(self)
        server.write_plugin("hello", HELLO)
        with open(os.path.join(server.plugins, "systeminfo.py"), "w") as f:
            f.write(systeminfo_source())
        server.write_config("[plugin_parms]\nsysteminfo = interval=float:0.5\n")
        yield server.start()
        browser = self.browser()
        started = time.monotonic()
        browser.driver.get(server.url + "/")
        self.assertRegex(browser.driver.current_url, r"/dashboard/(#host)?$")

        # Live data within 5 s.
        browser.wait("a sample", lambda: browser.samples() >= 2, timeout=5)
        browser.wait(
            "filesystems",
            lambda: browser.js("return document.querySelectorAll('#fs-table tbody tr').length"),
            timeout=5,
        )
        browser.wait(
            "interfaces",
            lambda: browser.js("return document.querySelectorAll('#net-table tbody tr').length"),
            timeout=5,
        )
        browser.wait(
            "charts",
            lambda: browser.js("return document.querySelectorAll('.chart canvas').length") == 2,
            timeout=5,
        )
        self.assertLess(time.monotonic() - started, 5.5)
        self.assertIn(" of ", browser.text("#ram-text"))
        self.assertNotEqual(browser.text("#uptime"), NONE)
        self.assertNotEqual(browser.text("#load-1m"), NONE)
        self.assertNotEqual(browser.text("#info-os"), NONE)
        self.assertEqual(browser.text("#live-state"), "live (stream)")
        # A value changes between two samples.
        first = browser.text("#sampled-at")
        browser.wait(
            "a new sample", lambda: browser.text("#sampled-at") not in ("", first), timeout=5
        )
        browser.wait(
            "package counts", lambda: browser.text("#pkg-checked") not in ("", "not yet", NONE)
        )
        screenshot = os.path.abspath(self.mktemp()) + ".png"
        browser.screenshot(screenshot)
        self.assertGreater(os.path.getsize(screenshot), 10000)
        wanted = os.environ.get("DASHBOARD_SCREENSHOT")
        if wanted:
            shutil.copyfile(screenshot, wanted)
        browser.driver.set_window_size(1440, 1000)

        # The plugins table, and Reload.
        browser.click("#tab-plugins")
        row = 'tr[data-plugin="{}"] '
        browser.wait(
            "the plugins table", lambda: browser.text(row.format("hello") + ".generation") == "1"
        )
        self.assertEqual(browser.text(row.format("systeminfo") + ".generation"), "1")
        browser.click(row.format("hello") + "button.reload")
        browser.wait(
            "hello's new generation",
            lambda: browser.text(row.format("hello") + ".generation") == "2",
        )
        browser.wait(
            "the outcome",
            lambda: "reloaded: generation 2" in browser.text(row.format("hello") + ".outcome"),
        )

        # A reload done elsewhere is followed; the stream comes back.
        status, body = yield server.request("POST", "/reload/systeminfo")
        self.assertEqual((status, body["generation"]), (200, 2))
        browser.wait(
            "systeminfo's generation",
            lambda: browser.text(row.format("systeminfo") + ".generation") == "2",
        )
        after = browser.samples()
        browser.wait("samples after the reload", lambda: browser.samples() >= after + 3)
        self.assertEqual(browser.text("#live-state"), "live (stream)")

        # A broken file: its error, with file and line; the old generation serves.
        server.write_plugin("hello", "def (\n")
        browser.click(row.format("hello") + "button.reload")
        outcome = browser.wait(
            "the reload error",
            lambda: (
                "SyntaxError" in browser.text(row.format("hello") + ".outcome")
                and browser.text(row.format("hello") + ".outcome")
            ),
        )
        self.assertIn("(hello.py, line 1)", outcome)
        self.assertEqual(browser.text(row.format("hello") + ".generation"), "2")

        # Markup in an error text is text: Reload all with a plugin whose
        # import fails with it.
        server.write_plugin("evil", f"raise RuntimeError({MARKUP!r})\n")
        browser.click("#reload-all")
        text = browser.wait(
            "reload all's outcome",
            lambda: (
                "evil failed" in browser.text("#reload-all-outcome")
                and browser.text("#reload-all-outcome")
            ),
        )
        self.assertIn(MARKUP, text)
        self.assertIn("(evil.py, line 1)", text)
        browser.wait("evil's row", lambda: MARKUP in browser.text(row.format("evil") + ".outcome"))
        self.assertIsNone(browser.js("return window.__pwned"))
        self.assertEqual(browser.js("return document.querySelectorAll('img').length"), 0)

        # The API tab: /openapi.json, or /plugins where there is none.
        browser.click("#tab-api")
        browser.wait("the API tab", lambda: "/hello" in browser.text("#api-list"))
        self.assertIn("curl", browser.text("#api-list"))

        self.assertEqual(browser.violations(), [])
        # The failed reloads' 500s are the only failed requests.
        self.assertEqual(browser.errors(), [])
        for message in browser.errors(network=True):
            self.assertRegex(message, r"/reload/\S+ .*500")
        yield server.stop()

    @defer.inlineCallbacks
    def test_key(self) -> Any:
        """
        With a key configured the page asks for it; a wrong one is said to
        be wrong, the right one loads the data and is kept in
        sessionStorage only.
        """
        server = Server(self)
        server.write_plugin("hello", HELLO)
        with open(os.path.join(server.plugins, "systeminfo.py"), "w") as f:
            f.write(systeminfo_source())
        server.write_config("[auth]\napikey = right-key\n")
        yield server.start(headers={"Authorization": "Bearer right-key"})
        browser = self.browser(390)
        browser.driver.get(server.url + "/dashboard/")
        browser.wait("the key prompt", lambda: "needs an API key" in browser.text("#key-message"))
        browser.driver.find_element("id", "key-input").send_keys("wrong-key")
        browser.click("#key-submit")
        browser.wait("the wrong key", lambda: "wrong" in browser.text("#key-message"))
        self.assertEqual(browser.samples(), 0)
        browser.driver.find_element("id", "key-input").send_keys("right-key")
        browser.click("#key-submit")
        browser.wait("data with the right key", lambda: browser.samples() >= 1, timeout=5)
        browser.click("#tab-plugins")
        browser.wait(
            "the plugins table", lambda: browser.text('tr[data-plugin="hello"] .generation') == "1"
        )
        self.assertEqual(browser.text("#key-message"), "")
        self.assertEqual(
            browser.js(
                "return [sessionStorage.getItem('pluginserver.apikey'), localStorage.length]"
            ),
            ["right-key", 0],
        )
        self.assertEqual(browser.violations(), [])
        self.assertEqual(browser.errors(), [])
        screenshot = os.path.abspath(self.mktemp()) + ".png"
        browser.screenshot(screenshot)
        yield server.stop()

    @defer.inlineCallbacks
    def test_badAnswers(self) -> Any:
        """
        A 403, a 5xx, malformed JSON, markup in an error and a dropped
        connection (the server stopped) each show a visible message, and
        the page keeps retrying: it polls a systeminfo without a stream,
        and comes back by itself when the server is started again.
        """
        server = Server(self)
        mode = os.path.join(server.dir, "mode")

        def answer(what: str) -> None:
            with open(mode, "w") as f:
                f.write(what)

        answer("ok")
        server.write_plugin(
            "systeminfo", f"MARKUP = {MARKUP!r}\n" + textwrap.dedent(FAKE_SYSTEMINFO)
        )
        yield server.start()
        browser = self.browser()
        browser.driver.get(server.url + "/dashboard/")
        browser.wait("polled data", lambda: browser.samples() >= 1, timeout=5)
        browser.wait("polling", lambda: browser.text("#live-state") == "live (polling)")
        message = "#live-message"
        for what, shown in [
            ("403", "403 forbidden"),
            ("500", "the server failed (503: busy)"),
            ("badjson", "not valid JSON"),
            ("markup", MARKUP),
        ]:
            answer(what)
            browser.wait(
                f"the message for {what}", lambda shown=shown: shown in browser.text(message)
            )
        self.assertIsNone(browser.js("return window.__pwned"))
        self.assertEqual(browser.js("return document.querySelectorAll('img').length"), 0)
        answer("ok")
        before = browser.samples()
        browser.wait("data again", lambda: browser.samples() > before and not browser.text(message))

        # A dropped connection: the server goes away, then comes back.
        yield server.stop()
        browser.wait(
            "the connection lost", lambda: "cannot reach the server" in browser.text(message)
        )
        before = browser.samples()
        yield server.start()
        browser.wait(
            "data after the restart",
            lambda: browser.samples() > before and not browser.text(message),
        )
        self.assertEqual(browser.violations(), [])
        self.assertEqual(browser.errors(), [])
        yield server.stop()
