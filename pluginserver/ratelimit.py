# -*- test-case-name: tests.test_ratelimit -*-
"""
Rate limits and the auth-failure limit, per client address.

  - C{[limits] rate} and C{burst}: each client address (after the
    trusted-proxy rule) has a token bucket of C{burst} requests refilled at
    C{rate} per second, over every route; a plugin whose C{[plugin_parms]}
    give C{rate=} (and C{burst=}) has buckets of its own instead.
  - C{[limits] auth_failures}: an address whose key checks failed more than
    that many times within a minute gets 429 on every keyed route, right
    key or not, until that minute is over.

Both are decided when a request's head has arrived, before its body is read
and before any plugin runs (L{pluginserver.site}); the answer is 429 with
C{Retry-After}.

Memory is bounded: each bucket is one float (the GCRA "theoretical arrival
time") in a dict kept in least-recently-seen order, and at most
L{MAX_ADDRESSES} addresses are kept per limit (the least recently seen go
first).  Forgetting an address only ever gives it a full bucket again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

MAX_ADDRESSES = 100_000
"""Addresses kept per limit; the least recently seen are dropped first."""

WINDOW = 60.0
"""Seconds over which failed key checks are counted."""


def effective_burst(rate: float, burst: int) -> int:
    """
    The bucket's size: C{burst}, or when it is 0 the rate rounded up (at
    least 1), so that C{rate} alone means "so many a second".
    """
    return burst if burst > 0 else max(1, math.ceil(rate))


class Buckets:
    """
    Token buckets of C{burst} at C{rate} per second, one per address, as
    GCRA: one number per address, the time its bucket is full again.
    """

    def __init__(self, rate: float, burst: int, size: int = MAX_ADDRESSES) -> None:
        self.rate = rate
        self.burst = effective_burst(rate, burst)
        self._interval = 1.0 / rate
        self._tolerance = (self.burst - 1) * self._interval
        self._size = size
        self._full: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._full)

    def take(self, address: str, now: float) -> float:
        """
        Take a token for C{address}: 0 when there was one, else the seconds
        until there is.
        """
        full = self._full
        # pop and insert again: the dict's order is least recently seen first.
        tat = full.pop(address, now)
        if tat < now:
            tat = now
        wait = tat - now - self._tolerance
        if wait > 0:
            full[address] = tat
            return wait
        full[address] = tat + self._interval
        if len(full) > self._size:
            del full[next(iter(full))]
        return 0.0


class AuthFailures:
    """
    Failed key checks per address, counted over a minute from the first.
    """

    def __init__(self, limit: int, size: int = MAX_ADDRESSES) -> None:
        self.limit = limit
        self._size = size
        # address -> (start of its minute, failures in it)
        self._seen: dict[str, tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def blocked(self, address: str, now: float) -> float:
        """
        The seconds C{address} stays refused, or 0.
        """
        entry = self._seen.get(address)
        if entry is None:
            return 0.0
        start, count = entry
        if now - start >= WINDOW:
            del self._seen[address]
            return 0.0
        return start + WINDOW - now if count > self.limit else 0.0

    def failed(self, address: str, now: float) -> None:
        """
        Count a failed key check from C{address}.
        """
        seen = self._seen
        entry = seen.pop(address, None)
        if entry is None or now - entry[0] >= WINDOW:
            entry = (now, 0)
        seen[address] = (entry[0], entry[1] + 1)
        if len(seen) > self._size:
            del seen[next(iter(seen))]


Route: Any = tuple[str, str, bool]
"""What a request's head says to the limits: the client address, the route
name and whether the route needs a key."""


class Limits:
    """
    The limits in force, asked by the site when a request's head has
    arrived (L{engaged} first: when it is false nothing is looked at).

    @ivar engaged: whether any limit may refuse a request now: a rate limit
        is configured, or some address has failed key checks.
    """

    engaged = False

    def __init__(
        self,
        resolve: Callable[[Any], tuple[str, str, bool] | None],
        clock: Callable[[], float],
        address: Callable[[Any], str] | None = None,
    ) -> None:
        """
        @param resolve: gives a request's client address, route name and
            whether that route needs a key, from its head alone; L{None}
            when the head is refused anyway (the web layer says why).
        @param clock: the time, in seconds.
        @param address: gives a request's client address alone: all that
            the global rate needs, when it is the only limit in force
            (finding the route costs a parse of the path).  By default
            taken from C{resolve}.
        """
        self._resolve = resolve
        self._clock = clock
        self._address = address
        self.rate: Buckets | None = None
        self.routes: dict[str, Buckets] = {}
        self.failures: AuthFailures | None = None
        self._static = False

    def configure(
        self, rate: float, burst: int, auth_failures: int, params: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """
        Take new limits into use: the global rate and burst, the
        auth-failure limit and each plugin's own C{rate=}/C{burst=}.
        Buckets whose limits did not change are kept.
        """
        self.rate = _buckets(self.rate, rate, burst)
        routes: dict[str, Buckets] = {}
        for name, own in params.items():
            own_rate = own.get("rate")
            if own_rate:
                made = _buckets(self.routes.get(name), float(own_rate), int(own.get("burst") or 0))
                if made is not None:
                    routes[name] = made
        self.routes = routes
        if auth_failures <= 0:
            self.failures = None
        elif self.failures is None or self.failures.limit != auth_failures:
            self.failures = AuthFailures(auth_failures)
        self._static = self.rate is not None or bool(self.routes)
        self._update()

    def _update(self) -> None:
        self.engaged = self._static or bool(self.failures)

    def admit(self, request: Any) -> float:
        """
        0 when C{request} may be read and served, else the seconds its
        client must wait.
        """
        if not self.routes and not self.failures and self._address is not None:
            # Only the global rate can refuse: the address is all it needs.
            buckets = self.rate
            if buckets is None:
                return 0.0
            return buckets.take(self._address(request), self._clock())
        resolved = self._resolve(request)
        if resolved is None:
            return 0.0
        address, route, keyed = resolved
        now = self._clock()
        failures = self.failures
        if keyed and failures:
            wait = failures.blocked(address, now)
            if not failures:
                self._update()
            if wait > 0:
                return wait
        buckets = self.routes.get(route, self.rate)
        if buckets is not None:
            return buckets.take(address, now)
        return 0.0

    def failed(self, address: str) -> None:
        """
        A key check from C{address} failed.
        """
        if self.failures is not None:
            self.failures.failed(address, self._clock())
            self.engaged = True


def _buckets(current: Buckets | None, rate: float, burst: int) -> Buckets | None:
    if rate <= 0:
        return None
    if (
        current is not None
        and current.rate == rate
        and current.burst == effective_burst(rate, burst)
    ):
        return current
    return Buckets(rate, burst)


def retry_after(wait: float) -> int:
    """
    C{Retry-After} in whole seconds: the wait rounded up, at least 1.
    """
    return max(1, math.ceil(wait))
