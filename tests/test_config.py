"""
Tests for L{pluginserver.config}: INI files in, L{Settings} or
L{ConfigError} out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from ipaddress import ip_network
from typing import Any

import attr
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pluginserver.config import (
    KEYS,
    KNOWN_SECTIONS,
    OWNED_SECTIONS,
    ConfigError,
    Settings,
    known_key,
    listener_exposure,
    load_settings,
    misspelt_sections,
    parse_value,
    resolve_endpoint_paths,
)
from pluginserver.keys import KeySet

TRUE_WORDS = ["true", "yes", "on", "1", "enable", "enabled"]
FALSE_WORDS = ["false", "no", "off", "0", "disable", "disabled"]

DESIGN_EXAMPLE = """\
[server]
listen = tcp:8080:interface=127.0.0.1
         ssl:8443:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem
; bytes; larger request bodies get 413
max_body = int:1048576
; seconds; a handler still running gets 504
request_timeout = float:30
; seconds before an idle connection is closed
idle_timeout = int:60
shutdown_timeout = float:10
; absent = any Host header
allowed_hosts = list:localhost 127.0.0.1

[paths]
plugins = ../plugins

[auth]
; empty or absent = no global key
apikey = ${ENV:PS_APIKEY:-}
; accept ?apikey= in the URL (insecure; off by default)
allow_query_key = bool:false

; per-plugin parameters, query-string syntax
[plugin_parms]
systeminfo = auth=global&interval=float:1
secret = auth=plugin&apikey=s3cret
public = auth=none

[cors]
enabled = bool:true
; or * for any
origin_url = list:https://a.example https://b.example

[access]
; absent = everyone
allow = list:127.0.0.0/8 ::1 10.0.0.0/8
; X-Forwarded-For honoured only from these
trusted_proxies = list:127.0.0.1
"""

# The old aiohttp pluginserver's style: [network]/[SSL], auth_type, json=.
OLD_SERVER_STYLE = """\
[network]
bindto = 0.0.0.0
port = int:8443

[SSL]
enabled = bool:true
keyfile = ssl/server.key
certfile = ssl/server.crt

[cors]
enabled = bool:true
origin_url = list:https://dash.example.org

[plugin_parms]
systeminfo = auth_type=global&json=systeminfo.json
"""


class ConfigTestCase(SynchronousTestCase):
    """
    Each test writes an INI file into its own directory and loads it.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write(self, text: str, name: str = "ps.ini") -> str:
        """
        Write C{text} to C{name} in the test directory; return its path.
        """
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def load(self, text: str, environ: Mapping[str, str] | None = None) -> Settings:
        """
        Load C{text} as a config file with a controlled environment.
        """
        return load_settings(self.write(text), {} if environ is None else environ)

    def loadError(self, text: str, environ: Mapping[str, str] | None = None) -> ConfigError:
        """
        Load C{text}, which must fail; the error must name the file.
        """
        path = self.write(text)
        error = self.assertRaises(
            ConfigError, load_settings, path, {} if environ is None else environ
        )
        self.assertIn(path, str(error))
        self.assertEqual(error.path, path)
        return error

    def assertErrorAt(self, error: ConfigError, section: str | None, key: str | None) -> None:
        self.assertEqual((error.section, error.key), (section, key), str(error))

    def inDir(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)


class ConfigErrorTests(SynchronousTestCase):
    def test_strFull(self) -> None:
        error = ConfigError("/etc/ps.ini", "server", "max_body", "expected x")
        self.assertEqual(str(error), "/etc/ps.ini: [server] max_body: expected x")
        self.assertEqual(
            (error.path, error.section, error.key, error.message),
            ("/etc/ps.ini", "server", "max_body", "expected x"),
        )

    def test_strWithoutKey(self) -> None:
        error = ConfigError("/etc/ps.ini", "SSL", None, "broken")
        self.assertEqual(str(error), "/etc/ps.ini: [SSL] broken")

    def test_strWithoutSection(self) -> None:
        error = ConfigError("/etc/ps.ini", None, None, "cannot read")
        self.assertEqual(str(error), "/etc/ps.ini: cannot read")


class ParseValueTests(SynchronousTestCase):
    def test_prefixes(self) -> None:
        self.assertEqual(parse_value("int:8080"), 8080)
        self.assertEqual(parse_value("float:0.5"), 0.5)
        self.assertIs(parse_value("bool:true"), True)
        self.assertEqual(parse_value("list:a b c"), ["a", "b", "c"])

    def test_noPrefixIsString(self) -> None:
        for raw in ["8080", "tcp:8080", "", "hello world", "INT:5"]:
            self.assertEqual(parse_value(raw), raw)

    def test_floatAcceptsInteger(self) -> None:
        value = parse_value("float:30")
        self.assertEqual((value, type(value)), (30.0, float))

    def test_boolWords(self) -> None:
        for word in TRUE_WORDS:
            self.assertIs(parse_value(f"bool:{word.upper()}"), True)
        for word in FALSE_WORDS:
            self.assertIs(parse_value(f"bool:{word.title()}"), False)

    def test_listSplitsOnNewlinesAndConvertsItems(self) -> None:
        self.assertEqual(
            parse_value("list:int:1 int:2\n  float:0.5 bool:no x"),
            [1, 2, 0.5, False, "x"],
        )
        self.assertEqual(parse_value("list:"), [])

    def test_badValues(self) -> None:
        for raw, expected in [
            ("int:abc", "expected an integer"),
            ("int:1.5", "expected an integer"),
            ("float:fast", "expected a number"),
            ("bool:maybe", "expected a boolean"),
            ("list:int:1 int:x", "expected an integer"),
        ]:
            error = self.assertRaises(ValueError, parse_value, raw)
            self.assertIn(expected, str(error))
            self.assertIn(repr(raw.split()[-1]), str(error))

    @hypothesis_settings(max_examples=50, deadline=None, database=None)
    @given(st.integers())
    def test_intRoundTrip(self, number: int) -> None:
        self.assertEqual(parse_value(f"int:{number}"), number)

    @hypothesis_settings(max_examples=50, deadline=None, database=None)
    @given(st.floats(allow_nan=False))
    def test_floatRoundTrip(self, number: float) -> None:
        self.assertEqual(parse_value(f"float:{number!r}"), number)

    @hypothesis_settings(max_examples=50, deadline=None, database=None)
    @given(
        st.sampled_from(TRUE_WORDS + FALSE_WORDS).flatmap(
            lambda word: st.tuples(
                st.just(word),
                st.lists(st.booleans(), min_size=len(word), max_size=len(word)),
            )
        )
    )
    def test_boolRoundTrip(self, case: Any) -> None:
        word, upper = case
        mixed = "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True))
        self.assertIs(parse_value(f"bool:{mixed}"), word in TRUE_WORDS)


class FileTests(ConfigTestCase):
    def test_missingFile(self) -> None:
        path = self.inDir("absent.ini")
        error = self.assertRaises(ConfigError, load_settings, path, {})
        self.assertErrorAt(error, None, None)
        self.assertIn(path, str(error))

    def test_directoryIsUnreadable(self) -> None:
        error = self.assertRaises(ConfigError, load_settings, self.dir, {})
        self.assertIn(self.dir, str(error))

    def test_syntaxErrorNamesLine(self) -> None:
        error = self.loadError("[server]\nmax_body = 1\nthis line is junk\n")
        self.assertIn("line 3", str(error))

    def test_textBeforeFirstSection(self) -> None:
        error = self.loadError("max_body = 1\n")
        self.assertIn("line 1", str(error))

    def test_duplicateKey(self) -> None:
        error = self.loadError("[server]\nthreads = 1\nTHREADS = 2\n")
        self.assertErrorAt(error, "server", "threads")
        self.assertIn("line 3", str(error))

    def test_notUTF8(self) -> None:
        path = self.inDir("latin1.ini")
        with open(path, "wb") as f:
            f.write(b"[x]\nname = caf\xe9\n")
        error = self.assertRaises(ConfigError, load_settings, path, {})
        self.assertIn(path, str(error))

    def test_pathIsAbsolute(self) -> None:
        self.write("[server]\n")
        cwd = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, cwd)
        self.assertEqual(load_settings("ps.ini", {}).path, self.inDir("ps.ini"))

    def test_wholeLineCommentsOnly(self) -> None:
        settings = self.load(
            "# comment\n; comment\n[extra]\nurl = http://x/#frag ; not a comment\n"
        )
        self.assertEqual(settings.sections["extra"]["url"], "http://x/#frag ; not a comment")

    def test_inlineCommentIsPartOfValue(self) -> None:
        error = self.loadError("[server]\nmax_body = 10 ; bytes\n")
        self.assertErrorAt(error, "server", "max_body")

    def test_keysAreCaseInsensitive(self) -> None:
        self.assertEqual(self.load("[server]\nMax_Body = int:10\n").max_body, 10)

    def test_multiLineValue(self) -> None:
        settings = self.load("[extra]\nitems = list:a\n  b\n  int:3\n")
        self.assertEqual(settings.sections["extra"]["items"], ["a", "b", 3])

    def test_defaults(self) -> None:
        settings = self.load("")
        self.assertEqual(settings.listen, ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(settings.plugins_dir, self.inDir("plugins"))
        self.assertEqual(
            settings,
            Settings(
                path=self.inDir("ps.ini"),
                listen=settings.listen,
                listen_origin=settings.listen_origin,
                plugins_dir=settings.plugins_dir,
            ),
        )

    def test_unknownSectionsAndKeysAreKeptTyped(self) -> None:
        # [server] is the server's own: an unknown key there is an error
        # (UnknownKeyTests); [paths] and other sections are free.
        settings = self.load("[paths]\ncolour = blue\n[mine]\nlimit = int:5\nnames = list:a b\n")
        self.assertEqual(settings.sections["paths"]["colour"], "blue")
        self.assertEqual(dict(settings.sections["mine"]), {"limit": 5, "names": ["a", "b"]})

    def test_badValueInUnknownSection(self) -> None:
        error = self.loadError("[mine]\nlimit = int:abc\n")
        self.assertErrorAt(error, "mine", "limit")
        self.assertIn("expected an integer, found 'int:abc'", str(error))

    def test_sectionsAreReadOnly(self) -> None:
        settings = self.load("[mine]\nx = 1\n")
        with self.assertRaises(TypeError):
            settings.sections["mine"]["x"] = "2"  # type: ignore[index]
        with self.assertRaises(TypeError):
            settings.sections["other"] = {}  # type: ignore[index]

    def test_settingsAreFrozen(self) -> None:
        import attr

        settings = self.load("")
        with self.assertRaises(attr.exceptions.FrozenInstanceError):
            settings.max_body = 1  # type: ignore[misc]

    def test_reprHidesKeys(self) -> None:
        settings = self.load(
            "[auth]\napikey = topsecret\n[plugin_parms]\np = auth=plugin&apikey=hidden\n"
        )
        self.assertEqual(settings.apikey, KeySet.of("topsecret"))
        self.assertNotIn("topsecret", repr(settings))
        self.assertNotIn("hidden", repr(settings))
        hash(settings)  # usable as a dict key despite its mappings

    @hypothesis_settings(max_examples=100, deadline=None, database=None)
    @given(st.text(st.characters(codec="utf-8")))
    def test_arbitraryMaxBody(self, text: str) -> None:
        """
        Whatever is written as max_body, loading gives Settings or a
        ConfigError, never another exception.
        """
        path = self.write(f"[server]\nmax_body = {text}\n", name="fuzz.ini")
        try:
            settings = load_settings(path, {})
        except ConfigError as e:
            self.assertIn(path, str(e))
        else:
            self.assertIsInstance(settings.max_body, int)


class InterpolationTests(ConfigTestCase):
    def test_sectionReference(self) -> None:
        settings = self.load("[a]\nx = int:${b:y}\n[b]\ny = 4${c:z}\n[c]\nz = 2\n")
        self.assertEqual(settings.sections["a"]["x"], 42)

    def test_sameSectionReference(self) -> None:
        settings = self.load("[a]\nbase = /srv\nlog = ${base}/log\n")
        self.assertEqual(settings.sections["a"]["log"], "/srv/log")

    def test_referenceIsRawValue(self) -> None:
        settings = self.load("[a]\nn = int:5\n[b]\ncopy = ${a:n}\n")
        self.assertEqual(settings.sections["b"]["copy"], 5)

    def test_referenceKeyIsCaseInsensitive(self) -> None:
        settings = self.load("[a]\nName = v\n[b]\nx = ${a:NAME}\n")
        self.assertEqual(settings.sections["b"]["x"], "v")

    def test_interpolationBeforeConversion(self) -> None:
        settings = self.load("[server]\nmax_body = int:${ENV:MB}\n", {"MB": "77"})
        self.assertEqual(settings.max_body, 77)

    def test_environment(self) -> None:
        settings = self.load("[auth]\napikey = ${ENV:KEY}\n", {"KEY": "k1"})
        self.assertEqual(settings.apikey, KeySet.of("k1"))

    def test_environmentDefaultsToOsEnviron(self) -> None:
        os.environ["PS_TEST_CONFIG_VAR"] = "from-os"
        self.addCleanup(os.environ.pop, "PS_TEST_CONFIG_VAR")
        settings = load_settings(self.write("[a]\nx = ${ENV:PS_TEST_CONFIG_VAR}\n"))
        self.assertEqual(settings.sections["a"]["x"], "from-os")

    def test_environmentMissing(self) -> None:
        error = self.loadError("[auth]\napikey = ${ENV:NOPE}\n")
        self.assertErrorAt(error, "auth", "apikey")
        self.assertIn("environment variable NOPE is not set", str(error))

    def test_environmentDefault(self) -> None:
        text = "[server]\nthreads = ${ENV:THREADS:-4}\n"
        self.assertEqual(self.load(text).threads, 4)
        self.assertEqual(self.load(text, {"THREADS": "8"}).threads, 8)

    def test_environmentEmptyDefault(self) -> None:
        self.assertIsNone(self.load("[auth]\napikey = ${ENV:PS_APIKEY:-}\n").apikey)

    def test_environmentSetButEmptyIsUsed(self) -> None:
        settings = self.load("[a]\nx = <${ENV:E:-d}>\n", {"E": ""})
        self.assertEqual(settings.sections["a"]["x"], "<>")

    def test_dollarDollarIsLiteral(self) -> None:
        settings = self.load("[a]\nx = $${ENV:HOME} $$ 5$\n")
        self.assertEqual(settings.sections["a"]["x"], "${ENV:HOME} $ 5$")

    def test_cycle(self) -> None:
        error = self.loadError("[a]\nx = ${b:y}\n[b]\ny = ${a:x}\n")
        self.assertErrorAt(error, "b", "y")
        self.assertIn("reference cycle: ${a:x} -> ${b:y} -> ${a:x}", str(error))

    def test_selfReference(self) -> None:
        error = self.loadError("[a]\nx = ${a:x}\n")
        self.assertErrorAt(error, "a", "x")
        self.assertIn("cycle", str(error))

    def test_missingSection(self) -> None:
        error = self.loadError("[a]\nx = ${nowhere:y}\n")
        self.assertErrorAt(error, "a", "x")
        self.assertIn("no section [nowhere]", str(error))

    def test_missingKey(self) -> None:
        error = self.loadError("[a]\nx = ${b:nope}\n[b]\ny = 1\n")
        self.assertErrorAt(error, "a", "x")
        self.assertIn("no key nope in [b]", str(error))

    def test_unterminated(self) -> None:
        error = self.loadError("[a]\nx = ${b:y\n")
        self.assertErrorAt(error, "a", "x")
        self.assertIn("unterminated", str(error))


class ServerTests(ConfigTestCase):
    def test_designExample(self) -> None:
        settings = self.load(DESIGN_EXAMPLE)
        self.assertEqual(
            settings.listen,
            (
                "tcp:8080:interface=127.0.0.1",
                "ssl:8443:interface=127.0.0.1"
                f":privateKey={self.inDir('key.pem')}"
                f":certKey={self.inDir('cert.pem')}",
            ),
        )
        self.assertEqual(settings.listen_origin, "[server] listen")
        self.assertEqual(settings.max_body, 1048576)
        self.assertEqual(settings.request_timeout, 30.0)
        self.assertEqual(settings.idle_timeout, 60.0)
        self.assertEqual(settings.shutdown_timeout, 10.0)
        self.assertEqual(settings.allowed_hosts, ("localhost", "127.0.0.1"))
        self.assertEqual(
            settings.plugins_dir,
            os.path.join(os.path.dirname(self.dir), "plugins"),
        )
        self.assertIsNone(settings.apikey)
        self.assertFalse(settings.allow_query_key)
        self.assertEqual(
            {name: dict(params) for name, params in settings.plugin_params.items()},
            {
                "systeminfo": {"auth": "global", "interval": 1.0},
                "secret": {"auth": "plugin", "apikey": KeySet.of("s3cret")},
                "public": {"auth": "none"},
            },
        )
        self.assertTrue(settings.cors_enabled)
        self.assertEqual(settings.cors_origins, ("https://a.example", "https://b.example"))
        self.assertEqual(
            settings.access_allow,
            (
                ip_network("127.0.0.0/8"),
                ip_network("::1"),
                ip_network("10.0.0.0/8"),
            ),
        )
        self.assertEqual(settings.trusted_proxies, (ip_network("127.0.0.1"),))

    def test_designExampleWithKeyFromEnvironment(self) -> None:
        settings = self.load(DESIGN_EXAMPLE, {"PS_APIKEY": "abc"})
        self.assertEqual(settings.apikey, KeySet.of("abc"))

    def test_unprefixedValuesAreCoerced(self) -> None:
        settings = self.load(
            "[server]\nmax_body = 1048576\nrequest_timeout = 2.5\n"
            "idle_timeout = 5\nthreads = 3\nmetrics_public = Yes\n"
            "allowed_hosts = LocalHost [::1]\n[auth]\nallow_query_key = on\n"
        )
        self.assertEqual(
            (
                settings.max_body,
                settings.request_timeout,
                settings.idle_timeout,
                settings.threads,
                settings.metrics_public,
                settings.allowed_hosts,
                settings.allow_query_key,
            ),
            (1048576, 2.5, 5.0, 3, True, ("localhost", "[::1]"), True),
        )

    def test_maxBodyFloat(self) -> None:
        error = self.loadError("[server]\nmax_body = float:1.5\n")
        self.assertErrorAt(error, "server", "max_body")
        self.assertIn("expected an integer >= 0, found 'float:1.5'", str(error))

    def test_maxBodyNegative(self) -> None:
        error = self.loadError("[server]\nmax_body = -1\n")
        self.assertErrorAt(error, "server", "max_body")
        self.assertIn("found '-1'", str(error))

    def test_maxBodyBool(self) -> None:
        error = self.loadError("[server]\nmax_body = bool:true\n")
        self.assertErrorAt(error, "server", "max_body")

    def test_threadsZero(self) -> None:
        error = self.loadError("[server]\nthreads = int:0\n")
        self.assertErrorAt(error, "server", "threads")
        self.assertIn("expected an integer >= 1", str(error))

    def test_timeoutNotPositive(self) -> None:
        for key in ("request_timeout", "idle_timeout"):
            error = self.loadError(f"[server]\n{key} = float:0\n")
            self.assertErrorAt(error, "server", key)
        error = self.loadError("[server]\nshutdown_timeout = float:inf\n")
        self.assertErrorAt(error, "server", "shutdown_timeout")
        self.assertEqual(self.load("[server]\nshutdown_timeout = 0\n").shutdown_timeout, 0.0)

    def test_logFormat(self) -> None:
        self.assertEqual(self.load("[server]\nlog_format = JSON\n").log_format, "json")
        error = self.loadError("[server]\nlog_format = xml\n")
        self.assertErrorAt(error, "server", "log_format")
        self.assertIn("expected text or json, found 'xml'", str(error))

    def test_accessLog(self) -> None:
        settings = self.load("[server]\naccess_log = logs/access.log\n")
        self.assertEqual(settings.access_log, self.inDir("logs", "access.log"))
        self.assertEqual(
            settings.sections["server"]["access_log"],
            self.inDir("logs", "access.log"),
        )
        self.assertIsNone(self.load("[server]\naccess_log =\n").access_log)

    def test_metricsPublicInvalid(self) -> None:
        error = self.loadError("[server]\nmetrics_public = sometimes\n")
        self.assertErrorAt(error, "server", "metrics_public")
        self.assertIn("expected a boolean", str(error))

    def test_allowedHostsEmpty(self) -> None:
        self.assertIsNone(self.load("[server]\nallowed_hosts = list:\n").allowed_hosts)

    def test_pluginsDir(self) -> None:
        self.assertEqual(
            self.load("[paths]\nplugins = ../p\n").plugins_dir,
            os.path.join(os.path.dirname(self.dir), "p"),
        )
        self.assertEqual(self.load("[paths]\nplugins = /opt/p\n").plugins_dir, "/opt/p")
        self.assertEqual(
            self.load("[paths]\nplugins = ~/p\n").plugins_dir,
            os.path.expanduser("~/p"),
        )
        self.assertEqual(self.load("[paths]\nplugins =\n").plugins_dir, self.inDir("plugins"))


class ListenTests(ConfigTestCase):
    def test_listenWithListPrefix(self) -> None:
        settings = self.load("[server]\nlisten = list:tcp:1:interface=127.0.0.1 unix:ps.sock\n")
        self.assertEqual(
            settings.listen,
            ("tcp:1:interface=127.0.0.1", "unix:" + self.inDir("ps.sock")),
        )

    def test_network(self) -> None:
        settings = self.load("[network]\nbindto = 0.0.0.0\nport = int:9000\n")
        self.assertEqual(settings.listen, ("tcp:9000:interface=0.0.0.0",))
        self.assertEqual(settings.listen_origin, "[network] port")

    def test_networkPortOnly(self) -> None:
        settings = self.load("[network]\nport = 9000\n")
        self.assertEqual(settings.listen, ("tcp:9000:interface=127.0.0.1",))

    def test_networkIPv6(self) -> None:
        settings = self.load("[network]\nbindto = ::1\nport = int:9000\n")
        self.assertEqual(settings.listen, ("tcp:9000:interface=\\:\\:1",))

    def test_networkPortOutOfRange(self) -> None:
        for port in ("int:0", "65536", "http"):
            error = self.loadError(f"[network]\nport = {port}\n")
            self.assertErrorAt(error, "network", "port")
            self.assertIn("expected an integer from 1 to 65535", str(error))

    def test_ssl(self) -> None:
        settings = self.load(OLD_SERVER_STYLE.replace("&json=systeminfo.json", ""))
        self.assertEqual(
            settings.listen,
            (
                "ssl:8443:interface=0.0.0.0"
                f":privateKey={self.inDir('ssl', 'server.key')}"
                f":certKey={self.inDir('ssl', 'server.crt')}",
            ),
        )
        self.assertEqual(settings.listen_origin, "[SSL] keyfile")
        self.assertEqual(settings.sections["SSL"]["keyfile"], self.inDir("ssl", "server.key"))

    def test_sslDisabled(self) -> None:
        settings = self.load(
            "[network]\nport = int:9000\n[SSL]\nenabled = bool:false\nkeyfile = k\n"
        )
        self.assertEqual(settings.listen, ("tcp:9000:interface=127.0.0.1",))

    def test_sslMissingKeyfile(self) -> None:
        error = self.loadError(
            "[network]\nport = int:9000\n[SSL]\nenabled = bool:true\ncertfile = c\n"
        )
        self.assertErrorAt(error, "SSL", "keyfile")

    def test_sslMissingCertfile(self) -> None:
        error = self.loadError("[SSL]\nenabled = yes\nkeyfile = k\ncertfile =\n")
        self.assertErrorAt(error, "SSL", "certfile")

    def test_listenWins(self) -> None:
        settings = self.load(
            "[server]\nlisten = tcp:1\n[network]\nport = int:9000\n[SSL]\nenabled = bool:true\n"
        )
        self.assertEqual(settings.listen, ("tcp:1",))
        self.assertEqual(settings.listen_origin, "[server] listen")

    def test_neither(self) -> None:
        settings = self.load("[network]\n[server]\nlisten =\n")
        self.assertEqual(settings.listen, ("tcp:8080:interface=127.0.0.1",))


class ResolveEndpointPathsTests(SynchronousTestCase):
    def test_tlsKeys(self) -> None:
        self.assertEqual(
            resolve_endpoint_paths(
                "ssl:443:privateKey=k.pem:certKey=../c.pem:extraCertChain=chain.pem"
                ":caCertsDir=ca:dhParameters=dh.pem:interface=127.0.0.1",
                "/etc/ps",
            ),
            "ssl:443:privateKey=/etc/ps/k.pem:certKey=/etc/c.pem"
            ":extraCertChain=/etc/ps/chain.pem:caCertsDir=/etc/ps/ca"
            ":dhParameters=/etc/ps/dh.pem:interface=127.0.0.1",
        )

    def test_absoluteUntouched(self) -> None:
        description = "ssl:443:privateKey=/k.pem:interface=\\:\\:1"
        self.assertEqual(resolve_endpoint_paths(description, "/etc"), description)

    def test_escapesKept(self) -> None:
        self.assertEqual(
            resolve_endpoint_paths("ssl:443:interface=\\:\\:1:privateKey=a\\:b", "/etc"),
            "ssl:443:interface=\\:\\:1:privateKey=/etc/a\\:b",
        )

    def test_baseDirIsEscaped(self) -> None:
        self.assertEqual(
            resolve_endpoint_paths("ssl:443:privateKey=k", "/a:b"),
            "ssl:443:privateKey=/a\\:b/k",
        )

    def test_tilde(self) -> None:
        self.assertEqual(
            resolve_endpoint_paths("ssl:443:privateKey=~/k", "/etc"),
            "ssl:443:privateKey=" + os.path.expanduser("~/k").replace(":", "\\:"),
        )

    def test_unix(self) -> None:
        self.assertEqual(
            resolve_endpoint_paths("unix:run/ps.sock:mode=600", "/srv"),
            "unix:/srv/run/ps.sock:mode=600",
        )
        self.assertEqual(
            resolve_endpoint_paths("UNIX:address=ps.sock:lockfile=1", "/srv"),
            "UNIX:address=/srv/ps.sock:lockfile=1",
        )
        self.assertEqual(resolve_endpoint_paths("unix:/run/ps", "/srv"), "unix:/run/ps")
        self.assertEqual(resolve_endpoint_paths("unix:@abstract", "/srv"), "unix:@abstract")

    def test_unixPathWithEquals(self) -> None:
        self.assertEqual(resolve_endpoint_paths("unix:a\\=b", "/srv"), "unix:/srv/a\\=b")

    def test_otherEndpointsUntouched(self) -> None:
        for description in [
            "tcp:8080:interface=127.0.0.1",
            "systemd:domain=INET:index=0",
        ]:
            self.assertEqual(resolve_endpoint_paths(description, "/srv"), description)


class PluginParamsTests(ConfigTestCase):
    def params(self, settings: Settings, name: str) -> dict[str, Any]:
        return dict(settings.plugin_params[name])

    def test_typedValues(self) -> None:
        settings = self.load("[plugin_parms]\np = a=int:1&b=list:x int:2&c=&d=plain%20text\n")
        self.assertEqual(
            self.params(settings, "p"),
            {"a": 1, "b": ["x", 2], "c": "", "d": "plain text"},
        )

    def test_authTypeSynonym(self) -> None:
        settings = self.load("[plugin_parms]\np = auth_type=None\n")
        self.assertEqual(self.params(settings, "p"), {"auth": "none"})

    def test_badAuth(self) -> None:
        error = self.loadError("[plugin_parms]\nsecret = auth=sometimes\n")
        self.assertErrorAt(error, "plugin_parms", "secret")
        self.assertIn(
            "[plugin_parms] secret: auth must be global, plugin, none or cert",
            str(error),
        )

    def test_pluginAuthWithoutKey(self) -> None:
        for text in ("auth=plugin", "auth=plugin&apikey="):
            error = self.loadError(f"[plugin_parms]\nsecret = {text}\n")
            self.assertErrorAt(error, "plugin_parms", "secret")
            self.assertIn("apikey", str(error))

    def test_badQueryString(self) -> None:
        error = self.loadError("[plugin_parms]\np = auth=none&&x\n")
        self.assertErrorAt(error, "plugin_parms", "p")

    def test_badTypedValue(self) -> None:
        error = self.loadError("[plugin_parms]\np = interval=float:soon\n")
        self.assertErrorAt(error, "plugin_parms", "p")
        self.assertIn("interval: expected a number", str(error))

    def test_readOnly(self) -> None:
        settings = self.load("[plugin_parms]\np = a=1\n")
        with self.assertRaises(TypeError):
            settings.plugin_params["p"]["a"] = "2"  # type: ignore[index]

    def test_jsonMerged(self) -> None:
        self.write(
            json.dumps({"auth": "global", "interval": 5, "nested": {"x": [1]}}),
            name="plugins/p.json",
        )
        settings = self.load("[plugin_parms]\np = json=p.json&interval=float:1\n")
        self.assertEqual(
            self.params(settings, "p"),
            {"auth": "global", "interval": 1.0, "nested": {"x": [1]}},
        )

    def test_jsonAuthTypeLosesToINI(self) -> None:
        self.write('{"auth_type": "none"}', name="plugins/p.json")
        settings = self.load("[plugin_parms]\np = json=p.json&auth=global\n")
        self.assertEqual(self.params(settings, "p"), {"auth": "global"})

    def test_jsonMissing(self) -> None:
        error = self.loadError("[plugin_parms]\np = json=absent.json\n")
        self.assertErrorAt(error, "plugin_parms", "p")
        self.assertIn(self.inDir("plugins", "absent.json"), str(error))

    def test_jsonInvalid(self) -> None:
        self.write("{not json", name="plugins/p.json")
        error = self.loadError("[plugin_parms]\np = json=p.json\n")
        self.assertErrorAt(error, "plugin_parms", "p")
        self.assertIn("p.json: invalid JSON", str(error))

    def test_jsonNotObject(self) -> None:
        self.write("[1, 2]", name="plugins/p.json")
        error = self.loadError("[plugin_parms]\np = json=p.json\n")
        self.assertErrorAt(error, "plugin_parms", "p")
        self.assertIn("expected a JSON object, found list", str(error))

    def test_oldServerStyle(self) -> None:
        self.write(
            '{"interval": 2, "auth_type": "plugin"}',
            name="plugins/systeminfo.json",
        )
        settings = self.load(OLD_SERVER_STYLE)
        self.assertEqual(
            self.params(settings, "systeminfo"),
            {"auth": "global", "interval": 2},
        )
        self.assertTrue(settings.cors_enabled)
        self.assertEqual(settings.cors_origins, ("https://dash.example.org",))
        self.assertTrue(settings.listen[0].startswith("ssl:8443:interface=0.0.0.0:"))

    def test_sectionsKeepRawQueryStrings(self) -> None:
        settings = self.load("[plugin_parms]\np = a=int:1\n")
        self.assertEqual(settings.sections["plugin_parms"]["p"], "a=int:1")


class CorsAndAccessTests(ConfigTestCase):
    def test_anyOrigin(self) -> None:
        settings = self.load("[cors]\nenabled = true\norigin_url = *\n")
        self.assertEqual((settings.cors_enabled, settings.cors_origins), (True, ("*",)))

    def test_originsNormalised(self) -> None:
        # As browsers send Origin: lower case, no slash, no default port.
        settings = self.load(
            "[cors]\norigin_url = HTTPS://A.Example:8443/ http://[::1]:80 https://b.example:443\n"
        )
        self.assertEqual(
            settings.cors_origins, ("https://a.example:8443", "http://[::1]", "https://b.example")
        )

    def test_defaultsDoNotBecomePlugins(self) -> None:
        settings = self.load(
            "[DEFAULT]\nbase = /srv\n[plugin_parms]\np = a=int:1\n[custom]\nx = ${base}/x\n"
        )
        self.assertEqual(dict(settings.plugin_params), {"p": {"a": 1}})
        self.assertEqual(settings.sections["custom"]["base"], "/srv")

    def test_badOrigin(self) -> None:
        for origin in (
            "a.example",
            "https://a.example/path",
            "https://a:99999",
            "*.example",
        ):
            error = self.loadError(f"[cors]\norigin_url = {origin}\n")
            self.assertErrorAt(error, "cors", "origin_url")
            self.assertIn("expected * or scheme://host[:port]", str(error))

    def test_starWithOthers(self) -> None:
        error = self.loadError("[cors]\norigin_url = list:* https://a.example\n")
        self.assertErrorAt(error, "cors", "origin_url")

    def test_corsEnabledInvalid(self) -> None:
        error = self.loadError("[cors]\nenabled = int:1\n")
        self.assertErrorAt(error, "cors", "enabled")

    def test_access(self) -> None:
        settings = self.load(
            "[access]\nallow = 192.168.1.7/24\n  2001:db8::/32\ntrusted_proxies = ::1\n"
        )
        self.assertEqual(
            settings.access_allow,
            (ip_network("192.168.1.0/24"), ip_network("2001:db8::/32")),
        )
        self.assertEqual(settings.trusted_proxies, (ip_network("::1"),))

    def test_accessAbsentOrEmpty(self) -> None:
        self.assertIsNone(self.load("").access_allow)
        self.assertIsNone(self.load("[access]\nallow =\n").access_allow)

    def test_badCIDR(self) -> None:
        for key in ("allow", "trusted_proxies"):
            error = self.loadError(f"[access]\n{key} = list:10.0.0.0/8 10.0.0.300\n")
            self.assertErrorAt(error, "access", key)
            self.assertIn("found '10.0.0.300'", str(error))


class OverrideTests(ConfigTestCase):
    def setUp(self) -> None:
        super().setUp()
        cwd = os.getcwd()
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        os.chdir(self.cwd)
        self.addCleanup(os.chdir, cwd)

    def test_listen(self) -> None:
        settings = self.load("[server]\nlisten = tcp:1\n").with_overrides(
            listen=["ssl:2:privateKey=k.pem", "tcp:3"]
        )
        self.assertEqual(
            settings.listen,
            ("ssl:2:privateKey=" + os.path.join(self.cwd, "k.pem"), "tcp:3"),
        )
        self.assertEqual(settings.listen_origin, "--listen")

    def test_noOverrides(self) -> None:
        settings = self.load("[server]\nlisten = tcp:1\n")
        self.assertEqual(settings.with_overrides(listen=[]), settings)

    def test_pluginsDir(self) -> None:
        settings = self.load("").with_overrides(plugins_dir="p")
        self.assertEqual(settings.plugins_dir, os.path.join(self.cwd, "p"))

    def test_pluginsDirRereadsJson(self) -> None:
        self.write('{"v": 1}', name="plugins/p.json")
        self.write('{"v": 2}', name="other/p.json")
        settings = self.load("[plugin_parms]\np = json=p.json\n")
        moved = settings.with_overrides(plugins_dir=self.inDir("other"))
        self.assertEqual(dict(moved.plugin_params["p"]), {"v": 2})
        self.assertEqual(dict(settings.plugin_params["p"]), {"v": 1})


class KeyTableTests(ConfigTestCase):
    """
    L{KEYS} declares every key once; the Settings defaults and the loader
    follow it.
    """

    DERIVED = frozenset({"path", "listen_origin", "plugin_params", "sections"})
    """Settings attributes that no single key sets."""

    def test_keysAreUnique(self) -> None:
        where = [(key.section, key.name) for key in KEYS]
        self.assertEqual(len(where), len(set(where)))
        for key in KEYS:
            self.assertEqual(key.name, key.name.lower(), key)
            self.assertIs(known_key(key.section, key.name.upper()), key)

    def test_keysAreInKnownSections(self) -> None:
        for key in KEYS:
            self.assertIn(key.section, KNOWN_SECTIONS, key)
            self.assertIn(key.section, (*OWNED_SECTIONS, "paths"), key)

    def test_docsAreOneLine(self) -> None:
        for key in KEYS:
            self.assertTrue(key.doc.endswith("."), key)
            self.assertNotIn("\n", key.doc, key)

    def test_everyFieldIsSetByAKey(self) -> None:
        fields = set(attr.fields_dict(Settings))
        self.assertEqual(fields - self.DERIVED, {key.field for key in KEYS})

    def test_settingsDefaultsAreTheTable(self) -> None:
        fields = attr.fields_dict(Settings)
        for key in KEYS:
            default = fields[key.field].default
            if key.listener or (key.path and key.default is not None):
                # The listeners and a relative default directory depend on
                # the file: the loader always gives them.
                self.assertIs(default, attr.NOTHING, key)
            else:
                self.assertEqual(default, key.default, key)

    def test_emptyFileGivesTheDefaults(self) -> None:
        settings = self.load("")
        for key in KEYS:
            value = getattr(settings, key.field)
            if key.listener:
                continue
            if key.path and key.default is not None:
                self.assertEqual(value, self.inDir(key.default), key)
            else:
                self.assertEqual(value, key.default, key)
        self.assertEqual(settings.listen, known_key("server", "listen").default)  # type: ignore[union-attr]

    def test_pathKeysAreAbsoluteInSections(self) -> None:
        # [tls] client_ca must be a readable PEM file.
        os.makedirs(self.inDir("some"), exist_ok=True)
        with open(self.inDir("some", "file"), "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\n")
        for key in KEYS:
            if not key.path:
                continue
            ini = f"[{key.section}]\n{key.name} = some/file\n"
            self.assertEqual(
                self.load(ini).sections[key.section][key.name], self.inDir("some", "file"), key
            )


class UnknownKeyTests(ConfigTestCase):
    """
    A key the server does not know, in a section it owns, is an error.
    """

    def test_eachOwnedSection(self) -> None:
        for section in OWNED_SECTIONS:
            error = self.loadError(f"[{section}]\nno_such_key = 1\n")
            self.assertErrorAt(error, section, "no_such_key")
            self.assertIn("unknown key", error.message)
        self.assertEqual(
            set(OWNED_SECTIONS),
            {"server", "network", "SSL", "auth", "cors", "access", "tls", "limits"},
        )

    def test_nearestKnownKey(self) -> None:
        path = self.write("[auth]\napi_key = x\n")
        error = self.assertRaises(ConfigError, load_settings, path, {})
        self.assertEqual(str(error), f"{path}: [auth] api_key: unknown key (did you mean apikey?)")

    def test_nearestKnownKeyInEachSection(self) -> None:
        for section, written, meant in [
            ("server", "maxbody", "max_body"),
            ("server", "request-timeout", "request_timeout"),
            ("network", "bind_to", "bindto"),
            ("SSL", "key_file", "keyfile"),
            ("cors", "origin_urls", "origin_url"),
            ("access", "trusted_proxy", "trusted_proxies"),
        ]:
            error = self.loadError(f"[{section}]\n{written} = 1\n")
            self.assertErrorAt(error, section, written)
            self.assertEqual(error.message, f"unknown key (did you mean {meant}?)")

    def test_keyOfAnotherSection(self) -> None:
        error = self.loadError("[server]\napikey = x\n")
        self.assertErrorAt(error, "server", "apikey")
        self.assertEqual(error.message, "unknown key (did you mean [auth] apikey?)")
        error = self.loadError("[server]\nplugins = p\n")
        self.assertEqual(error.message, "unknown key (did you mean [paths] plugins?)")

    def test_noCloseMatch(self) -> None:
        error = self.loadError("[cors]\ncolour = blue\n")
        self.assertEqual(error.message, "unknown key (the keys of [cors] are enabled, origin_url)")
        error = self.loadError("[server]\ncolour = blue\n")
        self.assertEqual(
            error.message, "unknown key (docs/configuration.md lists the keys of [server])"
        )

    def test_unknownKeyOfNewSections(self) -> None:
        error = self.loadError("[tls]\nrate = float:1\n")
        self.assertErrorAt(error, "tls", "rate")
        self.assertEqual(error.message, "unknown key (did you mean [limits] rate?)")
        error = self.loadError("[limits]\nrates = float:1\n")
        self.assertEqual(error.message, "unknown key (did you mean rate?)")
        # An empty owned section is fine.
        self.load("[tls]\n[limits]\n")

    def test_keysAreCaseInsensitive(self) -> None:
        error = self.loadError("[auth]\nAPI_Key = x\n")
        self.assertErrorAt(error, "auth", "api_key")
        self.assertEqual(self.load("[auth]\nAPIKEY = x\n").apikey, KeySet.of("x"))

    def test_firstInFileOrder(self) -> None:
        error = self.loadError("[cors]\nenabled = yes\nzeta = 1\nalpha = 2\n[auth]\nbeta = 3\n")
        self.assertErrorAt(error, "cors", "zeta")

    def test_valueIsNeverShown(self) -> None:
        error = self.loadError("[auth]\napi_key = topsecret\n")
        self.assertNotIn("topsecret", str(error))

    def test_beforeValueErrors(self) -> None:
        # The misspelt key is the mistake to fix first: its value went nowhere.
        error = self.loadError("[server]\nmax_body = int:x\nthread = 4\n")
        self.assertErrorAt(error, "server", "thread")
        self.assertEqual(error.message, "unknown key (did you mean threads?)")

    def test_defaultKeysAreNotTheSectionsOwn(self) -> None:
        """
        [DEFAULT] is merged into every section; its keys are not unknown
        keys of the server's sections, and stay readable there.
        """
        settings = self.load(
            "[DEFAULT]\nbase = /srv\nport_base = 80\n"
            "[server]\naccess_log = ${base}/access.log\n[auth]\n[network]\n[SSL]\n"
        )
        self.assertEqual(settings.access_log, "/srv/access.log")
        self.assertEqual(settings.sections["server"]["base"], "/srv")
        self.assertEqual(settings.sections["auth"]["port_base"], "80")

    def test_defaultKeyWrittenInSectionToo(self) -> None:
        error = self.loadError("[DEFAULT]\nbase = /srv\n[server]\nbase = /opt\n")
        self.assertErrorAt(error, "server", "base")

    def test_freeSections(self) -> None:
        settings = self.load(
            "[paths]\nplugins = p\ntemplates = html:../www\n"
            "[my_plugin]\nanything = int:3\n"
            "[file_server]\nroot = /srv\n"
            "[plugin_parms]\nwhatever = a=1\n"
        )
        self.assertEqual(settings.sections["paths"]["templates"], "html:../www")
        self.assertEqual(settings.sections["my_plugin"]["anything"], 3)
        self.assertEqual(settings.sections["file_server"]["root"], "/srv")
        self.assertEqual(settings.warnings, ())

    def test_sectionNamesAreCaseSensitive(self) -> None:
        # [Auth] is not [auth]: not checked, but warned about.
        settings = self.load("[Auth]\napi_key = x\n")
        self.assertIsNone(settings.apikey)
        self.assertEqual(len(settings.warnings), 1)


class SectionWarningTests(ConfigTestCase):
    """
    A section name one edit away from a known one is a warning.
    """

    def test_nearMisses(self) -> None:
        for written, known in [
            ("path", "paths"),
            ("sever", "server"),
            ("servre", "server"),
            ("Server", "server"),
            ("servers", "server"),
            ("ssl", "SSL"),
            ("plugin_params", "plugin_parms"),
            ("acess", "access"),
            ("limit", "limits"),
            ("default", "DEFAULT"),
        ]:
            path = self.write(f"[{written}]\nx = 1\n")
            settings = load_settings(path, {})
            self.assertEqual(
                settings.warnings,
                (f"{path}: [{written}]: unknown section (did you mean [{known}]?)",),
                written,
            )

    def test_notNearMisses(self) -> None:
        self.assertEqual(
            misspelt_sections(
                ["mine", "greet", "file_server", "systeminfo", "paths", "server", "DEFAULT"]
            ),
            {},
        )

    def test_inOrder(self) -> None:
        self.assertEqual(
            misspelt_sections(["sevrer", "mine", "path", "Cors"]),
            {"sevrer": "server", "path": "paths", "Cors": "cors"},
        )

    def test_warningIsNotAnError(self) -> None:
        settings = self.load("[path]\nplugins = elsewhere\n")
        self.assertEqual(settings.plugins_dir, self.inDir("plugins"))
        self.assertEqual(settings.sections["path"]["plugins"], "elsewhere")

    def test_notInEquality(self) -> None:
        settings = self.load("[path]\n")
        self.assertTrue(settings.warnings)
        self.assertNotIn("warnings", attr.fields_dict(Settings))
        hash(settings)


class ExposureWarningTests(ConfigTestCase):
    """
    A listener reachable from beyond this host is warned about when
    allowed_hosts admits loopback names only, and when there is no key.
    """

    def test_listenerExposure(self) -> None:
        for description, expected in [
            ("tcp:8080", "all interfaces"),
            ("TCP:8080", "all interfaces"),
            ("tcp:8080:interface=0.0.0.0", "all interfaces"),
            ("tcp:8080:interface=127.0.0.1", None),
            ("tcp:8080:interface=127.1.2.3", None),
            ("tcp:8080:interface=localhost", None),
            ("tcp:8080:interface=10.0.0.5", "10.0.0.5"),
            ("tcp:8080:192.168.1.2", "192.168.1.2"),
            ("tcp:8080:127.0.0.1:backlog=5", None),
            ("tcp:port=8080:interface=127.0.0.1", None),
            ("tcp:8080:interface=eth0.example", "eth0.example"),
            ("tcp6:8080", "all interfaces"),
            ("tcp6:8080:interface=\\:\\:", "all interfaces"),
            ("tcp6:8080:interface=\\:\\:1", None),
            ("tcp6:8080:50:\\:\\:1", None),
            ("tcp6:8080:interface=fd00\\:\\:5", "fd00::5"),
            ("ssl:8443:privateKey=k.pem:certKey=c.pem", "all interfaces"),
            ("ssl:8443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1", None),
            ("ssl:8443:k.pem:c.pem:interface=\\:\\:", "all interfaces"),
            ("ssl:8443:k.pem:c.pem:SSLv23_METHOD:127.0.0.1", None),
            ("unix:/run/ps.sock", None),
            ("systemd:domain=INET:index=0", None),
            ("onion:80", None),
        ]:
            self.assertEqual(listener_exposure(description), expected, description)

    def test_loopbackHosts(self) -> None:
        path = self.write(
            "[server]\nlisten = tcp:8080:interface=0.0.0.0\n"
            "allowed_hosts = list:localhost 127.0.0.1 [::1]\n[auth]\napikey = k\n"
        )
        self.assertEqual(
            load_settings(path, {}).warnings,
            (
                f"{path}: [server] listen: tcp:8080:interface=0.0.0.0: listens on all "
                "interfaces, but [server] allowed_hosts admits loopback names only: clients "
                "from elsewhere get 400 (host not allowed)",
            ),
        )

    def test_noKey(self) -> None:
        path = self.write("[network]\nbindto = 10.0.0.5\nport = 8080\n")
        self.assertEqual(
            load_settings(path, {}).warnings,
            (
                f"{path}: [network] port: tcp:8080:interface=10.0.0.5: listens on 10.0.0.5 "
                "and [auth] apikey is empty: whoever reaches it may call the utility routes "
                "and every plugin whose auth is global without a key",
            ),
        )

    def test_both(self) -> None:
        settings = self.load(
            "[server]\nlisten = tcp:1 tcp:2:interface=127.0.0.1 unix:s.sock\n"
            "allowed_hosts = localhost\n"
        )
        self.assertEqual(len(settings.warnings), 2)
        self.assertTrue(all(": tcp:1: " in w for w in settings.warnings))

    def test_hostsBeyondLoopback(self) -> None:
        settings = self.load(
            "[server]\nlisten = tcp:1\nallowed_hosts = localhost api.example.com\n"
            "[auth]\napikey = k\n"
        )
        self.assertEqual(settings.warnings, ())

    def test_loopbackListeners(self) -> None:
        settings = self.load(
            "[server]\nlisten = tcp:1:interface=127.0.0.1 tcp6:2:interface=\\:\\:1 "
            "unix:s.sock\nallowed_hosts = localhost\n"
        )
        self.assertEqual(settings.warnings, ())

    def test_followsOverrides(self) -> None:
        settings = self.load("[server]\nallowed_hosts = localhost\n[auth]\napikey = k\n")
        self.assertEqual(settings.warnings, ())
        moved = settings.with_overrides(listen=["tcp:9000"])
        self.assertEqual(
            moved.warnings,
            (
                "--listen: tcp:9000: listens on all interfaces, but [server] allowed_hosts "
                "admits loopback names only: clients from elsewhere get 400 (host not allowed)",
            ),
        )


class SecurityKeyTests(ConfigTestCase):
    """
    Key forms, the admin key, [tls] and [limits]: good values are read, bad
    ones are one line naming the file, section and key, never the key.
    """

    def keyFile(self, name: str, content: str, mode: int = 0o600) -> str:
        path = self.inDir(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    def test_forms(self) -> None:
        import hashlib

        self.keyFile("keys/ops.key", "from-a-file\n")
        digest = hashlib.sha256(b"hashed").hexdigest()
        settings = self.load(
            f"[auth]\napikey = list:plain sha256:{digest} file:keys/ops.key\n"
            "admin_apikey = file:keys/ops.key\n"
        )
        assert settings.apikey is not None and settings.admin_apikey is not None
        self.assertEqual(len(settings.apikey), 3)
        for key in ("plain", "hashed", "from-a-file"):
            self.assertIsNotNone(settings.apikey.match(key), key)
        self.assertIsNone(settings.apikey.match("sha256:" + digest))
        self.assertEqual(settings.admin_apikey, KeySet.of("from-a-file"))
        for secret in ("plain", digest, "from-a-file"):
            self.assertNotIn(secret, repr(settings))

    def test_pluginKeyForms(self) -> None:
        self.keyFile("p.key", "plugin-file-key")
        settings = self.load("[plugin_parms]\np = auth=plugin&apikey=list:a+file:p.key\n")
        keys = settings.plugin_params["p"]["apikey"]
        self.assertIsNotNone(keys.match("a"))
        self.assertIsNotNone(keys.match("plugin-file-key"))

    def assertRefused(self, ini: str, section: str, key: str, *words: str) -> ConfigError:
        error = self.loadError(ini)
        self.assertErrorAt(error, section, key)
        line = str(error)
        self.assertEqual(len(line.splitlines()), 1)
        self.assertIn(self.inDir("ps.ini"), line)
        for word in words:
            self.assertIn(word, line)
        return error

    def test_badSha256(self) -> None:
        error = self.assertRefused(
            "[auth]\napikey = sha256:abc123\n", "auth", "apikey", "64 hex digits"
        )
        self.assertNotIn("abc123", str(error))
        self.assertRefused(
            "[auth]\nadmin_apikey = sha256:" + "g" * 64 + "\n", "auth", "admin_apikey"
        )

    def test_missingKeyFile(self) -> None:
        self.assertRefused(
            "[auth]\napikey = file:nope.key\n", "auth", "apikey", "nope.key", "No such file"
        )

    def test_keyFileReadableByOthers(self) -> None:
        for mode in (0o640, 0o604):
            path = self.keyFile("open.key", "secret-in-file", mode)
            error = self.assertRefused(
                "[auth]\napikey = file:open.key\n", "auth", "apikey", path, "group or others"
            )
            self.assertNotIn("secret-in-file", str(error))

    def test_emptyKeyFile(self) -> None:
        self.keyFile("empty.key", "\n")
        self.assertRefused("[auth]\napikey = file:empty.key\n", "auth", "apikey", "empty")

    def test_pluginKeyFileRefused(self) -> None:
        self.keyFile("p.key", "x", 0o644)
        self.assertRefused(
            "[plugin_parms]\np = auth=plugin&apikey=file:p.key\n", "plugin_parms", "p", "apikey"
        )

    def test_clientAuth(self) -> None:
        self.assertRefused("[tls]\nclient_auth = maybe\n", "tls", "client_auth", "maybe")
        self.assertRefused("[tls]\nclient_auth = require\n", "tls", "client_auth", "client_ca")
        self.assertRefused(
            "[tls]\nclient_auth = optional\nclient_ca = ca.pem\n", "tls", "client_ca", "ca.pem"
        )
        self.keyFile("notpem.pem", "hello", 0o644)
        self.assertRefused(
            "[tls]\nclient_auth = require\nclient_ca = notpem.pem\n", "tls", "client_ca", "PEM"
        )
        self.keyFile("ca.pem", "-----BEGIN CERTIFICATE-----\n", 0o644)
        settings = self.load("[tls]\nclient_auth = Require\nclient_ca = ca.pem\n")
        self.assertEqual(
            (settings.client_auth, settings.client_ca), ("require", self.inDir("ca.pem"))
        )

    def test_limits(self) -> None:
        self.assertRefused("[limits]\nrate = float:-1\n", "limits", "rate", "float:-1")
        self.assertRefused("[limits]\nrate = float:nan\n", "limits", "rate")
        self.assertRefused("[limits]\nburst = int:-2\n", "limits", "burst")
        self.assertRefused("[limits]\nauth_failures = x\n", "limits", "auth_failures")
        self.assertRefused("[plugin_parms]\np = rate=float:-1\n", "plugin_parms", "p", "rate")
        settings = self.load("[limits]\nrate = float:2.5\nburst = int:10\nauth_failures = int:0\n")
        self.assertEqual(
            (settings.rate_limit, settings.rate_burst, settings.auth_failures), (2.5, 10, 0)
        )
        self.assertEqual(self.load("").auth_failures, 20)
        params = self.load("[plugin_parms]\np = rate=float:1&burst=int:3\n").plugin_params["p"]
        self.assertEqual((params["rate"], params["burst"]), (1.0, 3))
