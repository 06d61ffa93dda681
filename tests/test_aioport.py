"""
Tests for L{pluginserver.aioport}: a listening port's connections carried
by the asyncio loop's own transports, over real loopback sockets, and the
transport's rules over a fake asyncio transport.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer  # type: ignore[import-untyped]

from pluginserver import aioport
from pluginserver.service import Listener
from pluginserver.site import PluginServerSite
from tests.helpers import exchange, responses
from tests.process import sleep
from tests.test_channel import HUGE, _Sizes, get


def _read_all(s: socket.socket) -> bytes:
    """
    Everything the server sends until it closes its side.
    """
    received = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return received
        received += chunk


class ServedTests(TestCase):
    """
    The site's channel over the loop's transports, on a real TCP port.
    """

    interface = "127.0.0.1"

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.site = PluginServerSite(_Sizes(), reactor=reactor)
        try:
            self.port = reactor.listenTCP(0, self.site, interface=self.interface)  # type: ignore[attr-defined]
        except Exception as e:
            raise SkipTest(f"cannot listen on {self.interface}: {e}") from None
        self.addCleanup(self.port.stopListening)
        # As the Listener leaves it: bound, not reading.
        self.port.stopReading()
        self.assertTrue(aioport.servable(reactor, self.port))
        self.serving = aioport.serve(reactor, self.port, self.site, 511)
        self.addCleanup(self.serving.stop)
        self.number = self.port.getHost().port

    def tearDown(self) -> Any:
        for channel in list(self.site.channels):
            channel.transport.abortConnection()
        return sleep(0.05)

    def connect(self) -> socket.socket:
        return socket.create_connection((self.interface, self.number), timeout=20)

    def ask(self, data: bytes, halfClose: bool = False) -> defer.Deferred[bytes]:
        """
        Send C{data} on a new connection (then shut its sending side down,
        when C{halfClose}) and read until the server closes it, in a thread.
        """

        def ask() -> bytes:
            with self.connect() as s:
                s.sendall(data)
                if halfClose:
                    s.shutdown(socket.SHUT_WR)
                return _read_all(s)

        return deferToThread(ask)

    @defer.inlineCallbacks
    def test_pipelinedAnswersPastAFullBufferStayInOrder(self) -> Any:
        data = get(b"/small?n=1") + get(b"/huge?n=2") + get(b"/small?n=3")

        with self.connect() as s:
            found = yield deferToThread(exchange, s, data, 3)
        self.assertEqual(
            [(status, body[:2]) for status, body in found],
            [(200, b"1"), (200, b"2 "), (200, b"3")],
        )
        self.assertEqual(len(found[1][1]), HUGE + 2)

    @defer.inlineCallbacks
    def test_theChannelSeesTheConnection(self) -> Any:
        client = self.connect()
        found = yield deferToThread(exchange, client, get(b"/small?n=1"))
        try:
            self.assertEqual(found, [(200, b"1")])
            (channel,) = self.site.channels
            transport = channel.transport
            self.assertIsInstance(transport, aioport.AsyncioConnection)
            self.assertTrue(transport.getTcpNoDelay())
            self.assertEqual(transport.getPeer().port, client.getsockname()[1])
            self.assertEqual(transport.getHost().port, self.number)
            self.assertEqual(transport.getPeer().host, self.interface)
        finally:
            client.close()

    @defer.inlineCallbacks
    def test_halfClosedClientIsAnsweredThenClosed(self) -> Any:
        received = yield self.ask(get(b"/small?n=7"), halfClose=True)
        self.assertEqual(responses(received), [(200, b"7")])

    @defer.inlineCallbacks
    def test_http10IsAnsweredThenClosed(self) -> Any:
        received = yield self.ask(b"GET /small?n=5 HTTP/1.0\r\n\r\n")
        self.assertEqual(responses(received), [(200, b"5")])

    @defer.inlineCallbacks
    def test_malformedRequestIsRefusedAndClosed(self) -> Any:
        # The server's FIN ends the reading, before its linger.
        received = yield self.ask(
            b"GET /small HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        self.assertEqual([status for status, _ in responses(received)], [400])

    @defer.inlineCallbacks
    def test_stoppingEndsAcceptingNotConnections(self) -> Any:
        client = self.connect()
        self.addCleanup(client.close)
        found = yield deferToThread(exchange, client, get(b"/small?n=1"))
        self.assertEqual(found, [(200, b"1")])
        self.serving.stop()
        yield sleep(0.05)
        # The socket still listens (another worker may serve it): a new
        # connection waits in the backlog, and nothing here accepts it.
        late = self.connect()
        self.addCleanup(late.close)
        late.settimeout(0.5)
        late.sendall(get(b"/small?n=2"))
        with self.assertRaises(socket.timeout):
            yield deferToThread(late.recv, 100)
        # The connection accepted before goes on.
        found = yield deferToThread(exchange, client, get(b"/small?n=3"))
        self.assertEqual(found, [(200, b"3")])

    @defer.inlineCallbacks
    def test_theConfiguredBacklogStays(self) -> Any:
        yield sleep(0.05)  # the loop has started serving, and listened again
        with socket.socket(fileno=os.dup(self.port.fileno())) as listening:
            info = listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        # A listening socket's tcpi_sacked is its backlog (Linux); Twisted's
        # listenTCP gave it 50, the loop's own default would be 100.
        (backlog,) = struct.unpack_from("I", info, 28)
        self.assertEqual(backlog, 511)

    @defer.inlineCallbacks
    def test_anErrorInAProtocolEndsItsConnection(self) -> Any:
        class Broken(Protocol):
            def dataReceived(self, data: bytes) -> None:
                raise ZeroDivisionError(data)

        from twisted.internet import reactor

        port = reactor.listenTCP(0, Factory.forProtocol(Broken), interface=self.interface)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        port.stopReading()
        serving = aioport.serve(reactor, port, port.factory, 511)
        self.addCleanup(serving.stop)

        def ask() -> bytes:
            with socket.create_connection((self.interface, port.getHost().port), 20) as s:
                s.sendall(b"anything")
                try:
                    return _read_all(s)
                except ConnectionResetError:
                    return b""

        self.assertEqual((yield deferToThread(ask)), b"")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ServedOverIPv6Tests(ServedTests):
    """
    The same over IPv6 (::1), where the addresses are IPv6 ones.
    """

    interface = "::1"

    @defer.inlineCallbacks
    def test_addressesAreIPv6(self) -> Any:
        client = self.connect()
        found = yield deferToThread(exchange, client, get(b"/small?n=1"))
        try:
            self.assertEqual(found, [(200, b"1")])
            (channel,) = self.site.channels
            self.assertIsInstance(channel.transport.getPeer(), IPv6Address)
            self.assertIsInstance(channel.transport.getHost(), IPv6Address)
        finally:
            client.close()


class _FakeLoopTransport:
    """
    What L{aioport.AsyncioConnection} uses of an asyncio transport.
    """

    def __init__(self, buffered: int = 0, peername: Any = ("127.0.0.1", 40000)) -> None:
        self.written: list[bytes] = []
        self.buffered = buffered
        self.peername = peername
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof = False

    def get_extra_info(self, name: str) -> Any:
        return {"peername": self.peername, "sockname": ("127.0.0.1", 8080)}.get(name)

    def write(self, data: bytes) -> None:
        if self.eof:
            raise RuntimeError("Cannot call write() after write_eof()")  # as uvloop does
        self.written.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.written.extend(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.events: list[Any] = []

    def dataReceived(self, data: bytes) -> None:
        self.events.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.events.append(reason.type if reason is not None else None)


@implementer(IHalfCloseableProtocol)
class _HalfCloser(_Recorder):
    def readConnectionLost(self) -> None:
        self.events.append("read closed")

    def writeConnectionLost(self) -> None:
        self.events.append("write closed")


class _Producer:
    def __init__(self, events: list[Any] | None = None) -> None:
        self.events: list[Any] = [] if events is None else events

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


class _FakeLoop:
    """
    What L{aioport.WriteBatch} uses of the loop: C{call_soon}, run by
    L{endTurn}.
    """

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def call_soon(self, f: Any) -> None:
        self.calls.append(f)

    def endTurn(self) -> None:
        calls, self.calls = self.calls, []
        for f in calls:
            f()


class ConnectionTests(TestCase):
    """
    L{aioport.AsyncioConnection}'s rules, over a fake asyncio transport.
    """

    def setUp(self) -> None:
        self.loop = _FakeLoop()
        self.batch = aioport.WriteBatch(self.loop)

    def connect(
        self, protocol: type[Protocol] = _Recorder, buffered: int = 0, peername: Any = None
    ) -> tuple[aioport.AsyncioConnection, Any, _FakeLoopTransport]:
        connection = aioport.AsyncioConnection(Factory.forProtocol(protocol), self.batch)
        transport = _FakeLoopTransport(buffered, peername or ("127.0.0.1", 40000))
        connection.connection_made(transport)
        return connection, getattr(connection, "protocol", None), transport

    def test_aClientGoneBeforeItIsServedIsDropped(self) -> None:
        # uvloop gives no peer for a client that has already reset.
        connection = aioport.AsyncioConnection(Factory.forProtocol(_Recorder), self.batch)
        transport = _FakeLoopTransport(peername=None)
        transport.peername = None
        connection.connection_made(transport)
        self.assertTrue(transport.aborted)
        self.assertFalse(connection.connected)
        connection.connection_lost(None)  # nothing to tell

    def test_aProtocolThatFailsToStartEndsItsConnection(self) -> None:
        class Failing(_Recorder):
            def connectionMade(self) -> None:
                raise ZeroDivisionError()

        connection, protocol, transport = self.connect(Failing)
        self.assertTrue(transport.aborted)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        connection.connection_lost(None)
        self.assertEqual(protocol.events, [ZeroDivisionError])

    def test_aProtocolThatFailsEndsWithItsFailure(self) -> None:
        class Failing(_HalfCloser):
            def dataReceived(self, data: bytes) -> None:
                raise ZeroDivisionError()

            def readConnectionLost(self) -> None:
                raise KeyError()

        connection, protocol, transport = self.connect(Failing)
        connection.data_received(b"x")
        self.assertTrue(transport.aborted)
        connection.connection_lost(None)
        self.assertEqual(protocol.events, [ZeroDivisionError])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        connection, protocol, transport = self.connect(Failing)
        self.assertTrue(connection.eof_received())
        self.assertTrue(transport.aborted)
        connection.connection_lost(None)
        self.assertEqual(protocol.events, [KeyError])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_theProducerStopsBeforeTheProtocolHearsOfTheLoss(self) -> None:
        connection, protocol, _ = self.connect()
        producer = _Producer(protocol.events)
        connection.registerProducer(producer, True)
        connection.connection_lost(OSError("reset"))
        self.assertEqual(protocol.events, ["stop", ConnectionLost])

    def test_theProtocolIsConnectedWithItsAddresses(self) -> None:
        connection, protocol, _ = self.connect()
        self.assertIs(protocol.transport, connection)
        self.assertEqual(connection.getPeer(), IPv4Address("TCP", "127.0.0.1", 40000))
        self.assertEqual(connection.getHost(), IPv4Address("TCP", "127.0.0.1", 8080))
        connection.data_received(b"abc")
        self.assertEqual(protocol.events, [b"abc"])

    def test_writesGoToTheLoop(self) -> None:
        connection, _, transport = self.connect()
        connection.write(b"a")
        connection.writeSequence([b"b", b"c"])
        self.assertEqual(transport.written, [])  # at the end of the turn
        self.loop.endTurn()
        self.assertEqual(transport.written, [b"abc"])  # in one write
        connection.loseConnection()
        self.assertTrue(transport.closed)
        self.assertTrue(connection.disconnecting)
        connection.write(b"late")  # after close: dropped, as Twisted does
        self.assertEqual(b"".join(transport.written), b"abc")

    def test_pausingReadsPausesTheLoopTransport(self) -> None:
        connection, _, transport = self.connect()
        connection.pauseProducing()
        self.assertFalse(transport.reading)
        connection.resumeProducing()
        self.assertTrue(transport.reading)

    def test_aProducerFollowsTheWriteBuffer(self) -> None:
        connection, _, _ = self.connect()
        producer = _Producer()
        connection.registerProducer(producer, True)
        connection.pause_writing()
        connection.resume_writing()
        self.assertEqual(producer.events, ["pause", "resume"])
        connection.unregisterProducer()
        connection.pause_writing()
        self.assertEqual(producer.events, ["pause", "resume"])

    def test_aProducerRegisteredOnAFullBufferStartsPaused(self) -> None:
        connection, _, _ = self.connect(buffered=100000)
        producer = _Producer()
        connection.registerProducer(producer, True)
        self.assertEqual(producer.events, ["pause"])

    def test_onlyStreamingProducers(self) -> None:
        connection, _, _ = self.connect()
        self.assertRaises(ValueError, connection.registerProducer, _Producer(), False)
        connection.registerProducer(_Producer(), True)
        self.assertRaises(RuntimeError, connection.registerProducer, _Producer(), True)

    def test_endOfInputForAHalfCloseableProtocol(self) -> None:
        connection, protocol, _ = self.connect(_HalfCloser)
        self.assertTrue(connection.eof_received())  # stays open for the answer
        self.assertEqual(protocol.events, ["read closed"])

    def test_endOfInputForAnotherProtocolCloses(self) -> None:
        connection, protocol, transport = self.connect()
        connection.write(b"answered")
        self.assertFalse(connection.eof_received())  # the loop closes it
        self.assertEqual(protocol.events, [])
        self.assertEqual(transport.written, [b"answered"])  # sent before it closes

    def test_halfCloseSendsEndOfOutput(self) -> None:
        connection, _, transport = self.connect()
        connection.loseWriteConnection()
        self.assertTrue(transport.eof)
        self.assertFalse(transport.closed)
        connection.write(b"late")  # dropped, as Twisted does
        connection.writeSequence([b"late"])
        connection.loseWriteConnection()
        self.assertEqual(transport.written, [])

    def test_abort(self) -> None:
        connection, _, transport = self.connect()
        connection.write(b"a")
        connection.abortConnection()
        self.assertTrue(transport.aborted)
        self.loop.endTurn()
        self.assertEqual(transport.written, [])  # an abort sends nothing more

    def test_theWritesOfATurnLeaveTogetherAtItsEnd(self) -> None:
        """
        Every connection that wrote during a turn of the loop sends when the
        turn's reads are done, in one write each; one call per turn.
        """
        connections = [self.connect() for _ in range(3)]
        for n, (connection, _, _) in enumerate(connections):
            connection.write(b"answer %d" % (n,))
            connection.write(b"!")
        self.assertEqual(len(self.loop.calls), 1)
        self.assertEqual([t.written for _, _, t in connections], [[], [], []])
        self.loop.endTurn()
        self.assertEqual(
            [t.written for _, _, t in connections], [[b"answer 0!"], [b"answer 1!"], [b"answer 2!"]]
        )
        connections[0][0].write(b"next")
        self.assertEqual(len(self.loop.calls), 1)  # the next turn's

    def test_aLargeWriteIsSentAtOnce(self) -> None:
        # The loop's transport holds what a slow client has not taken, and
        # pauses the producer: not this connection.
        connection, _, transport = self.connect()
        connection.write(b"a")
        connection.write(b"b" * aioport.SEND_NOW)
        self.assertEqual(transport.written, [b"a" + b"b" * aioport.SEND_NOW])
        self.loop.endTurn()
        self.assertEqual(len(transport.written), 1)

    def test_closingSendsWhatWasWrittenFirst(self) -> None:
        connection, _, transport = self.connect()
        connection.write(b"last")
        connection.loseConnection()
        self.assertEqual(transport.written, [b"last"])
        self.assertTrue(transport.closed)
        connection, _, transport = self.connect()
        connection.write(b"refused")
        connection.loseWriteConnection()
        self.assertEqual(transport.written, [b"refused"])
        self.assertTrue(transport.eof)

    def test_nothingIsSentAfterTheConnectionIsLost(self) -> None:
        connection, _, transport = self.connect()
        connection.write(b"a")
        connection.connection_lost(OSError("reset"))
        self.loop.endTurn()
        self.assertEqual(transport.written, [])

    def test_aFailedSendEndsOnlyItsConnection(self) -> None:
        (failing, _, broken), (other, _, working) = self.connect(), self.connect()

        def fail(data: bytes) -> None:
            raise OSError("broken")

        broken.write = fail  # type: ignore[method-assign]
        failing.write(b"a")
        other.write(b"b")
        self.loop.endTurn()
        self.assertTrue(broken.aborted)
        self.assertEqual(working.written, [b"b"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_lostOnceWithItsReason(self) -> None:
        connection, protocol, _ = self.connect()
        connection.connection_lost(None)
        connection.connection_lost(None)
        self.assertEqual(protocol.events, [ConnectionDone])
        connection, protocol, _ = self.connect()
        connection.connection_lost(OSError("reset"))
        self.assertEqual(protocol.events, [ConnectionLost])


class ListenerTests(TestCase):
    """
    A server's L{Listener} hands its port's connections to the loop once
    the server is ready, and takes them back from it when it stops.
    """

    @defer.inlineCallbacks
    def test_readyListenerIsServedByTheLoop(self) -> Any:
        from twisted.internet import reactor

        site = PluginServerSite(_Sizes(), reactor=reactor)
        listener = Listener("tcp:0:interface=127.0.0.1", "a test", reactor, site)
        listener.privilegedStartService()
        listener.startService()
        number = listener.port.getHost().port
        listener.accept()
        client = socket.create_connection(("127.0.0.1", number), timeout=20)
        self.addCleanup(client.close)
        found = yield deferToThread(exchange, client, get(b"/small?n=1"))
        self.assertEqual(found, [(200, b"1")])
        (channel,) = site.channels
        self.assertIsInstance(channel.transport, aioport.AsyncioConnection)
        yield listener.stopService()
        yield sleep(0.05)
        with self.assertRaises(ConnectionRefusedError):
            yield deferToThread(socket.create_connection, ("127.0.0.1", number), 20)
        channel.transport.abortConnection()
        yield sleep(0.05)


_LAST_TURN = """
import asyncio, sys
if sys.argv[1] == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
from twisted.internet import asyncioreactor
asyncioreactor.install(loop)
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from pluginserver import aioport

class Answer(Protocol):
    def dataReceived(self, data):
        self.transport.write(b"first;")
        reactor.addSystemEventTrigger("before", "shutdown", self.transport.write, b"last")
        reactor.callLater(0.1, reactor.stop)

port = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")
port.stopReading()
aioport.serve(reactor, port, Factory.forProtocol(Answer), 16)
print(port.getHost().port, flush=True)
reactor.run()
"""


class ShutdownTests(TestCase):
    """
    What a connection writes in the loop's last turn, as the reactor shuts
    down (a stream's end when the service stops), is sent before the
    process ends, on either loop: a stopping loop runs no more callbacks,
    so the batch's own end-of-turn call would never come.
    """

    def lastTurn(self, loop: str) -> bytes:
        with subprocess.Popen(
            [sys.executable, "-c", _LAST_TURN, loop],
            stdout=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        ) as process:
            try:
                assert process.stdout is not None
                number = int(process.stdout.readline())
                with socket.create_connection(("127.0.0.1", number), timeout=20) as s:
                    s.sendall(b"go")
                    received = _read_all(s)
                self.assertEqual(process.wait(timeout=20), 0)
                return received
            finally:
                process.kill()

    @defer.inlineCallbacks
    def test_standardLoop(self) -> Any:
        received = yield deferToThread(self.lastTurn, "asyncio")
        self.assertEqual(received, b"first;last")

    @defer.inlineCallbacks
    def test_uvloop(self) -> Any:
        received = yield deferToThread(self.lastTurn, "uvloop")
        self.assertEqual(received, b"first;last")
