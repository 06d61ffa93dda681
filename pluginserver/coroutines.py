# -*- test-case-name: tests.test_coroutines -*-
"""
Running plugin coroutines, whichever reactor the server runs on.

On Twisted's asyncio reactor (the server's default) a plugin's coroutine
runs as an asyncio task, so that it may await what the asyncio ecosystem
gives (C{asyncio.sleep}, aiohttp and httpx clients, asyncpg, ...) and
Deferreds alike, in the same coroutine: asyncio's own task driver refuses a
Deferred ("Task got bad yield"), so the task drives the coroutine through
L{_Bridge}, which waits for a Deferred the coroutine awaits and passes
everything else to asyncio unchanged.

On any other reactor Twisted drives the coroutine (Deferreds only), and a
coroutine that awaits an asyncio awaitable fails with L{AsyncioUnavailableError},
naming the reactor, instead of asyncio's puzzling C{RuntimeError}.

Either way L{run} gives a Deferred, and cancelling it cancels the coroutine:
the plugin sees C{CancelledError} where it waits and its C{finally} blocks
run; the Deferred fires when the coroutine has ended, with
L{defer.CancelledError} when it ended cancelled.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

import attr
from twisted.internet import defer
from twisted.python.failure import Failure

_T = TypeVar("_T")

# What asyncio raises when one of its awaitables is used with no asyncio
# loop running (on another reactor): asyncio.sleep and friends, and a
# Future awaited outside a task.
_NO_ASYNCIO = frozenset({"no running event loop", "await wasn't used with future"})


class AsyncioUnavailableError(RuntimeError):
    """
    A plugin coroutine awaited an asyncio awaitable on a reactor that is not
    asyncio's.
    """


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """
    The asyncio loop the running reactor is built on, or L{None} when the
    installed reactor is not Twisted's asyncio reactor (or none is installed
    yet).
    """
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    reactor = sys.modules.get("twisted.internet.reactor")
    if not isinstance(reactor, AsyncioSelectorReactor):
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        # Before the reactor runs (a test body, start-up): the reactor's
        # loop is the thread's current one (see tap.install_reactor).
        return asyncio.get_event_loop_policy().get_event_loop()


def on_uvloop() -> bool:
    """
    Whether the reactor is the asyncio reactor on uvloop's loop.
    """
    loop = asyncio_loop()
    return loop is not None and type(loop).__module__.startswith("uvloop")


def describe_reactor() -> str:
    """
    The reactor and loop the server runs on, for the start-up log line.
    """
    if asyncio_loop() is None:
        return reactor_name()
    kind = "uvloop's loop" if on_uvloop() else "the standard loop"
    return f"the asyncio reactor on {kind}"


def reactor_name() -> str:
    """
    The installed reactor's class, for messages.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    return type(reactor).__name__ if reactor is not None else "no reactor"


def run(coroutine: Coroutine[Any, Any, _T]) -> defer.Deferred[_T]:
    """
    Run a plugin's coroutine: an asyncio task on the asyncio reactor, driven
    by Twisted on any other.

    @return: a Deferred of its outcome; cancelling it cancels the
        coroutine.
    """
    loop = asyncio_loop()
    if loop is None:
        return defer.Deferred.fromCoroutine(_withoutAsyncio(coroutine))
    task = loop.create_task(_bridged(coroutine))
    # A task cancelled before its first step never starts the coroutine:
    # close it, so that Python does not warn it was never awaited.
    task.add_done_callback(lambda _: coroutine.close())
    d: defer.Deferred[Any] = defer.Deferred.fromFuture(task)
    return d.addCallbacks(_escaped, _cancelled)


@attr.s(frozen=True, auto_attribs=True)
class _Escaped:
    """
    A C{KeyboardInterrupt} or C{SystemExit} a plugin's coroutine raised,
    carried out of its task as a value: asyncio re-raises those two out of
    the loop itself, which would stop the whole server.
    """

    failure: Failure


def _escaped(result: Any) -> Any:
    return result.failure if type(result) is _Escaped else result


def _cancelled(failure: Failure) -> Failure:
    """
    A task that ended cancelled is a L{defer.CancelledError}, as Twisted
    code (C{addTimeout}, the web layer) expects of a cancelled Deferred.
    """
    if failure.check(asyncio.CancelledError):
        return Failure(defer.CancelledError())
    return failure


async def _withoutAsyncio(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """
    Await C{coroutine} on a reactor that is not asyncio's, turning asyncio's
    "no loop" errors into one that says why.
    """
    try:
        return await coroutine
    except RuntimeError as e:
        if str(e) not in _NO_ASYNCIO:
            raise
        raise AsyncioUnavailableError(
            f"asyncio awaitables need the asyncio reactor; this server runs on "
            f"{reactor_name()} (started with twistd -r)"
        ) from e


async def _bridged(coroutine: Coroutine[Any, Any, _T]) -> _T:
    # A real coroutine for the task to run (asyncio.Task takes no other
    # awaitable), awaiting the bridge.
    try:
        result: _T = await _Bridge(coroutine)
    except (KeyboardInterrupt, SystemExit):
        return _Escaped(Failure())  # type: ignore[return-value]
    return result


class _Bridge:
    """
    Await a coroutine inside an asyncio task, waiting for the Deferreds it
    awaits.

    A coroutine awaiting a Deferred yields the Deferred itself until it has
    a result (C{Deferred.__await__}).  The bridge waits for that result on an
    asyncio future, then resumes the coroutine, which reads the result from
    the Deferred; anything else the coroutine yields (asyncio futures, a
    bare C{yield} of C{asyncio.sleep(0)}) goes to the task untouched, and
    what the task sends or throws back goes to the coroutine.  When the task
    is cancelled while the coroutine waits on a Deferred, the Deferred is
    cancelled, and the coroutine sees what it awaited fail with
    L{defer.CancelledError} (while it waits on asyncio, it sees
    C{asyncio.CancelledError}, as asyncio code expects).
    """

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self._coroutine = coroutine

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine = self._coroutine
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                yielded = coroutine.send(send) if throw is None else coroutine.throw(throw)
            except StopIteration as e:
                return e.value
            send = throw = None
            if isinstance(yielded, defer.Deferred):
                try:
                    yield from _settled(yielded)
                except GeneratorExit:
                    coroutine.close()
                    raise
                except BaseException as e:
                    throw = e
            else:
                try:
                    send = yield yielded
                except GeneratorExit:
                    coroutine.close()
                    raise
                except BaseException as e:
                    throw = e


def _settled(d: defer.Deferred[Any]) -> Generator[Any, None, None]:
    """
    Wait, in an asyncio task, until C{d} has a result, leaving the result in
    C{d} for its awaiter to read.  Cancelling the task cancels C{d} and ends
    the wait (a canceller that does not fire C{d} leaves the awaiter
    waiting, as on any reactor).
    """
    future = asyncio.get_running_loop().create_future()

    def wake(result: object) -> object:
        if not future.done():
            future.set_result(None)
        return result

    d.addBoth(wake)
    try:
        yield from future
    except asyncio.CancelledError:
        # The task is cancelled: cancel what the coroutine awaits, which
        # then sees the Deferred's own CancelledError, as it would with
        # Twisted driving it.
        d.cancel()


def bounded(d: defer.Deferred[_T], seconds: float, clock: Any) -> defer.Deferred[_T]:
    """
    C{d}'s outcome, or L{defer.TimeoutError} once C{seconds} have passed:
    then C{d} is cancelled and whatever it does later is ignored.

    Unlike C{Deferred.addTimeout}, the answer comes at the deadline even
    when C{d} is a coroutine that takes its time to end after the
    cancellation (an asyncio task ends on a later turn of the loop, and
    one that catches C{CancelledError} may never end).
    """
    result: defer.Deferred[_T] = defer.Deferred()

    def expire() -> None:
        result.errback(defer.TimeoutError(f"not finished within {seconds:g} s"))
        d.cancel()

    timer: Any = clock.callLater(seconds, expire)

    def settled(outcome: object) -> None:
        if timer.active():
            timer.cancel()
            result.callback(outcome)  # type: ignore[arg-type]
        # Else the deadline passed: the outcome (mostly the cancellation)
        # is dropped here, which also keeps a failure from being reported
        # as unhandled.

    d.addBoth(settled)
    return result


def ended(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """
    A Deferred that fires with L{None} when C{d} fires, leaving C{d}'s
    result to C{d}'s own callbacks.
    """
    done: defer.Deferred[None] = defer.Deferred()

    def fire(result: object) -> object:
        done.callback(None)
        return result

    d.addBoth(fire)
    return done


__all__ = [
    "AsyncioUnavailableError",
    "asyncio_loop",
    "bounded",
    "describe_reactor",
    "ended",
    "on_uvloop",
    "reactor_name",
    "run",
]
