# -*- test-case-name: tests.test_config -*-
"""
Configuration: one INI file in, one immutable L{Settings} object out.

The format is the old aiohttp pluginserver's, so its files run unchanged:

  - values may carry a type prefix (C{int:}, C{float:}, C{bool:}, C{list:});
  - C{${section:key}}, C{${ENV:NAME}} and C{${ENV:NAME:-default}} are
    replaced before type conversion, and C{$$} is a literal C{$};
  - comments are whole lines starting with C{#} or C{;};
  - relative file names resolve against the config file's directory;
  - C{[network] bindto/port} and C{[SSL] enabled/keyfile/certfile} still
    describe the listener when C{[server] listen} is not given.

Every key the server reads is declared once, in L{KEYS}: its section, type,
default, L{Settings} attribute and a line of documentation.  In the sections
the server owns (L{OWNED_SECTIONS}) a key that is not in the table is an
error; other sections are free for plugins, but a section name one edit away
from a known one is a warning (L{Settings.warnings}).

Every mistake becomes a L{ConfigError} naming the file, section and key, so
the server can refuse to start with one clear line.  This module knows
nothing of Twisted: listeners are plain endpoint description strings, which
the service turns into endpoints.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlsplit

import attr

from pluginserver.keys import KeySet, as_keys, parse_keys

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

T = TypeVar("T")

_TRUE_WORDS = frozenset({"true", "yes", "on", "1", "enable", "enabled"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0", "disable", "disabled"})
_BOOL_HINT = "true/false, yes/no, on/off, 1/0, enable(d)/disable(d)"

# Endpoint parameters that name files, whatever the endpoint type: they are
# the TLS options of Twisted's ssl: parser, which plugins such as txtorcon
# reuse under the same names.
_ENDPOINT_PATH_KEYS = frozenset(
    {"privateKey", "certKey", "extraCertChain", "caCertsDir", "dhParameters"}
)

_AUTH_MODES = ("global", "plugin", "none", "cert")

CLIENT_AUTH_MODES = ("none", "optional", "require")
"""The values of C{[tls] client_auth}."""

RESERVED_ROUTES = frozenset({"plugins", "reload", "metrics", "health", "dashboard", "openapi.json"})
"""Route names the server keeps for itself: no plugin and no documents tree
may take one (L{pluginserver.registry.RESERVED_NAMES} is this set)."""

ROUTE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
"""What a route name may be: one path segment, as plugins and documents
trees are named."""


class ConfigError(Exception):
    """
    The configuration cannot be used.

    @ivar path: the config file.
    @ivar section: the section at fault, or L{None} for file-level errors.
    @ivar key: the key at fault, or L{None}.
    @ivar message: what was expected and what was found.
    """

    def __init__(
        self,
        path: str,
        section: str | None,
        key: str | None,
        message: str,
    ) -> None:
        # Pass every argument up so the exception pickles and compares.
        super().__init__(path, section, key, message)
        self.path = path
        self.section = section
        self.key = key
        self.message = message

    def __str__(self) -> str:
        parts = [f"{self.path}:"]
        if self.section is not None:
            parts.append(f"[{self.section}]")
        if self.key is not None:
            parts.append(f"{self.key}:")
        parts.append(self.message)
        return " ".join(parts)


# ---------------------------------------------------------------------------
# Values


def parse_value(raw: str) -> Any:
    """
    Convert one configuration value according to its type prefix.

    C{int:8080} -> C{8080}, C{float:0.5} -> C{0.5}, C{bool:yes} -> C{True},
    C{list:a int:2} -> C{["a", 2]} (items split on any whitespace, newlines
    included, and each converted by these same rules); a value without a
    known prefix is returned unchanged as a string.

    @raise ValueError: the prefix is known but what follows it is not of
        that type; the message says what was expected and what was found.
    """
    prefix, colon, rest = raw.partition(":")
    if not colon:
        return raw
    if prefix == "int":
        try:
            return int(rest.strip())
        except ValueError:
            raise ValueError(f"expected an integer, found {raw!r}") from None
    if prefix == "float":
        try:
            return float(rest.strip())
        except ValueError:
            raise ValueError(f"expected a number, found {raw!r}") from None
    if prefix == "bool":
        word = rest.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise ValueError(f"expected a boolean ({_BOOL_HINT}), found {raw!r}")
    if prefix == "list":
        return [parse_value(item) for item in rest.split()]
    return raw


def _unescape(text: str) -> str:
    """
    Remove endpoint-string backslash escapes (C{\\:} -> C{:}), as Twisted's
    tokenizer does.  A trailing lone backslash is kept.
    """
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            char = next(chars, "\\")
        out.append(char)
    return "".join(out)


def _escape(text: str) -> str:
    """
    Quote text for use as one endpoint-string argument: backslash, colon and
    equals sign (so a positional path with C{=} is not read as a keyword).
    """
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _split_unescaped(text: str, separator: str, limit: int = -1) -> list[str]:
    """
    Split C{text} on C{separator} wherever it is not backslash-escaped,
    keeping the escapes themselves intact in the pieces.
    """
    pieces: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == separator and limit != len(pieces):
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    pieces.append("".join(current))
    return pieces


def _absolute(path: str, base_dir: str) -> str:
    """
    Make a file name absolute: C{~} expands, relative names join
    C{base_dir}.
    """
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(path)))


def _resolve_argument(escaped: str, base_dir: str) -> str:
    """
    Resolve one escaped endpoint argument that names a file.  Absolute names
    come back exactly as written, escapes and all.
    """
    path = _unescape(escaped)
    # Empty means "not given" and "@name" is a Linux abstract socket: neither
    # is a file name.
    if not path or path.startswith("@"):
        return escaped
    if os.path.isabs(path):
        return escaped
    return _escape(_absolute(path, base_dir))


def resolve_endpoint_paths(description: str, base_dir: str) -> str:
    """
    Make the relative file names inside a Twisted endpoint description
    absolute against C{base_dir}.

    Files are the values of C{privateKey=}, C{certKey=}, C{extraCertChain=},
    C{caCertsDir=} and C{dhParameters=}, and the socket path of a C{unix:}
    endpoint (first positional argument or C{address=}).  C{~} expands.
    Everything else, including backslash escapes and absolute paths, is kept
    exactly as written, so the result parses as the original would have
    from C{base_dir}.
    """
    segments = _split_unescaped(description, ":")
    is_unix = _unescape(segments[0]).strip().lower() == "unix"
    seen_positional = False
    for index in range(1, len(segments)):
        pieces = _split_unescaped(segments[index], "=", limit=1)
        if len(pieces) == 1:
            # Only the first positional argument of unix: is its path.
            if is_unix and not seen_positional:
                segments[index] = _resolve_argument(pieces[0], base_dir)
            seen_positional = True
            continue
        name = _unescape(pieces[0])
        if name in _ENDPOINT_PATH_KEYS or (is_unix and name == "address"):
            value = _resolve_argument(pieces[1], base_dir)
            segments[index] = f"{pieces[0]}={value}"
    return ":".join(segments)


# ---------------------------------------------------------------------------
# Coercion of the known keys.  Each coercer takes the typed value (from
# parse_value) and the raw text (for the message), and raises ValueError
# saying what it expected and what it found.

Coercer = Callable[[Any, str], T]


def _integer(minimum: int, maximum: int | None = None) -> Coercer[int]:
    """
    An integer within bounds; an unprefixed string is converted.
    """
    if maximum is None:
        expected = f"an integer >= {minimum}"
    else:
        expected = f"an integer from {minimum} to {maximum}"

    def coerce(value: Any, raw: str) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                pass
        # bool is an int subclass; bool:true is never a sensible count.
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= minimum
            and (maximum is None or value <= maximum)
        ):
            return value
        raise ValueError(f"expected {expected}, found {raw!r}")

    return coerce


def _seconds(allow_zero: bool) -> Coercer[float]:
    """
    A finite number of seconds, positive (or zero when allowed); an
    unprefixed string or an C{int:} value is converted.
    """
    expected = "a number of seconds " + (">= 0" if allow_zero else "> 0")

    def coerce(value: Any, raw: str) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number) and (number > 0 or (allow_zero and number == 0)):
                return number
        raise ValueError(f"expected {expected}, found {raw!r}")

    return coerce


def _boolean(value: Any, raw: str) -> bool:
    """
    A boolean; an unprefixed string may be any of the C{bool:} words.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError(f"expected a boolean ({_BOOL_HINT}), found {raw!r}")


def _string(value: Any, raw: str) -> str:
    """
    A plain string: a type prefix here is a mistake, not a conversion.
    """
    if isinstance(value, str):
        return value
    raise ValueError(f"expected text without a type prefix, found {raw!r}")


def _words(value: Any, raw: str) -> tuple[str, ...]:
    """
    A list of strings: from C{list:} or an unprefixed string split on
    whitespace.
    """
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"expected a list of words, found {raw!r}")


def _log_format(value: Any, raw: str) -> str:
    """
    C{text} or C{json}, any case.
    """
    if isinstance(value, str) and value.strip().lower() in ("text", "json"):
        return value.strip().lower()
    raise ValueError(f"expected text or json, found {raw!r}")


def _networks(value: Any, raw: str) -> tuple[Network, ...]:
    """
    A list of IP addresses or CIDR networks, IPv4 or IPv6.  Host bits are
    allowed (C{10.1.2.3/8} means C{10.0.0.0/8}), as users write them.
    """
    networks: list[Network] = []
    for item in _words(value, raw):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"expected IP addresses or CIDR networks, found {item!r}") from None
    return tuple(networks)


def _origin(item: str) -> str:
    """
    Check and normalise one CORS origin (C{scheme://host[:port]}) to the
    form browsers send in the C{Origin} header: lower case, no trailing
    slash.
    """
    expected = f"expected * or scheme://host[:port], found {item!r}"
    try:
        parts = urlsplit(item)
        port = parts.port
    except ValueError:
        raise ValueError(expected) from None
    if (
        not parts.scheme
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "://" not in item
    ):
        raise ValueError(expected)
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme.lower()
    origin = f"{scheme}://{host}"
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        # Browsers leave a scheme's default port out of Origin.
        origin += f":{port}"
    return origin


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origins(value: Any, raw: str) -> tuple[str, ...]:
    """
    The CORS allow-list: C{*} alone (any origin) or explicit origins.
    """
    items = _words(value, raw)
    if "*" in items:
        if len(items) != 1:
            raise ValueError(f"expected * alone or a list of origins, found {raw!r}")
        return ("*",)
    return tuple(_origin(item) for item in items)


def _hosts(value: Any, raw: str) -> tuple[str, ...] | None:
    """
    The Host allow-list, lower-cased (matching ignores case); empty means
    any host, which is L{None}.
    """
    return tuple(host.lower() for host in _words(value, raw)) or None


def _optional_networks(value: Any, raw: str) -> tuple[Network, ...] | None:
    """
    Like L{_networks}, but empty means "everyone", which is L{None}.
    """
    return _networks(value, raw) or None


def _key_value(value: Any, raw: str) -> Any:
    """
    Keys as written: one string or a C{list:} of them, each in any key
    form (L{pluginserver.keys}); L{_Loader.keys} reads them.  Never echoes
    the value: it holds keys.
    """
    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    ):
        return value
    raise ValueError("expected keys: plain, sha256:, file: or a list: of them (value not shown)")


def _client_auth(value: Any, raw: str) -> str:
    """
    C{none}, C{optional} or C{require}, any case.
    """
    if isinstance(value, str) and value.strip().lower() in CLIENT_AUTH_MODES:
        return value.strip().lower()
    raise ValueError(f"expected none, optional or require, found {raw!r}")


def _rate(value: Any, raw: str) -> float:
    """
    Requests per second: a finite number >= 0 (0 is off).
    """
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    ):
        return float(value)
    raise ValueError(f"expected a number of requests per second >= 0, found {raw!r}")


def _bindto(value: Any, raw: str) -> str:
    """
    An address to bind: IPv6 written bare or bracketed, as users write it,
    comes back bare, as Twisted wants it.  Empty means the default.
    """
    return _string(value, raw).strip().strip("[]")


def _document_trees(value: Any, raw: str) -> tuple[tuple[str, str], ...]:
    """
    C{[paths] documents}: one tree or a C{list:} of them, each C{ROUTE:DIR}
    or C{DIR} alone (the route is then the directory's basename), as the
    old server's C{documents=} key.  The directories come back as written;
    L{_Loader.documents} resolves and checks them.

    The first colon separates the route only when what precedes it is a
    route name (so C{/srv/a:b} is a directory).  A route must be a valid
    route name (one path segment), not one the server keeps for itself,
    and given once.
    """
    if isinstance(value, str):
        items = value.split()
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = value
    else:
        raise ValueError(f"expected ROUTE:DIR or DIR, or a list: of them, found {raw!r}")
    trees: list[tuple[str, str]] = []
    for item in items:
        route, colon, directory = item.partition(":")
        if not colon or "/" in route or "\\" in route:
            route, directory = "", item
        directory = directory.strip()
        if not directory:
            raise ValueError(f"{item!r}: no directory after the route")
        if not route:
            route = os.path.basename(os.path.normpath(os.path.expanduser(directory)))
        if not ROUTE_NAME.match(route):
            raise ValueError(
                f"{item!r}: route {route!r} is not a valid route name "
                "(letters, digits, _ . -; write ROUTE:DIR to choose one)"
            )
        if route in RESERVED_ROUTES:
            raise ValueError(f"{item!r}: route {route!r} is reserved by the server")
        if any(route == known for known, _ in trees):
            raise ValueError(f"route {route!r} is given twice")
        trees.append((route, directory))
    return tuple(trees)


# ---------------------------------------------------------------------------
# The known keys: each declared once, here.  The Settings defaults, the
# loader, the unknown-key check and the configuration reference's test
# (tests/test_docs.py) all read this table.


@attr.s(frozen=True, auto_attribs=True)
class Key:
    """
    One configuration key the server reads.

    @ivar section: its section, as written in the file (case matters).
    @ivar name: the key, lower case (keys are case-insensitive).
    @ivar coerce: turns the typed value (from L{parse_value}) into the
        setting, or raises L{ValueError} saying what it expected.
    @ivar default: the setting when the key is absent.  For a path key it is
        the file name as it would be written (relative to the config file's
        directory), or L{None}.
    @ivar field: the L{Settings} attribute the key sets.
    @ivar doc: what the key is, in one line (docs/configuration.md has the
        full text under the key's own heading).
    @ivar path: the value is a file name, resolved against the config
        file's directory; empty means the default.
    @ivar listener: the key is one of those that together describe the
        listeners (C{[server] listen}, or the old C{[network]} and C{[SSL]}
        keys): L{_Loader.listeners} combines them into C{field}.
    """

    section: str
    name: str
    coerce: Coercer[Any] = attr.ib(repr=False)
    default: Any
    field: str
    doc: str
    path: bool = False
    listener: bool = False


KEYS: tuple[Key, ...] = (
    Key(
        "server",
        "listen",
        _words,
        ("tcp:8080:interface=127.0.0.1",),
        "listen",
        "The listeners: Twisted endpoint strings.",
        listener=True,
    ),
    Key("server", "max_body", _integer(0), 1048576, "max_body", "The largest request body, bytes."),
    Key(
        "server",
        "request_timeout",
        _seconds(False),
        30.0,
        "request_timeout",
        "Seconds a handler may take before the client gets 504.",
    ),
    Key(
        "server",
        "idle_timeout",
        _seconds(False),
        60.0,
        "idle_timeout",
        "Seconds before an idle connection is closed.",
    ),
    Key(
        "server",
        "header_timeout",
        _seconds(False),
        10.0,
        "header_timeout",
        "Seconds a request's head may take to arrive.",
    ),
    Key(
        "server",
        "shutdown_timeout",
        _seconds(True),
        10.0,
        "shutdown_timeout",
        "Seconds requests in flight may take to finish on shutdown.",
    ),
    Key(
        "server",
        "start_timeout",
        _seconds(False),
        30.0,
        "start_timeout",
        "Seconds a plugin's start() or stop() may take.",
    ),
    Key("server", "threads", _integer(1), 10, "threads", "Threads for blocking handlers."),
    Key(
        "server",
        "workers",
        _integer(1, 256),
        1,
        "workers",
        "Worker processes serving the listeners; 1 serves in the twistd process itself.",
    ),
    Key(
        "server",
        "uvloop",
        _boolean,
        True,
        "uvloop",
        "Run the asyncio reactor on uvloop's loop; false gives the standard loop.",
    ),
    Key(
        "server",
        "allowed_hosts",
        _hosts,
        None,
        "allowed_hosts",
        "The Host header allow-list; absent or empty means any host.",
    ),
    Key("server", "log_format", _log_format, "text", "log_format", "The log format: text or json."),
    Key(
        "server",
        "access_log",
        _string,
        None,
        "access_log",
        "The access log file; absent means none.",
        path=True,
    ),
    Key(
        "server",
        "metrics_public",
        _boolean,
        False,
        "metrics_public",
        "Serve /metrics without the global key.",
    ),
    Key(
        "server",
        "dashboard",
        _boolean,
        True,
        "dashboard",
        "Serve the bundled dashboard at /dashboard/ (and redirect / there).",
    ),
    Key(
        "paths",
        "plugins",
        _string,
        "plugins",
        "plugins_dir",
        "The plugins directory.",
        path=True,
    ),
    Key(
        "paths",
        "documents",
        _document_trees,
        (),
        "documents",
        "Static document trees: ROUTE:DIR, or DIR served at its basename.",
    ),
    Key(
        "auth",
        "apikey",
        _key_value,
        None,
        "apikey",
        "The global API key (plain, sha256:, file: or a list: of them); absent means none.",
    ),
    Key(
        "auth",
        "admin_apikey",
        _key_value,
        None,
        "admin_apikey",
        "The key the utility routes need instead of the global one; absent means none.",
    ),
    Key(
        "auth",
        "allow_query_key",
        _boolean,
        False,
        "allow_query_key",
        "Also accept the key as ?apikey= (insecure).",
    ),
    Key("cors", "enabled", _boolean, False, "cors_enabled", "Turn the CORS checks on."),
    Key("cors", "origin_url", _origins, (), "cors_origins", "The allowed origins, or *."),
    Key(
        "access",
        "allow",
        _optional_networks,
        None,
        "access_allow",
        "The client networks served; absent or empty means everyone.",
    ),
    Key(
        "access",
        "trusted_proxies",
        _networks,
        (),
        "trusted_proxies",
        "The proxies whose X-Forwarded-For is believed.",
    ),
    Key(
        "tls",
        "client_auth",
        _client_auth,
        "none",
        "client_auth",
        "Client certificates on every ssl: listener: none, optional or require.",
    ),
    Key(
        "tls",
        "client_ca",
        _string,
        None,
        "client_ca",
        "The PEM CA certificate(s) that sign accepted client certificates.",
        path=True,
    ),
    Key(
        "limits",
        "rate",
        _rate,
        0.0,
        "rate_limit",
        "Requests per second per client address; 0 means no rate limit.",
    ),
    Key(
        "limits",
        "burst",
        _integer(0),
        0,
        "rate_burst",
        "Requests a client address may make at once above the rate; 0 means the rate, at least 1.",
    ),
    Key(
        "limits",
        "auth_failures",
        _integer(0),
        20,
        "auth_failures",
        "Failed key checks per client address per minute before 429; 0 means no limit.",
    ),
    # The old server's listener keys: used when [server] listen is absent.
    Key(
        "network",
        "bindto",
        _bindto,
        "127.0.0.1",
        "listen",
        "The old server's listening address.",
        listener=True,
    ),
    Key(
        "network",
        "port",
        _integer(1, 65535),
        8080,
        "listen",
        "The old server's listening port.",
        listener=True,
    ),
    Key(
        "SSL",
        "enabled",
        _boolean,
        False,
        "listen",
        "Serve TLS on the [network] address.",
        listener=True,
    ),
    Key(
        "SSL",
        "keyfile",
        _string,
        None,
        "listen",
        "The PEM private key, when [SSL] is enabled.",
        path=True,
        listener=True,
    ),
    Key(
        "SSL",
        "certfile",
        _string,
        None,
        "listen",
        "The PEM certificate and chain, when [SSL] is enabled.",
        path=True,
        listener=True,
    ),
)
"""Every key the server reads, in the order the reference documents them."""

OWNED_SECTIONS: tuple[str, ...] = (
    "server",
    "network",
    "SSL",
    "auth",
    "cors",
    "access",
    "tls",
    "limits",
)
"""
The sections the server owns: a key in one of them that is not in L{KEYS}
is an error.
"""

KNOWN_SECTIONS: tuple[str, ...] = (*OWNED_SECTIONS, "paths", "plugin_parms", "DEFAULT")
"""
Every section name the server gives a meaning to.  C{[paths]} has a known
key but stays free for plugins, as does any other section; a section name
one edit away from one of these is reported as a likely misspelling.
"""

_KEY_INDEX: Mapping[tuple[str, str], Key] = MappingProxyType(
    {(key.section, key.name): key for key in KEYS}
)


def known_key(section: str, name: str) -> Key | None:
    """
    The table's entry for C{[section] name}, or L{None}.
    """
    return _KEY_INDEX.get((section, name.lower()))


def _field_default(field: str) -> Any:
    """
    The default of the L{Settings} attribute C{field}: the default of the
    one key that sets it directly.
    """
    (key,) = [key for key in KEYS if key.field == field and not key.listener]
    return key.default


def _one_edit(a: str, b: str) -> bool:
    """
    Are C{a} and C{b} at most one edit apart: a character added, removed or
    changed, or two neighbours swapped?
    """
    if a == b:
        return True
    if len(a) == len(b):
        diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diffs) == 1:
            return True
        first, *rest = diffs
        return (
            len(diffs) == 2
            and rest[0] == first + 1
            and a[first] == b[first + 1]
            and a[first + 1] == b[first]
        )
    short, long = sorted((a, b), key=len)
    if len(long) - len(short) != 1:
        return False
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def misspelt_sections(names: Iterable[str]) -> dict[str, str]:
    """
    The section names that look like misspellings of a known one, each with
    the known name: C{[path]}, C{[sever]}, C{[Server]}, C{[ssl]},
    C{[plugin_params]}.  Case differences count: section names are
    case-sensitive, so C{[Server]} is not C{[server]}.

    @return: C{{written: known}}, in the order given.
    """
    found: dict[str, str] = {}
    for name in names:
        if name in KNOWN_SECTIONS:
            continue
        for known in KNOWN_SECTIONS:
            if _one_edit(name.lower(), known.lower()):
                found[name] = known
                break
    return found


def _unknown_key_message(section: str, name: str) -> str:
    """
    Say that C{[section] name} is unknown, naming the nearest known key:
    one of the section's own, or the same key in another section.
    """
    own = [key.name for key in KEYS if key.section == section]
    close = difflib.get_close_matches(name, own, n=1)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    elsewhere = [key for key in KEYS if key.name == name and key.section != section]
    if elsewhere:
        return f"unknown key (did you mean [{elsewhere[0].section}] {name}?)"
    if not own:
        return f"unknown key (this version reads no keys in [{section}])"
    if len(own) <= _LISTED_KEYS:
        return f"unknown key (the keys of [{section}] are {', '.join(own)})"
    return f"unknown key (docs/configuration.md lists the keys of [{section}])"


# Up to this many known keys are listed in an unknown-key message; more
# would not fit the one line it must be.
_LISTED_KEYS = 5


# ---------------------------------------------------------------------------
# Listeners beyond loopback, for the warnings.  Endpoint strings are read as
# text here, with Twisted's argument order for its built-in types.

# The 1-based place of interface among the positional arguments (port
# first) of Twisted's tcp:, tcp6: and ssl: parsers.
_INTERFACE_POSITION = {"tcp": 2, "tcp6": 3, "ssl": 5}
_ALL_INTERFACES = {"tcp": "0.0.0.0", "tcp6": "::", "ssl": "0.0.0.0"}


def _loopback(name: str) -> bool:
    """
    Is C{name} (a host name or an address, IPv6 bracketed or not) loopback?
    """
    name = name.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def listener_exposure(description: str) -> str | None:
    """
    Where a listener can be reached from beyond this host: C{"all
    interfaces"}, the non-loopback address it binds, or L{None} when it is
    loopback only or not a network listener.

    Only C{tcp:}, C{tcp6:} and C{ssl:} are network listeners here.  A
    C{unix:} socket is local.  A C{systemd:} socket is bound by systemd,
    where this configuration cannot see its address; other endpoint types
    are not known.  Those are never reported.
    """
    segments = [_unescape(s) for s in _split_unescaped(description, ":")]
    kind = segments[0].strip().lower()
    if kind not in _INTERFACE_POSITION:
        return None
    interface = ""
    positional = 0
    for segment in segments[1:]:
        name, equals, value = segment.partition("=")
        if equals:
            if name == "interface":
                interface = value
        else:
            positional += 1
            if positional == _INTERFACE_POSITION[kind]:
                interface = segment
    address = interface.strip().strip("[]") or _ALL_INTERFACES[kind]
    if _loopback(address):
        return None
    try:
        unspecified = ipaddress.ip_address(address).is_unspecified
    except ValueError:
        unspecified = False
    return "all interfaces" if unspecified else address


# ---------------------------------------------------------------------------
# Settings


def _frozen_empty() -> Mapping[str, Mapping[str, Any]]:
    return MappingProxyType({})


@attr.s(frozen=True, auto_attribs=True)
class Settings:
    """
    Everything the server needs from its configuration, checked and typed.

    Paths are absolute; listeners are Twisted endpoint description strings
    whose relative file names are already resolved.  Instances are
    immutable: a reload builds a new one.

    @ivar path: the config file, absolute.
    @ivar listen: endpoint description strings.
    @ivar listen_origin: where the listeners came from (C{"[server] listen"},
        C{"[network] port"}, C{"[SSL] keyfile"}, C{"--listen"}, ...), for
        error messages.
    @ivar plugins_dir: the plugins directory, absolute.
    @ivar plugin_params: each plugin's C{[plugin_parms]}, typed, read-only.
    @ivar sections: every section's typed values, read-only; the known path
        keys hold absolute paths and C{[plugin_parms]} holds the raw
        (interpolated) query strings.

    Every other attribute is set by one key of L{KEYS}, which gives its
    default too.
    """

    path: str
    listen: tuple[str, ...]
    listen_origin: str
    plugins_dir: str
    # The defaults are the key table's (KEYS): declared there, once.
    max_body: int = _field_default("max_body")
    request_timeout: float = _field_default("request_timeout")
    idle_timeout: float = _field_default("idle_timeout")
    header_timeout: float = _field_default("header_timeout")
    shutdown_timeout: float = _field_default("shutdown_timeout")
    start_timeout: float = _field_default("start_timeout")
    threads: int = _field_default("threads")
    workers: int = _field_default("workers")
    uvloop: bool = _field_default("uvloop")
    allowed_hosts: tuple[str, ...] | None = _field_default("allowed_hosts")
    log_format: str = _field_default("log_format")
    access_log: str | None = _field_default("access_log")
    metrics_public: bool = _field_default("metrics_public")
    dashboard: bool = _field_default("dashboard")
    # Digests only (a plain key given here, as tests do, is hashed).
    apikey: KeySet | None = attr.ib(default=_field_default("apikey"), converter=as_keys)
    admin_apikey: KeySet | None = attr.ib(default=_field_default("admin_apikey"), converter=as_keys)
    allow_query_key: bool = _field_default("allow_query_key")
    # Mappings are unhashable and carry plugin keys: keep them out of the
    # hash and the repr.
    plugin_params: Mapping[str, Mapping[str, Any]] = attr.ib(
        factory=_frozen_empty, hash=False, repr=False
    )
    cors_enabled: bool = _field_default("cors_enabled")
    cors_origins: tuple[str, ...] = _field_default("cors_origins")
    access_allow: tuple[Network, ...] | None = _field_default("access_allow")
    trusted_proxies: tuple[Network, ...] = _field_default("trusted_proxies")
    documents: tuple[tuple[str, str], ...] = _field_default("documents")
    client_auth: str = _field_default("client_auth")
    client_ca: str | None = _field_default("client_ca")
    rate_limit: float = _field_default("rate_limit")
    rate_burst: int = _field_default("rate_burst")
    auth_failures: int = _field_default("auth_failures")
    sections: Mapping[str, Mapping[str, Any]] = attr.ib(
        factory=_frozen_empty, hash=False, repr=False
    )

    @property
    def listen_source(self) -> str:
        """
        Where the listeners came from, for messages: C{--listen}, or the
        file and the key (C{/etc/ps.ini: [server] listen}).
        """
        if self.listen_origin == "--listen":
            return "--listen"
        return f"{self.path}: {self.listen_origin}"

    @property
    def warnings(self) -> tuple[str, ...]:
        """
        What in this configuration is probably a mistake but does not stop
        the server, one line each: a section name that looks like a
        misspelling of a known one (C{[path]} for C{[paths]}), and a
        listener reachable from beyond this host while C{[server]
        allowed_hosts} admits loopback names only, or while there is no
        C{[auth] apikey}.

        Derived from the other attributes, so it follows
        L{with_overrides} and is not part of equality or the hash.
        """
        lines = [
            f"{self.path}: [{written}]: unknown section (did you mean [{known}]?)"
            for written, known in misspelt_sections(self.sections).items()
        ]
        loopback_hosts = self.allowed_hosts is not None and all(
            _loopback(host) for host in self.allowed_hosts
        )
        for description in self.listen:
            exposure = listener_exposure(description)
            if exposure is None:
                continue
            where = f"{self.listen_source}: {description}: listens on {exposure}"
            if loopback_hosts:
                lines.append(
                    f"{where}, but [server] allowed_hosts admits loopback names only: "
                    "clients from elsewhere get 400 (host not allowed)"
                )
            if self.apikey is None:
                lines.append(
                    f"{where} and [auth] apikey is empty: whoever reaches it may call "
                    "the utility routes and every plugin whose auth is global without a key"
                )
        return tuple(lines)

    def with_overrides(
        self,
        listen: Sequence[str] | None = None,
        plugins_dir: str | None = None,
        workers: int | None = None,
    ) -> Settings:
        """
        Apply command-line overrides.  Their paths resolve against the
        current working directory, as a shell user expects.

        @param listen: replaces the configured listeners when not empty;
            the origin becomes C{"--listen"}.
        @param workers: replaces C{[server] workers} (C{--workers}).
        @param plugins_dir: replaces C{[paths] plugins}.  C{json=} files in
            C{[plugin_parms]} are relative to the plugins directory, so the
            plugin parameters are rebuilt against the new one.

        @raise ConfigError: a C{json=} file is unusable from the new
            plugins directory.
        """
        cwd = os.getcwd()
        changes: dict[str, Any] = {}
        if listen:
            changes["listen"] = tuple(
                resolve_endpoint_paths(description, cwd) for description in listen
            )
            changes["listen_origin"] = "--listen"
        if plugins_dir is not None:
            new_dir = _absolute(plugins_dir, cwd)
            changes["plugins_dir"] = new_dir
            raw_params = self.sections.get("plugin_parms")
            if raw_params is not None and new_dir != self.plugins_dir:
                changes["plugin_params"] = _build_plugin_params(self.path, raw_params, new_dir)
        if workers is not None:
            changes["workers"] = workers
        return attr.evolve(self, **changes)


def load_settings(path: str, environ: Mapping[str, str] | None = None) -> Settings:
    """
    Read, interpolate, convert and check the config file at C{path}.

    @param environ: the variables C{${ENV:NAME}} reads; L{os.environ} when
        not given.

    @raise ConfigError: the file cannot be read or parsed, or any value is
        wrong.
    """
    absolute = os.path.abspath(path)
    raw, explicit = _read_ini(absolute)
    loader = _Loader(
        path=absolute,
        base_dir=os.path.dirname(absolute),
        environ=os.environ if environ is None else environ,
        raw=raw,
        explicit=explicit,
    )
    return loader.settings()


def _read_ini(path: str) -> tuple[dict[str, dict[str, str]], dict[str, tuple[str, ...]]]:
    """
    Parse the INI file into raw strings: C{{section: {key: value}}}, keys
    lower-cased, C{[DEFAULT]} under its own name as well as merged into
    every section (as configparser does); and each section's own keys, in
    the file's order, without those that come from C{[DEFAULT]}.
    """
    parser = configparser.ConfigParser(
        interpolation=None,  # we interpolate ourselves, before typing
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=None,  # the old server had none either
        # [DEFAULT] is read as a section of its own and merged below, so
        # that it can be kept out of [plugin_parms], whose keys are plugins.
        default_section="\x00no default section",
    )
    try:
        with open(path, encoding="utf-8") as ini:
            parser.read_file(ini, source=path)
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, f"not UTF-8 text: {e.reason}") from e
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            path,
            None,
            None,
            f"line {e.lineno}: expected a [section] header, found {e.line.strip()!r}",
        ) from e
    except configparser.DuplicateSectionError as e:
        raise ConfigError(path, e.section, None, f"line {e.lineno}: section given twice") from e
    except configparser.DuplicateOptionError as e:
        raise ConfigError(path, e.section, e.option, f"line {e.lineno}: key given twice") from e
    except configparser.ParsingError as e:
        problems = "; ".join(
            f"line {lineno}: cannot parse {line.strip()!r}" for lineno, line in e.errors
        )
        raise ConfigError(path, None, None, problems) from e
    except configparser.Error as e:
        raise ConfigError(path, None, None, str(e)) from e
    defaults = (
        dict(parser.items(configparser.DEFAULTSECT))
        if parser.has_section(configparser.DEFAULTSECT)
        else {}
    )
    raw = {configparser.DEFAULTSECT: defaults}
    written: dict[str, tuple[str, ...]] = {}
    for section in parser.sections():
        if section == configparser.DEFAULTSECT:
            continue
        explicit = dict(parser.items(section))
        written[section] = tuple(explicit)
        raw[section] = explicit if section == "plugin_parms" else {**defaults, **explicit}
    return raw, written


@attr.s(auto_attribs=True)
class _Loader:
    """
    One load of one file: interpolation state and the conversion of raw
    strings into a L{Settings}.
    """

    path: str
    base_dir: str
    environ: Mapping[str, str]
    raw: dict[str, dict[str, str]]
    # Each section's own keys, without those merged in from [DEFAULT].
    explicit: Mapping[str, Sequence[str]] = attr.ib(factory=dict)
    _done: dict[tuple[str, str], str] = attr.ib(factory=dict)
    _active: list[tuple[str, str]] = attr.ib(factory=list)
    _typed: dict[str, dict[str, Any]] = attr.ib(factory=dict)

    # -- interpolation

    def _error(self, section: str | None, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.path, section, key, message)

    def interpolated(self, section: str, key: str) -> str:
        """
        The value of C{[section] key} with every C{${...}} replaced.
        """
        where = (section, key)
        if where in self._done:
            return self._done[where]
        if where in self._active:
            # The key that closes the loop is the one holding the bad
            # reference; show the whole loop so it can be broken anywhere.
            loop = [*self._active[self._active.index(where) :], where]
            chain = " -> ".join(f"${{{s}:{k}}}" for s, k in loop)
            caller = self._active[-1]
            raise self._error(caller[0], caller[1], f"reference cycle: {chain}")
        self._active.append(where)
        try:
            value = self._substitute(section, key, self.raw[section][key])
        finally:
            self._active.pop()
        self._done[where] = value
        return value

    def _substitute(self, section: str, key: str, text: str) -> str:
        out: list[str] = []
        index = 0
        while True:
            dollar = text.find("$", index)
            if dollar < 0:
                out.append(text[index:])
                return "".join(out)
            out.append(text[index:dollar])
            following = text[dollar + 1 : dollar + 2]
            if following == "$":
                out.append("$")
                index = dollar + 2
            elif following == "{":
                end = text.find("}", dollar + 2)
                if end < 0:
                    raise self._error(
                        section,
                        key,
                        f"unterminated ${{ in {text[dollar:]!r} (write $$ for a literal $)",
                    )
                out.append(self._reference(section, key, text[dollar + 2 : end]))
                index = end + 1
            else:
                # A lone $ is literal: passwords contain them.
                out.append("$")
                index = dollar + 1

    def _reference(self, section: str, key: str, body: str) -> str:
        """
        Resolve the inside of one C{${...}} found in C{[section] key}.
        """
        target_section, colon, target_key = body.partition(":")
        target_section = target_section.strip()
        if not colon:
            # ${key}: same section, as configparser's ExtendedInterpolation.
            target_section, target_key = section, body
        if target_section == "ENV":
            name, default_marker, default = target_key.partition(":-")
            name = name.strip()
            if not name or ":" in name:
                raise self._error(
                    section,
                    key,
                    f"expected ${{ENV:NAME}} or ${{ENV:NAME:-default}}, found ${{{body}}}",
                )
            if name in self.environ:
                return self.environ[name]
            if default_marker:
                return default
            raise self._error(section, key, f"environment variable {name} is not set")
        target_key = target_key.strip().lower()  # configparser's optionxform
        if target_section not in self.raw:
            raise self._error(
                section,
                key,
                f"${{{body}}}: there is no section [{target_section}]",
            )
        if target_key not in self.raw[target_section]:
            raise self._error(
                section,
                key,
                f"${{{body}}}: there is no key {target_key} in [{target_section}]",
            )
        return self.interpolated(target_section, target_key)

    # -- typed access

    def _interpolate_all(self) -> None:
        """
        Interpolate and type every value, so an error anywhere in the file
        is reported even in sections nothing reads.
        """
        for section, values in self.raw.items():
            typed: dict[str, Any] = {}
            for key in values:
                text = self.interpolated(section, key)
                if section == "plugin_parms":
                    # Query-string syntax, typed per parameter later.
                    typed[key] = text
                    continue
                try:
                    typed[key] = parse_value(text)
                except ValueError as e:
                    if key in ("apikey", "admin_apikey"):
                        raise self._error(
                            section,
                            key,
                            "invalid type prefix (value not shown)",
                        ) from None
                    raise self._error(section, key, str(e)) from None
            self._typed[section] = typed

    def has(self, section: str, key: str) -> bool:
        """
        Is C{[section] key} present with a non-empty value?
        """
        return key in self._typed.get(section, {}) and self.interpolated(section, key).strip() != ""

    def get(self, section: str, key: str, coerce: Coercer[T], default: T) -> T:
        """
        C{[section] key} converted by C{coerce}, or C{default} when absent.
        """
        if key not in self._typed.get(section, {}):
            return default
        try:
            return coerce(self._typed[section][key], self.interpolated(section, key))
        except ValueError as e:
            raise self._error(section, key, str(e)) from None

    def read(self, section: str, name: str) -> Any:
        """
        The known key C{[section] name} as its table entry (L{KEYS}) says:
        coerced, and for a path key made absolute; its default when absent
        (or, for a path key, empty).
        """
        key = _KEY_INDEX[section, name]
        if not key.path:
            return self.get(section, name, key.coerce, key.default)
        value = self.path_value(section, name)
        if value is None and key.default is not None:
            return _absolute(key.default, self.base_dir)
        return value

    def path_value(self, section: str, name: str) -> str | None:
        """
        C{[section] name} as an absolute path, or L{None} when absent or
        empty.
        """
        value = self.get(section, name, _string, "").strip()
        return _absolute(value, self.base_dir) if value else None

    # -- checking

    def check_keys(self) -> None:
        """
        Refuse a key the server does not know in a section it owns (a typo
        there would otherwise be silently ignored).  Keys that come from
        C{[DEFAULT]} only are not the section's own, and are not checked.

        @raise ConfigError: naming the first unknown key in the file and the
            nearest known one.
        """
        for section, names in self.explicit.items():
            if section not in OWNED_SECTIONS:
                continue
            for name in names:
                if (section, name) not in _KEY_INDEX:
                    raise self._error(section, name, _unknown_key_message(section, name))

    # -- building

    def settings(self) -> Settings:
        """
        Build the L{Settings}.
        """
        self.check_keys()
        self._interpolate_all()
        listen, origin = self.listeners()
        values = {key.field: self.read(key.section, key.name) for key in KEYS if not key.listener}
        values["documents"] = self.documents(values["documents"])
        for name in ("apikey", "admin_apikey"):
            values[name] = self.keys("auth", name, values[name])
        self.check_client_ca(values["client_auth"], values["client_ca"])
        return Settings(
            path=self.path,
            listen=listen,
            listen_origin=origin,
            plugin_params=_build_plugin_params(
                self.path, self._typed.get("plugin_parms", {}), values["plugins_dir"]
            ),
            sections=self.sections(),
            **values,
        )

    def listeners(self) -> tuple[tuple[str, ...], str]:
        """
        The listeners and where they came from: C{[server] listen}, else
        the old C{[network]}/C{[SSL]} keys, else the default.
        """
        listen: tuple[str, ...] = ()
        if self.has("server", "listen"):
            listen = self.read("server", "listen")
        if listen:
            return (
                tuple(resolve_endpoint_paths(d, self.base_dir) for d in listen),
                "[server] listen",
            )
        ssl: bool = self.read("SSL", "enabled")
        has_port = self.has("network", "port")
        has_bindto = self.has("network", "bindto")
        if not (has_port or has_bindto or ssl):
            default: tuple[str, ...] = _KEY_INDEX["server", "listen"].default
            return default, "[server] listen (default)"
        # "port =" (empty) means the default port, as an absent one does.
        port: int = (
            self.read("network", "port") if has_port else _KEY_INDEX["network", "port"].default
        )
        bindto: str = self.read("network", "bindto") or _KEY_INDEX["network", "bindto"].default
        description = f"{port}:interface={_escape(bindto)}"
        if not ssl:
            origin = "[network] port" if has_port else "[network] bindto"
            return (f"tcp:{description}",), origin
        keys = []
        for key in ("keyfile", "certfile"):
            value = self.read("SSL", key)
            if value is None:
                # Never fall back to plain HTTP when TLS was asked for.
                raise self._error("SSL", key, f"SSL is enabled, so {key} is required")
            keys.append(_escape(value))
        return (
            (f"ssl:{description}:privateKey={keys[0]}:certKey={keys[1]}",),
            "[SSL] keyfile",
        )

    def keys(self, section: str, name: str, value: Any) -> KeySet | None:
        """
        The keys of C{[section] name}, every form read now (a C{file:}
        against the config file's directory).
        """
        try:
            return parse_keys(value, self.base_dir)
        except ValueError as e:
            raise self._error(section, name, str(e)) from None

    def check_client_ca(self, client_auth: str, client_ca: str | None) -> None:
        """
        Client certificates need a CA to verify them against, and the CA
        file must hold a PEM certificate that can be read now.
        """
        if client_ca is None:
            if client_auth != "none":
                raise self._error(
                    "tls", "client_auth", f"{client_auth} needs [tls] client_ca (a PEM CA file)"
                )
            return
        try:
            with open(client_ca, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise self._error(
                "tls", "client_ca", f"cannot read {client_ca}: {e.strerror or e}"
            ) from None
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise self._error("tls", "client_ca", f"{client_ca} holds no PEM certificate")

    def documents(self, trees: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """
        The documents trees with each directory made absolute (against the
        config file's directory) and checked: it must be a directory now,
        or the server would answer 404 for every file of a tree it claims
        to serve.
        """
        resolved = []
        for route, directory in trees:
            path = _absolute(directory, self.base_dir)
            if not os.path.isdir(path):
                problem = "does not exist" if not os.path.exists(path) else "is not a directory"
                raise self._error("paths", "documents", f"{route}: {path} {problem}")
            resolved.append((route, path))
        return tuple(resolved)

    def sections(self) -> Mapping[str, Mapping[str, Any]]:
        """
        Every section's typed values, read-only, known paths absolute.
        """
        result: dict[str, Mapping[str, Any]] = {}
        for section, typed in self._typed.items():
            if section == configparser.DEFAULTSECT:
                continue  # already merged into every section
            values = dict(typed)
            for key in values:
                known = _KEY_INDEX.get((section, key))
                if known is not None and known.path:
                    values[key] = self.path_value(section, key)
            result[section] = MappingProxyType(values)
        return MappingProxyType(result)


# ---------------------------------------------------------------------------
# [plugin_parms]


def _build_plugin_params(
    path: str, raw: Mapping[str, Any], plugins_dir: str
) -> Mapping[str, Mapping[str, Any]]:
    """
    Parse every C{[plugin_parms]} entry (C{name = query string}) into a
    read-only mapping of typed parameters.
    """
    return MappingProxyType(
        {
            name: MappingProxyType(_plugin_params(path, name, str(text), plugins_dir))
            for name, text in raw.items()
        }
    )


def _normalise_auth(params: dict[str, Any], fail: Callable[[str], ConfigError]) -> None:
    """
    Fold the old C{auth_type=} spelling into C{auth=}.
    """
    if "auth_type" in params:
        auth_type = params.pop("auth_type")
        if "auth" in params and params["auth"] != auth_type:
            raise fail("auth and auth_type are both given and differ")
        params["auth"] = auth_type


def _plugin_params(path: str, name: str, text: str, plugins_dir: str) -> dict[str, Any]:
    """
    One plugin's parameters: query-string pairs, each value typed, merged
    over its C{json=} file, with C{auth} checked.
    """

    def fail(message: str) -> ConfigError:
        return ConfigError(path, "plugin_parms", name, message)

    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        # Not echoed: the string may hold an apikey.
        raise fail("expected name=value pairs joined by &") from None
    params: dict[str, Any] = {}
    for key, value in pairs:
        try:
            params[key] = parse_value(value)
        except ValueError as e:
            detail = "invalid type prefix (value not shown)" if key == "apikey" else str(e)
            raise fail(f"{key}: {detail}") from None
    _normalise_auth(params, fail)

    json_name = params.pop("json", None)
    if json_name is not None:
        if not isinstance(json_name, str) or not json_name.strip():
            raise fail(f"json: expected a file name, found {json_name!r}")
        from_file = _read_json_params(_absolute(json_name, plugins_dir), fail)
        _normalise_auth(from_file, fail)
        from_file.pop("json", None)
        # The INI is the more specific place: its params win.
        params = {**from_file, **params}

    if "apikey" in params:
        try:
            params["apikey"] = parse_keys(params["apikey"], os.path.dirname(path))
        except ValueError as e:
            raise fail(f"apikey: {e}") from None
    if "auth" in params:
        auth = params["auth"]
        if not isinstance(auth, str) or auth.strip().lower() not in _AUTH_MODES:
            raise fail(f"auth must be global, plugin, none or cert, found {auth!r}")
        params["auth"] = auth = auth.strip().lower()
        if auth == "plugin" and not params.get("apikey"):
            raise fail("auth=plugin needs a non-empty apikey")
    for param, coerce in (("rate", _rate), ("burst", _integer(0))):
        if param in params:
            try:
                params[param] = coerce(params[param], str(params[param]))
            except ValueError as e:
                raise fail(f"{param}: {e}") from None
    return params


def _read_json_params(json_path: str, fail: Callable[[str], ConfigError]) -> dict[str, Any]:
    """
    Read a C{json=} file: it must hold one JSON object.
    """
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise fail(f"json file {json_path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise fail(f"json file {json_path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise fail(f"json file {json_path}: expected a JSON object, found {type(data).__name__}")
    return data
