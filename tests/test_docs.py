"""
The docs kept honest.

docs/plugins.md: every fenced python block marked C{<!-- plugin: NAME -->}
is written to a plugins directory as C{NAME.py} and loaded through a real
registry, with the settings of the block marked C{<!-- config -->}; every
C{curl} of a console block marked C{<!-- check -->} is then made in memory
through L{pluginserver.testing} and must answer what the doc shows (status,
shown headers but C{Date}, JSON body).  The block marked
C{<!-- test: PATH -->} is written out with its plugin and run by trial in a
subprocess, and must print the result the doc shows.

docs/security.md: every C{curl} of a console block marked C{<!-- check -->}
is made in memory against the block marked C{<!-- config -->} and must
answer what the doc shows.

docs/configuration.md: every C{### `key`} heading under a C{## `[section]`}
heading must be a key of the configuration's key table (L{KEYS}), every key
of the table must be documented under its section's heading, the
example under each key must change what that key reads, its documented
default must be what leaving the key out gives, and every ini block must
load (or, when marked C{<!-- error: TEXT -->}, fail with TEXT).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attr
from twisted.internet import defer, utils
from twisted.trial.unittest import SynchronousTestCase

from pluginserver.config import KEYS, OWNED_SECTIONS, ConfigError, Settings, load_settings
from pluginserver.testing import serve
from tests.helpers import ServerCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


# ---------------------------------------------------------------------------
# Reading the markdown


@attr.s(auto_attribs=True, frozen=True)
class Block:
    """
    One fenced block of a markdown file.

    @ivar lang: the fence's info string (C{python}, C{ini}, C{console}, ...).
    @ivar text: the block's content, dedented.
    @ivar marker: the HTML comment on the line right before the fence,
        without C{<!--}/C{-->}, or L{None}.
    @ivar h2: the last C{## } heading before it.
    @ivar h3: the last C{### } heading before it (under that C{## }).
    @ivar line: its first line number.
    @ivar after: the paragraph right after the block.
    """

    lang: str
    text: str
    marker: str | None
    h2: str | None
    h3: str | None
    line: int
    after: str


_MARKER = re.compile(r"^<!--\s*(.*?)\s*-->$")


def read_doc(name: str) -> str:
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        return f.read()


def blocks(text: str) -> list[Block]:
    """
    The fenced blocks of a markdown text, in order.
    """
    lines = text.splitlines()
    found: list[Block] = []
    marker: str | None = None
    h2: str | None = None
    h3: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if stripped.startswith("```"):
            start = index
            lang = stripped[3:].strip()
            body: list[str] = []
            index += 1
            while index < len(lines) and not lines[index].strip().startswith("```"):
                body.append(lines[index])
                index += 1
            after: list[str] = []
            follow = index + 1
            while follow < len(lines) and not lines[follow].strip():
                follow += 1
            while follow < len(lines) and lines[follow].strip():
                after.append(lines[follow])
                follow += 1
            found.append(
                Block(
                    lang,
                    textwrap.dedent("\n".join(body) + "\n"),
                    marker,
                    h2,
                    h3,
                    start + 1,
                    " ".join(after),
                )
            )
            marker = None
        elif _MARKER.match(stripped):
            marker = _MARKER.match(stripped).group(1)  # type: ignore[union-attr]
        elif stripped:
            marker = None
            if line.startswith("## "):
                h2, h3 = line[3:].strip(), None
            elif line.startswith("### "):
                h3 = line[4:].strip()
        index += 1
    return found


def marked(found: Sequence[Block], prefix: str) -> Iterator[tuple[str, Block]]:
    """
    The blocks whose marker is C{prefix} or C{prefix: VALUE}, with VALUE.
    """
    for block in found:
        if block.marker is None:
            continue
        head, _, value = block.marker.partition(":")
        if head.strip() == prefix:
            yield value.strip(), block


def commands(console: str) -> list[tuple[str, list[str]]]:
    """
    The C{$ command} lines of a console block, each with the output lines
    that follow it.
    """
    result: list[tuple[str, list[str]]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            result.append((line[2:], []))
        elif result:
            result[-1][1].append(line)
    return result


# ---------------------------------------------------------------------------
# curl, as the docs use it


@attr.s(auto_attribs=True)
class Curl:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    show_headers: bool


def parse_curl(command: str) -> Curl:
    """
    Understand the curl options the docs use; anything else is an error, so
    a doc cannot silently show a request this checker does not make.
    """
    argv = shlex.split(command)
    if argv[0] != "curl":
        raise ValueError(f"not a curl command: {command}")
    method: str | None = None
    data: list[str] = []
    binary: str | None = None
    headers: dict[str, str] = {}
    show_headers = head = False
    url: str | None = None
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-s", "-S", "-sS"):
            continue
        elif arg == "-i":
            show_headers = True
        elif arg == "-I":
            show_headers = head = True
        elif arg == "-X":
            method = next(args)
        elif arg == "-d":
            data.append(next(args))
        elif arg == "--data-binary":
            binary = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg.startswith("-"):
            raise ValueError(f"curl option {arg} is not understood by tests/test_docs.py")
        else:
            url = arg
    if url is None:
        raise ValueError(f"no URL in {command}")
    body: bytes | None = None
    if data:
        body = "&".join(data).encode("utf-8")
    if binary is not None:
        body = binary.encode("utf-8")
    if body is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/x-www-form-urlencoded"  # as curl does
    if method is None:
        method = "HEAD" if head else "POST" if body is not None else "GET"
    if "://" not in url:
        url = "http://" + url
    rest = url.split("://", 1)[1]
    path = rest[rest.index("/") :] if "/" in rest else "/"
    return Curl(method, path, headers, body, show_headers)


def expected_answer(
    output: list[str], show_headers: bool
) -> tuple[int | None, list[tuple[str, str]], str]:
    """
    The status (when shown), the headers shown (but C{Date}) and the body of
    what the doc shows curl printing.
    """
    if not show_headers:
        return None, [], "\n".join(output).strip()
    status = int(output[0].split()[1])
    headers: list[tuple[str, str]] = []
    index = 1
    while index < len(output) and output[index].strip():
        name, _, value = output[index].partition(":")
        if name.lower() != "date":
            headers.append((name.strip(), value.strip()))
        index += 1
    return status, headers, "\n".join(output[index:]).strip()


# ---------------------------------------------------------------------------
# docs/plugins.md


class PluginGuideTests(ServerCase):
    """
    The plugins of docs/plugins.md answer as the guide shows.
    """

    def setUp(self) -> None:
        super().setUp()
        self.found = blocks(read_doc("plugins.md"))
        self.plugins = dict(marked(self.found, "plugin"))
        self.checks = [block for _, block in marked(self.found, "check")]

    def test_markedBlocks(self) -> None:
        """
        The guide has plugins, checks, one config block and one test, each
        where the checker expects it.
        """
        self.assertIn("hello", self.plugins)
        for name, block in self.plugins.items():
            self.assertEqual(block.lang, "python", name)
            self.assertTrue(name.isidentifier(), name)
        self.assertTrue(self.checks)
        for block in self.checks:
            self.assertEqual(block.lang, "console", block.line)
        self.assertEqual(len(list(marked(self.found, "config"))), 1)
        self.assertEqual(len(list(marked(self.found, "test"))), 1)

    def test_helloIsTheBundledHello(self) -> None:
        """
        "Hello in ten lines" is plugins/hello.py, docstring aside.
        """
        with open(os.path.join(ROOT, "plugins", "hello.py"), encoding="utf-8") as f:
            bundled = ast.parse(f.read())
        documented = ast.parse(self.plugins["hello"].text)
        for tree in (bundled, documented):
            body = tree.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                tree.body = body[1:]
        self.assertEqual(ast.dump(bundled), ast.dump(documented))
        self.assertLessEqual(len(self.plugins["hello"].text.strip().splitlines()), 10)

    def settings(self) -> Settings:
        """
        The guide's configuration, loaded for real, serving self.dir.
        """
        ((_, block),) = marked(self.found, "config")
        self.assertEqual(block.lang, "ini")
        path = os.path.join(os.path.abspath(self.mktemp()), "ps.ini")
        os.makedirs(os.path.dirname(path))
        with open(path, "w", encoding="utf-8") as f:
            f.write(block.text)
        return load_settings(path, environ={}).with_overrides(plugins_dir=self.dir.path)

    @defer.inlineCallbacks
    def serveGuide(self) -> Any:
        """
        Serve every plugin of the guide with the guide's configuration;
        fails the test when any of them does not load.
        """
        for name, block in self.plugins.items():
            self.dir.write(name, block.text)
        self.server = yield serve(self, self.dir.path, config=self.settings(), clock=self.clock)
        self.registry = self.server.registry
        return self.server.report

    @defer.inlineCallbacks
    def test_pluginsLoad(self) -> Any:
        """
        Every documented plugin loads, under the route its file or its
        C{name} gives; helpers are not routes.
        """
        report = yield self.serveGuide()
        routes = set(report.loaded)
        for name in self.plugins:
            if name.startswith("_"):
                self.assertNotIn(name, routes)
        self.assertEqual(len(routes), len([n for n in self.plugins if not n.startswith("_")]))

    @defer.inlineCallbacks
    def test_curlExamplesAnswerAsShown(self) -> Any:
        """
        Every curl of a checked console block, in the guide's order, against
        one server holding every documented plugin.
        """
        yield self.serveGuide()
        seen: set[str] = set()
        for block in self.checks:
            for command, output in commands(block.text):
                where = f"docs/plugins.md line {block.line}: {command}"
                curl = parse_curl(command)
                seen.add(curl.path.lstrip("/").split("/")[0].split("?")[0])
                answer = yield self.server.request(
                    curl.method, curl.path, headers=curl.headers, data=curl.body
                )
                status, headers, body = expected_answer(output, curl.show_headers)
                if status is not None:
                    self.assertEqual(answer.status, status, where)
                for name, value in headers:
                    self.assertEqual(
                        answer.headers.getRawHeaders(name), [value], f"{where}: {name}"
                    )
                    if name.lower() == "content-length" and curl.method != "HEAD":
                        self.assertEqual(len(answer.body), int(value), f"{where}: {name}")
                if body and answer.headers.getRawHeaders("content-type") == ["application/json"]:
                    self.assertEqual(answer.json(), json.loads(body), where)
                elif body:
                    # A page, a CSV...: the text as shown (curl ends its
                    # output with the body's own last newline, if any).
                    self.assertEqual(answer.body.decode("utf-8").rstrip("\n"), body, where)
                else:
                    self.assertEqual(answer.body, b"", where)
        # The guide's divide-by-zero example logs its traceback.
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        routes = set(self.registry.plugins)
        self.assertEqual(routes - seen, set(), "plugins the guide never calls")

    @defer.inlineCallbacks
    def test_testingExampleRuns(self) -> Any:
        """
        The guide's trial test, written out next to its plugin, passes when
        run as the guide says, with the result the guide shows.
        """
        ((target, block),) = marked(self.found, "test")
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "plugins"))
        os.makedirs(os.path.join(root, os.path.dirname(target)))
        for name in set(re.findall(r'"(\w+)\.py"', block.text)):
            with open(os.path.join(root, "plugins", name + ".py"), "w") as f:
                f.write(self.plugins[name].text)
        with open(os.path.join(root, os.path.dirname(target), "__init__.py"), "w"):
            pass
        with open(os.path.join(root, target), "w") as f:
            f.write(block.text)
        shown = next(b for b in self.found if b.lang == "console" and b.line > block.line)
        ((command, output),) = commands(shown.text)
        self.assertEqual(command, "python -m twisted.trial --reactor=asyncio tests")
        env = dict(os.environ)
        # The checkout, after the example's own directory (python -m puts
        # the current directory first), for runs without an installed
        # pluginserver.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "twisted.trial", "--reactor=asyncio", "tests"],
            env=env,
            path=root,
        )
        text = out.decode("utf-8", "replace") + err.decode("utf-8", "replace")
        self.assertEqual(code, 0, text)
        said = " ".join(text.split())
        for line in output:
            if line.startswith("Ran "):
                line = line.split(" in ")[0]
            if line.strip() and not line.startswith("---"):
                self.assertIn(" ".join(line.split()), said)


# ---------------------------------------------------------------------------
# docs/security.md


class SecurityGuideTests(ServerCase):
    """
    The checked curl examples of docs/security.md answer as shown, in
    memory, with its marked configuration, the bundled hello plugin and the
    keys its C{export} line sets; the clock moves a minute between blocks.
    """

    @defer.inlineCallbacks
    def test_curlExamplesAnswerAsShown(self) -> Any:
        found = blocks(read_doc("security.md"))
        ((_, config),) = marked(found, "config")
        checks = [block for _, block in marked(found, "check")]
        self.assertGreaterEqual(len(checks), 3)
        text = read_doc("security.md")
        environ = dict(re.findall(r"(PS_\w+)=(\S+)", text.split("<!-- config -->", 1)[1]))
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "ps.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(config.text)
        settings = load_settings(path, environ=environ)
        with open(os.path.join(ROOT, "plugins", "hello.py"), encoding="utf-8") as f:
            self.dir.write("hello", f.read())
        server = yield serve(self, self.dir.path, config=settings, clock=self.clock)
        for block in checks:
            self.clock.advance(60)
            for command, output in commands(block.text):
                where = f"docs/security.md line {block.line}: {command}"
                for name, value in environ.items():
                    command = command.replace(f"${name}", value)
                curl = parse_curl(command)
                answer = yield server.request(
                    curl.method, curl.path, headers=curl.headers, data=curl.body
                )
                status, headers, body = expected_answer(output, curl.show_headers)
                if status is not None:
                    self.assertEqual(answer.status, status, where)
                for name, value in headers:
                    self.assertEqual(
                        answer.headers.getRawHeaders(name), [value], f"{where}: {name}"
                    )
                self.assertEqual(answer.json(), json.loads(body), where)


# ---------------------------------------------------------------------------
# docs/configuration.md

KNOWN: Mapping[tuple[str, str], str] = {(key.section, key.name): key.field for key in KEYS}
"""
Every INI key the configuration reads, and the L{Settings} field it sets:
the key table of L{pluginserver.config}, where each key is declared once
(the old server's C{[network]}/C{[SSL]} keys set the listeners).
"""

PLUGIN_PARAMS = frozenset({"auth", "auth_type", "apikey", "json", "rate", "burst"})
"""The [plugin_parms] parameters the server itself reads."""

NOT_KEYS = frozenset({"path", "listen_origin", "plugin_params", "sections"})
"""L{Settings} fields that no single key sets."""

_SECTION = re.compile(r"^`\[(\w+)\]`")
_KEY = re.compile(r"^`(\w+)`$")
_DEFAULT = re.compile(r"\*\*Default:\*\* `([^`]*)`")


class ConfigurationReferenceTests(SynchronousTestCase):
    """
    docs/configuration.md documents exactly the keys the code reads.
    """

    def setUp(self) -> None:
        self.text = read_doc("configuration.md")
        self.found = blocks(self.text)
        self.files = {path: block.text for path, block in marked(self.found, "file")}
        self.directory = os.path.abspath(self.mktemp())

    def documented(self) -> dict[tuple[str, str], str]:
        """
        Each documented (section, key) with the text under its heading.
        """
        keys: dict[tuple[str, str], str] = {}
        section: str | None = None
        current: tuple[str, str] | None = None
        for line in self.text.splitlines():
            if line.startswith("## "):
                match = _SECTION.match(line[3:].strip())
                section = match.group(1) if match else None
                current = None
            elif line.startswith("### "):
                match = _KEY.match(line[4:].strip())
                current = None
                if section is not None:
                    self.assertIsNotNone(match, f"not a `key` heading: {line}")
                    assert match is not None
                    current = (section, match.group(1))
                    self.assertNotIn(current, keys, "documented twice")
                    keys[current] = ""
            elif current is not None:
                keys[current] += line + "\n"
        return keys

    def load(self, ini: str) -> Settings:
        """
        Load an ini text as the file ps.ini of the test's directory, which
        holds the doc's files, with every environment variable it names set.
        """
        directory = self.directory
        os.makedirs(os.path.join(directory, "plugins"), exist_ok=True)
        for name, content in self.files.items():
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(content)
        path = os.path.join(directory, "ps.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(ini)
        environ = {name: f"from-{name}" for name in re.findall(r"\$\{ENV:(\w+)\}", ini)}
        return load_settings(path, environ=environ)

    def example(self, where: tuple[str, str]) -> Block:
        section, key = where
        for block in self.found:
            if (
                block.lang == "ini"
                and block.h3 == f"`{key}`"
                and f"`[{section}]`" in (block.h2 or "")
            ):
                return block
        self.fail(f"no ini example under [{section}] {key}")

    def test_documentedKeysExist(self) -> None:
        """
        Every key the reference documents is read by the configuration, into
        a field L{Settings} has.
        """
        fields = attr.fields_dict(Settings)
        for section, key in self.documented():
            if section == "plugin_parms":
                self.assertIn(key, PLUGIN_PARAMS, f"[plugin_parms] {key}")
                continue
            self.assertIn((section, key), KNOWN, f"[{section}] {key} is documented, not known")
            self.assertIn(KNOWN[section, key], fields, f"[{section}] {key}")

    def test_documentedSectionsAreTheServers(self) -> None:
        """
        Every section the reference documents keys of is one the server
        owns, or C{[paths]}/C{[plugin_parms]}.
        """
        for section, _ in self.documented():
            self.assertIn(section, (*OWNED_SECTIONS, "paths", "plugin_parms"), section)

    def test_unknownKeysAreDescribed(self) -> None:
        """
        The reference says which sections refuse unknown keys: every owned
        section, named in its "Unknown keys" paragraph.
        """
        paragraph = self.text.split("### Unknown keys", 1)[1].split("\n## ", 1)[0]
        for section in OWNED_SECTIONS:
            self.assertIn(f"`[{section}]`", paragraph, section)

    def test_everyKeyIsDocumented(self) -> None:
        """
        Every key, plugin parameter and settings field is in the reference.
        """
        documented = set(self.documented())
        self.assertEqual(set(KNOWN) - documented, set())
        self.assertEqual({("plugin_parms", p) for p in PLUGIN_PARAMS} - documented, set())
        covered = set(KNOWN.values()) | NOT_KEYS
        self.assertEqual(
            set(attr.fields_dict(Settings)) - covered,
            set(),
            "Settings fields that docs/configuration.md does not document",
        )

    def test_examplesAreRead(self) -> None:
        """
        The example under each key loads, and changes what that key sets.
        """
        baseline = self.load("")
        for where in self.documented():
            block = self.example(where)
            settings = self.load(block.text)
            if where[0] == "plugin_parms":
                params = [dict(p) for p in settings.plugin_params.values()]
                wanted = "auth" if where[1] == "auth_type" else where[1]
                if where[1] == "json":
                    wanted = next(iter(json.loads(next(iter(self.files.values())))))
                self.assertTrue(any(wanted in p for p in params), f"{where}: {params}")
                continue
            field = KNOWN[where]
            self.assertNotEqual(
                getattr(settings, field), getattr(baseline, field), f"[{where[0]}] {where[1]}"
            )

    def test_defaultsAreTheDefaults(self) -> None:
        """
        Writing a key's documented default gives what leaving it out gives.
        """
        checked = 0
        baseline = self.load("")
        for (section, key), text in self.documented().items():
            match = _DEFAULT.search(text)
            if section == "plugin_parms" or match is None:
                continue
            settings = self.load(f"[{section}]\n{key} = {match.group(1)}\n")
            field = KNOWN[section, key]
            self.assertEqual(
                getattr(settings, field), getattr(baseline, field), f"[{section}] {key}"
            )
            checked += 1
        self.assertGreaterEqual(checked, 15)

    def test_iniBlocksLoad(self) -> None:
        """
        Every ini block loads; a block marked C{<!-- error: TEXT -->} fails
        with TEXT in its message.
        """
        for block in self.found:
            if block.lang != "ini":
                continue
            where = f"docs/configuration.md line {block.line}"
            head, _, expected = (block.marker or "").partition(":")
            if head.strip() == "error":
                with self.assertRaises(ConfigError, msg=where) as raised:
                    self.load(block.text)
                self.assertIn(expected.strip(), str(raised.exception), where)
            else:
                self.load(block.text)

    def test_paramsAreAsShown(self) -> None:
        """
        An ini block followed by "gives `{...}`" gives those plugin params,
        in the order of its [plugin_parms] lines.
        """
        checked = 0
        for block in self.found:
            if block.lang != "ini" or not block.after.startswith("gives "):
                continue
            shown = [json.loads(m) for m in re.findall(r"`(\{.*?\})`", block.after)]
            settings = self.load(block.text)
            self.assertEqual(
                [dict(p) for p in settings.plugin_params.values()],
                shown,
                f"docs/configuration.md line {block.line}",
            )
            checked += 1
        self.assertGreaterEqual(checked, 2)


class ReadmeWalkthroughTests(SynchronousTestCase):
    """
    The README walkthrough and then the README's test command, in one clone:
    the walkthrough must leave the checkout as its tests and linters expect.
    """

    def setUp(self) -> None:
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            text = f.read()
        start = text.index("## Walkthrough")
        end = text.index("\n## ", start + 1)
        self.blocks = [b for b in blocks(text[start:end]) if b.lang == "console"]
        self.assertTrue(self.blocks)

    def commands(self) -> list[list[str]]:
        return [
            shlex.split(line[2:].split("<<", 1)[0])
            for block in self.blocks
            for line in block.text.splitlines()
            if line.startswith("$ ")
        ]

    def test_walkthroughWritesOutsideTheCheckout(self) -> None:
        written = []
        for words in self.commands():
            if words[0] == "cat" and ">" in words:
                written.append(words[words.index(">") + 1])
            elif words[:2] == ["sed", "-i"] or words[0] == "cp":
                written.append(words[-1])
        self.assertEqual(len(written), 3, written)
        for path in written:
            self.assertTrue(os.path.isabs(path), path)
            self.assertFalse(
                os.path.abspath(path).startswith(ROOT + os.sep), f"{path} is in the checkout"
            )

    def test_walkthroughPluginIsLintClean(self) -> None:
        (source,) = [
            block.text.split("<<'EOF'\n", 1)[1].rsplit("\nEOF", 1)[0] + "\n"
            for block in self.blocks
            if "<<'EOF'" in block.text
        ]
        path = os.path.join(os.path.abspath(self.mktemp()), "time_now.py")
        os.makedirs(os.path.dirname(path))
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
        config = os.path.join(ROOT, "pyproject.toml")
        for args in (["check"], ["format", "--check"]):
            done = subprocess.run(
                [ruff, *args, "--config", config, path], capture_output=True, text=True
            )
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
