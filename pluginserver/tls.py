# -*- test-case-name: tests.test_tls,tests.test_channel -*-
"""
Listeners from endpoint strings: TLS listeners whose certificate can be
replaced while they listen, and TCP listeners with a deeper listen backlog.

Twisted listens with a backlog of 50 unless the endpoint string says
C{backlog=}: a burst of new connections beyond that waits for the client's
SYN retransmission (a second or more).  C{tcp:}, C{tcp6:} and C{ssl:}
listeners that do not say get L{DEFAULT_BACKLOG} instead (the kernel may
cap it: C{net.core.somaxconn}).

An C{ssl:} endpoint string gives a Twisted endpoint holding an OpenSSL
context factory.  We put a L{SwappableContextFactory} in front of it: every
new connection asks it for a context, so swapping in a factory made from the
new files serves the new certificate to new connections, while connections
already open keep theirs.  A new pair that does not load (missing file,
key that does not match the certificate) is refused before the swap, and the
old one keeps serving.

Client certificates (C{[tls] client_auth}, L{ClientAuth}): every C{ssl:}
listener's context asks for one (C{optional}) or demands one
(C{require}), and verifies it against C{client_ca}: a certificate that does
not verify (another CA, expired) fails the handshake.  The CA is read again
with the key and certificate, on every reload.
"""

from __future__ import annotations

import socket
from typing import Any

import attr
from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IOpenSSLContextFactory, IStreamServerEndpoint
from zope.interface import implementer  # type: ignore[import-untyped]

DEFAULT_BACKLOG = 511
"""The listen backlog of a TCP listener whose endpoint string sets none (nginx's too)."""

_BACKLOG_KINDS = frozenset({"tcp", "tcp6", "ssl"})


def _fields(description: str) -> list[str]:
    """
    The colon-separated fields of an endpoint string, as Twisted splits
    them: a backslash escapes the next character (C{interface=\\:\\:1}).
    """
    fields = [""]
    escaped = False
    for char in description:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("")
            continue
        fields[-1] += char
    return fields


def with_default_backlog(description: str) -> str:
    """
    C{description} with C{backlog=}L{DEFAULT_BACKLOG} added when it is a
    C{tcp:}, C{tcp6:} or C{ssl:} endpoint string that sets no backlog; any
    other string as it is.
    """
    fields = _fields(description)
    if fields[0].strip().lower() not in _BACKLOG_KINDS:
        return description
    if any(field.startswith("backlog=") for field in fields[1:]):
        return description
    return f"{description}:backlog={DEFAULT_BACKLOG}"


def listen_backlog(description: str) -> int:
    """
    The listen backlog a listener of C{description} asks for: its
    C{backlog=}, else L{DEFAULT_BACKLOG} for a C{tcp:}, C{tcp6:} or C{ssl:}
    endpoint string, else the kernel's most (C{SOMAXCONN}: what systemd
    asks for a socket it hands over, unless told otherwise).
    """
    for field in _fields(with_default_backlog(description))[1:]:
        if field.startswith("backlog="):
            try:
                return int(field[len("backlog=") :])
            except ValueError:
                break  # refused when the configuration was read
    return socket.SOMAXCONN


def server_endpoint(reactor: Any, description: str) -> Any:
    """
    The server endpoint of C{description}, as Twisted's C{serverFromString}
    makes it, with the default backlog of L{with_default_backlog}.
    """
    return serverFromString(reactor, with_default_backlog(description))


class TLSConfigError(Exception):
    """
    A TLS key or certificate could not be used; the message says why.
    """


@attr.s(frozen=True, auto_attribs=True)
class ClientAuth:
    """
    Client certificates on the C{ssl:} listeners.

    @ivar mode: C{none}, C{optional} (asked for, verified when sent) or
        C{require} (the handshake fails without one).
    @ivar ca: the PEM file of the CA certificates that sign them.
    """

    mode: str = "none"
    ca: str | None = None

    @classmethod
    def of(cls, settings: Any) -> ClientAuth:
        """
        The client-certificate settings of a L{pluginserver.config.Settings}.
        """
        return cls(settings.client_auth, settings.client_ca)

    def apply(self, context: SSL.Context) -> None:
        """
        Make C{context} ask for client certificates and verify them.

        @raise TLSConfigError: the CA file cannot be used.
        """
        if self.mode == "none" or self.ca is None:
            return
        try:
            with open(self.ca, "rb") as f:
                cas = x509.load_pem_x509_certificates(f.read())
            context.load_verify_locations(self.ca)
        except OSError as e:
            raise TLSConfigError(f"[tls] client_ca: {e.strerror}: {self.ca}") from None
        except Exception as e:
            raise TLSConfigError(f"[tls] client_ca: {self.ca}: {describe_tls_error(e)}") from None
        # The names the server sends in its certificate request, so that a
        # client holding several certificates picks the right one.
        context.set_client_ca_list([crypto.X509.from_cryptography(c).get_subject() for c in cas])
        flags = SSL.VERIFY_PEER
        if self.mode == "require":
            flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(flags, _verified)
        # Sessions resumed with a client certificate need a context id.
        context.set_session_id(b"pluginserver")


def _verified(connection: Any, certificate: Any, errno: int, depth: int, ok: int) -> bool:
    # OpenSSL's own verdict, chain and expiry included.
    return bool(ok)


NO_CLIENT_AUTH = ClientAuth()


def listener_problem(
    reactor: Any, description: str, client: ClientAuth = NO_CLIENT_AUTH
) -> str | None:
    """
    What is wrong with a listener's endpoint string, in words, or L{None}:
    the string is parsed as Twisted will parse it, and for C{ssl:} the key
    and certificate are loaded and matched, without listening.
    """
    try:
        if is_tls(description):
            load_context_factory(reactor, description, client)
        else:
            server_endpoint(reactor, description)
    except Exception as e:
        return describe_endpoint_error(description, e)
    return None


def describe_endpoint_error(description: str, e: Exception) -> str:
    """
    Say what is wrong with a listener's endpoint string in words.
    """
    if description.split(":", 1)[0].strip().lower() == "systemd" and isinstance(
        e, (IndexError, KeyError)
    ):
        return (
            "no socket was passed by systemd (start it from a .socket unit, "
            "or use a tcp: or ssl: listener)"
        )
    return describe_tls_error(e)


def describe_tls_error(e: Exception) -> str:
    """
    Say what is wrong with a TLS key or certificate in words: OpenSSL's
    errors come as nested lists of tuples.
    """
    if isinstance(e, TLSConfigError):
        return str(e)
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror}: {e.filename}"
    args = getattr(e, "args", ())
    if args and isinstance(args[0], list):
        parts = [str(item[-1]) for item in args[0] if isinstance(item, tuple) and item]
        if parts:
            return f"{type(e).__name__}: {'; '.join(parts)}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def is_tls(description: str) -> bool:
    return description.split(":", 1)[0].strip().lower() == "ssl"


def check_description(description: str) -> None:
    """
    Refuse what would weaken TLS: C{sslmethod=} replaces Twisted's TLS 1.2
    floor with a single, possibly older, protocol version.
    """
    if is_tls(description) and "sslmethod=" in description.lower():
        raise TLSConfigError(
            "sslmethod= is not allowed: TLS 1.2 is the minimum and is never lowered"
        )


def load_context_factory(
    reactor: Any, description: str, client: ClientAuth = NO_CLIENT_AUTH
) -> Any:
    """
    Read the key and certificate of an C{ssl:} endpoint string (and the
    client CA) and build its context now, so that a bad pair is found here
    and not at the first connection.
    """
    check_description(description)
    try:
        endpoint = server_endpoint(reactor, description)
        factory = _contextFactoryOf(endpoint)
        # Twisted's factory makes its context once and hands out that one.
        client.apply(factory.getContext())
    except TLSConfigError:
        raise
    except Exception as e:
        raise TLSConfigError(describe_tls_error(e)) from None
    return factory


def _contextFactoryOf(endpoint: object) -> Any:
    # SSL4ServerEndpoint keeps its context factory in a private attribute:
    # it is the one place Twisted offers to build it from an endpoint string.
    factory = getattr(endpoint, "_sslContextFactory", None)
    if factory is None:
        raise TLSConfigError(f"{endpoint!r} has no TLS context factory")
    return factory


@implementer(IOpenSSLContextFactory)
class SwappableContextFactory:
    """
    An OpenSSL context factory that hands out the context of whichever
    factory it currently holds: Twisted's TLS layer asks for a context for
    each new connection.
    """

    def __init__(self, current: Any) -> None:
        self.current = current

    def getContext(self) -> Any:
        return self.current.getContext()


def tls_endpoint(
    reactor: Any, description: str, client: ClientAuth = NO_CLIENT_AUTH
) -> tuple[IStreamServerEndpoint | SSL4ServerEndpoint, SwappableContextFactory | None]:
    """
    The endpoint for C{description} (with L{DEFAULT_BACKLOG} unless it sets
    one); for C{ssl:} endpoints, with a swappable context factory (also
    returned) in front of its own, asking for client certificates as
    C{client} says.

    (An SSL4ServerEndpoint is an IStreamServerEndpoint too: mypy cannot see
    a zope C{@implementer} without the mypy-zope plugin.)
    """
    endpoint = server_endpoint(reactor, description)
    if not isinstance(endpoint, SSL4ServerEndpoint):
        return endpoint, None
    check_description(description)
    factory = _contextFactoryOf(endpoint)
    if client.mode != "none":
        factory = load_context_factory(reactor, description, client)
    swappable = SwappableContextFactory(factory)
    endpoint._sslContextFactory = swappable
    return endpoint, swappable
