# -*- test-case-name: tests.test_security -*-
"""
Who may ask what: API keys (the global key, the admin key of the utility
routes), the CORS origin allow-list, the client-address allow-list (with
trusted proxies) and the Host-header allow-list.  Keys are kept as digests
(L{pluginserver.keys}); rate limits are in L{pluginserver.ratelimit}.

This module decides; the web layer asks it and answers.  It works on plain
values (bytes from the wire, strings from the settings) so it can be tested
without a request.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import attr
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.logger import Logger

from pluginserver.config import Settings
from pluginserver.keys import KeySet

if TYPE_CHECKING:
    from twisted.web.http_headers import Headers

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

audit = Logger(namespace="pluginserver.audit")
"""The audit log: one event per reload, who asked and how it went."""

PREFLIGHT_HEADERS = b"Authorization, Content-Type, X-API-Key, X-Custom-Auth"
PREFLIGHT_MAX_AGE = b"600"
WWW_AUTHENTICATE = b'Bearer realm="pluginserver"'


def find_key(
    headers: Headers,
    query_key: str | None,
    body_key: str | None,
    allow_query_key: bool,
) -> str | None:
    """
    The API key a request presents; the first source found wins:
    C{Authorization: Bearer}, C{X-API-Key}, C{X-Custom-Auth}, the body field
    C{apikey}, and the query's C{apikey} only when C{allow_query_key} is on.

    @param headers: the request's headers.
    """
    authorization = headers.getRawHeaders(b"authorization")
    if authorization:
        scheme, _, credentials = authorization[0].partition(b" ")
        if scheme.lower() == b"bearer" and credentials.strip():
            return credentials.strip().decode("utf-8", "replace")
    for name in (b"x-api-key", b"x-custom-auth"):
        values = headers.getRawHeaders(name)
        if values and values[0]:
            return values[0].decode("utf-8", "replace")
    if body_key is not None:
        return body_key
    if allow_query_key and query_key is not None:
        return query_key
    return None


@functools.lru_cache(maxsize=4096)
def _ip_in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def _host_name(entry: str) -> str:
    """
    Normalise an allowed-hosts entry or a Host header value (without port):
    lower case, IPv6 without brackets.
    """
    entry = entry.strip().lower()
    if entry.startswith("[") and entry.endswith("]"):
        return entry[1:-1]
    return entry


def host_without_port(host: bytes) -> str:
    """
    The host part of a C{Host} header: C{example.com:8080} -> C{example.com},
    C{[::1]:8080} -> C{::1}.
    """
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text


@attr.s(auto_attribs=True, frozen=True)
class CORSDecision:
    """
    What to do with a request that carries an C{Origin}.

    @ivar allowed: whether the origin may ask.
    @ivar headers: response headers to add when it may.
    """

    allowed: bool
    headers: tuple[tuple[bytes, bytes], ...] = ()


# Slots: CPython 3.11 cannot keep a specialised attribute read on a frozen
# attrs instance with a __dict__ (it deoptimises every few dozen reads), and
# the gate reads this policy on every request.
@attr.s(auto_attribs=True, frozen=True, slots=True)
class SecurityPolicy:
    """
    The security settings, in the form the request path uses them.

    @ivar apikey: the global key(s), or L{None}.
    @ivar admin: the admin key(s) of the utility routes, or L{None}.
    @ivar global_keys: what a route that needs the global key accepts: the
        global keys and the admin keys; L{None} when there is no global key.
    @ivar utility_keys: what the utility routes accept: the admin keys when
        there are, else the global keys; L{None} when neither is set.
    """

    apikey: KeySet | None = None
    admin: KeySet | None = None
    allow_query_key: bool = False
    cors_enabled: bool = False
    cors_any: bool = False
    cors_origins: frozenset[str] = frozenset()
    access_allow: tuple[Network, ...] | None = None
    trusted_proxies: tuple[Network, ...] = ()
    allowed_hosts: frozenset[str] | None = None
    _hosts: dict[bytes, bool] = attr.ib(factory=dict, eq=False, repr=False, init=False)
    global_keys: KeySet | None = attr.ib(default=None, init=False, eq=False)
    utility_keys: KeySet | None = attr.ib(default=None, init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        # Made once here, not on every request.
        both = self.apikey + self.admin if self.apikey and self.admin else self.apikey
        object.__setattr__(self, "global_keys", both)
        object.__setattr__(
            self, "utility_keys", self.admin if self.admin is not None else self.apikey
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> SecurityPolicy:
        origins = tuple(settings.cors_origins)
        return cls(
            apikey=settings.apikey or None,
            admin=settings.admin_apikey or None,
            allow_query_key=settings.allow_query_key,
            cors_enabled=settings.cors_enabled,
            cors_any=origins == ("*",),
            cors_origins=frozenset(o for o in origins if o != "*"),
            access_allow=(
                tuple(settings.access_allow) if settings.access_allow is not None else None
            ),
            trusted_proxies=tuple(settings.trusted_proxies),
            allowed_hosts=(
                frozenset(_host_name(h) for h in settings.allowed_hosts)
                if settings.allowed_hosts
                else None
            ),
        )

    def host_allowed(self, host: bytes | None) -> bool:
        """
        Whether a request with this C{Host} header may be served (defence
        against DNS rebinding).  Without an allow-list every host is.
        """
        if self.allowed_hosts is None:
            return True
        if not host:
            return False
        known = self._hosts.get(host)
        if known is None:
            # Clients send the same few Host headers over and over.
            if len(self._hosts) > 1024:
                self._hosts.clear()
            known = self._hosts[host] = host_without_port(host) in self.allowed_hosts
        return known

    def client_address(self, peer: str, forwarded_for: Sequence[bytes] | None) -> str:
        """
        The client's address: the peer's, unless the peer is a trusted proxy
        that sent C{X-Forwarded-For}; then the nearest address in that chain
        that is not itself a trusted proxy.
        """
        if not forwarded_for or not self.trusted_proxies:
            return peer
        if not _ip_in(peer, self.trusted_proxies):
            return peer
        chain = [
            hop.strip()
            for value in forwarded_for
            for hop in value.decode("latin-1").split(",")
            if hop.strip()
        ]
        for hop in reversed(chain):
            if not _ip_in(hop, self.trusted_proxies):
                return hop
        return chain[0] if chain else peer

    def address_allowed(self, address: str) -> bool:
        """
        Whether this client address is in C{[access] allow} (everyone is,
        when the list is absent).
        """
        if self.access_allow is None:
            return True
        return _ip_in(address, self.access_allow)

    def cors(self, origin: bytes) -> CORSDecision:
        """
        Decide on a request that carries C{Origin}.  Only called when CORS
        is enabled.
        """
        text = origin.decode("latin-1").strip().lower().rstrip("/")
        if self.cors_any:
            # Any origin, never with credentials (browsers refuse the pair).
            return CORSDecision(True, ((b"access-control-allow-origin", b"*"),))
        if text in self.cors_origins:
            return CORSDecision(
                True,
                (
                    (b"access-control-allow-origin", origin.strip()),
                    (b"vary", b"Origin"),
                    (b"access-control-allow-credentials", b"true"),
                ),
            )
        return CORSDecision(False)

    def cross_site(self, origin: bytes | None, fetch_site: bytes | None, own: bytes | None) -> bool:
        """
        Whether a browser sent this request on behalf of a page of another
        site, which CORS does not allow: such a request may not act (reload
        plugins, post to them) even when no key is configured, since the
        browser of a local user would otherwise do it for any web page.

        @param origin: the C{Origin} header, or L{None}.
        @param fetch_site: the C{Sec-Fetch-Site} header, or L{None}.
        @param own: this server's origin as the request names it
            (C{scheme://Host}), or L{None} when it has no C{Host}.
        """
        if origin is not None and self.cors_enabled and self.cors(origin).allowed:
            return False
        if fetch_site is not None and fetch_site.strip().lower() == b"cross-site":
            return True
        if origin is None:
            return False
        return own is None or _origin_key(origin) != _origin_key(own)


_DEFAULT_PORTS = ((b"http://", b":80"), (b"https://", b":443"))


def _origin_key(origin: bytes) -> bytes:
    """
    An origin (C{scheme://host[:port]}) in the one spelling two equal
    origins share: lower case, no trailing slash, no default port.
    """
    text = origin.strip().lower().rstrip(b"/")
    for scheme, port in _DEFAULT_PORTS:
        if text.startswith(scheme) and text.endswith(port):
            return text[: -len(port)]
    return text


def preflight_headers(methods: Iterable[str]) -> tuple[tuple[bytes, bytes], ...]:
    """
    The extra headers of a 204 answer to a CORS preflight.
    """
    return (
        (b"access-control-allow-methods", ", ".join(sorted(methods)).encode("ascii")),
        (b"access-control-allow-headers", PREFLIGHT_HEADERS),
        (b"access-control-max-age", PREFLIGHT_MAX_AGE),
    )


def audit_reload(
    client: str,
    key_id: str | None,
    target: str,
    success: bool,
    failed: Mapping[str, str] | None = None,
    worker: int | None = None,
) -> None:
    """
    Log one reload in the audit log (namespace C{pluginserver.audit}): who
    asked, with which key, what and how it went.  Every reload is logged
    here: by route, by SIGHUP, and (in worker processes) by each worker.

    @param client: the client address after the trusted-proxy rule, or
        C{"signal"} for SIGHUP.
    @param key_id: the id of the key it came with (the first 8 hex digits
        of the key's SHA-256, L{pluginserver.keys.key_id}), or L{None} when
        none was needed: never the key.
    @param target: C{"all"} or the plugin's name.
    @param success: whether everything reloaded.
    @param failed: what failed, with its error.
    @param worker: the worker that reloaded, when there are workers.
    """
    audit.info(
        "Audit: reload {target} by {client} (key {key}){where}: {outcome}",
        audit="reload",
        target=target,
        client=client,
        key=key_id or "none",
        key_id=key_id,
        where="" if worker is None else f" in worker {worker}",
        worker=worker,
        success=success,
        failed=dict(failed or {}),
        outcome="ok" if success else "failed " + ", ".join(sorted(failed or {})),
    )


_CERT_CACHE = "_pluginserver_client_cert"


def client_certificate(transport: Any) -> Mapping[str, Any] | None:
    """
    The verified client certificate of a TLS connection, in the shape
    plugins see as C{request.client_cert}, or L{None} (no TLS, or no
    certificate: the handshake verified any that was sent).  Worked out
    once per connection.
    """
    cached: Mapping[str, Any] | bool | None = getattr(transport, _CERT_CACHE, False)
    if cached is not False and not isinstance(cached, bool):
        return cached
    if cached is None:
        return None
    getPeer = getattr(transport, "getPeerCertificate", None)
    peer = getPeer() if getPeer is not None else None
    described = describe_certificate(peer.to_cryptography()) if peer is not None else None
    try:
        setattr(transport, _CERT_CACHE, described)
    except AttributeError:
        pass
    return described


def _name(name: x509.Name) -> dict[str, str]:
    return {a.rfc4514_attribute_name: str(a.value) for a in name}


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    """
    A certificate as C{request.client_cert} shows it: subject and issuer
    (by attribute short name: C{CN}, C{O}, ...), serial number (hex),
    expiry (ISO 8601, UTC) and SHA-256 fingerprint (hex).
    """
    return {
        "subject": _name(cert.subject),
        "issuer": _name(cert.issuer),
        "serial": format(cert.serial_number, "X"),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }
