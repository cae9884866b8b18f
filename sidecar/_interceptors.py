"""Server-wide concerns applied to every call: bearer-token authentication.

When a token is configured, every call must carry ``authorization: Bearer
<token>``; anything else is refused with UNAUTHENTICATED before the servicer
runs. The health service stays open so that supervisors and load balancers can
probe the sidecar without the secret. The token is compared in constant time
and never logged.

Refusals are logged without flooding the log: the first refusal of each method
in full, then at most one summary a minute of those not logged (a client with
a wrong token retrying in a loop made a line per call, 500 a second).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

import grpc

from sidecar._status import refusing_handler

__all__ = ["BearerTokenInterceptor", "RefusalLog"]

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_log = logging.getLogger("are.auth")


class RefusalLog:
    """Logs refused calls: the first per method in full, the rest as one summary per interval.

    A method's first refusal is logged in full (its method, whether a token
    was presented, the client's user agent), as are those of a method not
    refused for a whole interval; every other refusal is only counted, and the
    count is logged once per interval (a timer on the running loop writes it
    even when the refusals stop). The methods remembered are capped (the
    oldest forgotten first), as are the full lines per interval, so memory and
    log volume stay bounded whatever the callers send.

    Used from the event loop only (the interceptor runs there), so it needs
    no lock.

    Args:
        logger: Where the lines go.
        interval_s: The summary period, and the quiet time after which a
            method's next refusal is logged in full again.
        max_keys: Methods remembered at most.
        max_lines: Full lines per interval at most; refusals past it are counted.
        clock: Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 60.0,
        max_keys: int = 256,
        max_lines: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_s
        self._max_keys = max_keys
        self._max_lines = max_lines
        self._clock = clock
        self._last_seen: OrderedDict[str, float] = OrderedDict()  # method -> its last refusal
        self._window_start = clock()
        self._lines = 0  # full lines written since _window_start
        self._suppressed = 0  # refusals counted, not written, since _window_start
        self._timer: asyncio.TimerHandle | None = None

    @property
    def suppressed(self) -> int:
        """Refusals counted but not yet written in a summary."""
        return self._suppressed

    def refused(self, method: str, *, had_token: bool, user_agent: str = "") -> None:
        """Records one refused call: logs it, or counts it for the next summary."""
        now = self._clock()
        if now - self._window_start >= self._interval:
            self.flush()
        last = self._last_seen.pop(method, None)
        self._last_seen[method] = now  # most recent last
        if len(self._last_seen) > self._max_keys:
            self._last_seen.popitem(last=False)
        if (last is None or now - last >= self._interval) and self._lines < self._max_lines:
            self._lines += 1
            self._logger.warning(
                "refused an unauthenticated call",
                extra={"fields": {"method": method, "had_token": had_token, "user_agent": user_agent}},
            )
            return
        self._suppressed += 1
        self._arm_timer(now)

    def flush(self) -> None:
        """Writes the summary of the refusals counted so far (if any) and starts a new interval."""
        now = self._clock()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._suppressed:
            seconds = max(1, round(now - self._window_start))
            calls = "call" if self._suppressed == 1 else "calls"
            self._logger.warning(
                f"refused {self._suppressed} more unauthenticated {calls} in the last {seconds} s",
                extra={"fields": {"calls": self._suppressed, "seconds": seconds}},
            )
        self._suppressed = 0
        self._lines = 0
        self._window_start = now

    def _arm_timer(self, now: float) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test calling it directly): the next refusal flushes
            return
        self._timer = loop.call_later(max(0.0, self._window_start + self._interval - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (see the mypy overrides)
    """Refuses every call (but health checks) that lacks the configured token."""

    def __init__(self, token: str, *, refusals: RefusalLog | None = None) -> None:
        self._expected = f"Bearer {token}".encode()
        self._refusals = refusals if refusals is not None else RefusalLog(_log)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        presented = b""
        for key, value in metadata:
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
                break
        if hmac.compare_digest(presented, self._expected):
            return handler
        self._refusals.refused(method, had_token=bool(presented), user_agent=_user_agent(metadata))
        return _refusal(handler, "missing bearer token" if not presented else "wrong bearer token")


def _user_agent(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The caller's user agent (its first 128 characters), to tell which client is refused."""
    for key, value in metadata:
        if key == "user-agent":
            return (value if isinstance(value, str) else value.decode(errors="replace"))[:128]
    return ""


def _refusal(handler: grpc.RpcMethodHandler, why: str) -> grpc.RpcMethodHandler:
    return refusing_handler(
        grpc.StatusCode.UNAUTHENTICATED,
        f"{why}: this sidecar requires 'authorization: Bearer <token>' metadata on every call",
        reason="UNAUTHENTICATED",
        request_streaming=handler.request_streaming,
        response_streaming=handler.response_streaming,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
