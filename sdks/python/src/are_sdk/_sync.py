"""The blocking client: the async client driven from a private event loop.

:class:`SyncClient` does not re-implement anything. It runs one event loop in
a daemon thread, builds the ordinary async :class:`~are_sdk.Client` on it, and
turns every coroutine into a blocking call and every async iterator into a
plain iterator, so both clients share one code path and one behaviour.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from are_sdk._cache import Cache, CacheUsage
from are_sdk._client import Client, RawServices, ServiceClient
from are_sdk._errors import ClientClosedError

__all__ = ["SyncClient"]

_T = TypeVar("_T")
_STOP_WAIT_S = 5.0  # the longest close() waits for the calls it ends, and for the loop's thread


class _LoopThread:
    """One event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="are-sdk-loop", daemon=True)
        self._thread.start()
        self._stopping = False
        self._lock = threading.Lock()
        self._waits: set[concurrent.futures.Future[Any]] = set()  # calls other threads wait for

    def refuse_own_thread(self, what: str) -> None:
        """Raises RuntimeError when called on the loop's own thread, where a blocking call waits for itself.

        Code the SDK runs for the caller (a ``get_or_call`` coroutine function)
        runs there: a blocking call from it waited for the loop it was
        holding, a deadlock of the whole client.
        """
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError(
                f"{what} was called on the SyncClient's own event loop thread (from code the SDK runs "
                "there, such as a get_or_call coroutine function): it would wait "
                "for itself forever. Use the async client there (await it), or make the function a "
                "plain one: get_or_call runs those in a worker thread, where the SyncClient works."
            )

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        try:
            self.refuse_own_thread("a SyncClient method")
        except RuntimeError:
            coroutine.close()
            raise
        with self._lock:
            if self._stopping:
                coroutine.close()
                raise ClientClosedError("SyncClient")
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
            self._waits.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._stopping:  # closed under this call (see stop)
                raise ClientClosedError("SyncClient") from None
            raise
        except BaseException:
            # Ctrl-C (KeyboardInterrupt), or another exception a signal handler raised, while
            # this thread waited: the call must not run on unseen in the loop thread (a wait
            # would hold its stream for good). Cancelling an ended call does nothing.
            future.cancel()
            raise
        finally:
            with self._lock:
                self._waits.discard(future)

    def iterate(self, iterator: AsyncIterator[_T]) -> Iterator[_T]:
        self.refuse_own_thread("a SyncClient iterator")
        try:
            while True:
                try:
                    yield self.run(_anext(iterator))
                except StopAsyncIteration:
                    return
        finally:
            closer = getattr(iterator, "aclose", None)
            if closer is not None and not self._stopping:  # a closed client ended it already
                with contextlib.suppress(ClientClosedError):
                    self.run(closer())

    def stop(self) -> None:
        """Ends the calls still running on the loop, then the loop and its thread.

        Calls other threads were waiting for (a followed trace stream, a
        ``wait()``) raise :class:`ClientClosedError` there: stopping the loop
        with them pending left those threads blocked for good.
        """
        with self._lock:
            self._stopping = True
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(timeout=_STOP_WAIT_S)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=_STOP_WAIT_S)
        with self._lock:
            waits, self._waits = self._waits, set()
        for future in waits:  # scheduled too late to run: never started
            future.cancel()
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_all() -> None:
    """Cancels every other task of the running loop and waits (bounded) for them to end."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=_STOP_WAIT_S)


async def _anext(iterator: AsyncIterator[_T]) -> _T:
    return await iterator.__anext__()


class _Blocking:
    """Wraps an object of the async SDK so that its methods block."""

    def __init__(self, target: object, runner: _LoopThread) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return _wrap(value, self._runner)
        runner = self._runner

        def call(*args: Any, **kwargs: Any) -> Any:
            # Calls are made on the loop thread: grpc.aio objects belong to it.
            async def invoke() -> Any:
                result = value(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                return result

            return _wrap(runner.run(invoke()), runner)

        return call


class _BlockingCache(_Blocking):
    """``SyncClient.cache``: the async cache's methods, blocking, and a decorator for plain functions."""

    _target: Cache

    def cached(
        self,
        namespace: str,
        *,
        prompt: Callable[..., str],
        ttl: timedelta | float | None = None,
        usage: Callable[[Any], CacheUsage] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """:meth:`Cache.cached`, where a decorated plain function stays a plain (blocking) one.

        It runs in a worker thread of the client's loop on a miss (so it may
        use this SyncClient); an async function is decorated as the async
        client does it.
        """
        decorate = self._target.cached(namespace, prompt=prompt, ttl=ttl, usage=usage)  # makes no call
        runner = self._runner

        def blocking(function: Callable[..., Any]) -> Callable[..., Any]:
            wrapper = decorate(function)
            if inspect.iscoroutinefunction(function):
                return wrapper

            @functools.wraps(function)
            def call(*args: Any, **kwargs: Any) -> Any:
                async def answer() -> Any:
                    return await wrapper(*args, **kwargs)

                return runner.run(answer())

            return call

        return blocking


def _wrap(value: Any, runner: _LoopThread) -> Any:
    if isinstance(value, AsyncIterator):
        return runner.iterate(value)
    if isinstance(value, Cache):
        return _BlockingCache(value, runner)
    if _has_async_api(type(value)):
        return _Blocking(value, runner)
    return value  # plain values (records, enums, exceptions) pass through untouched


_ASYNC_API: dict[type, bool] = {}


def _has_async_api(cls: type) -> bool:
    """Whether instances are SDK facades or handles (they have async methods).

    Records, enums and exceptions of the SDK have none and are returned as
    they are, so ``handle.describe().state is WorkflowState.RUNNING`` holds
    for the blocking client too.
    """
    known = _ASYNC_API.get(cls)
    if known is None:
        if not cls.__module__.startswith("are_sdk.") or issubclass(cls, BaseException):
            known = False
        elif cls is ServiceClient or cls is RawServices:
            known = True  # methods made on attribute access (RawServices: ServiceClients)
        else:
            known = any(
                inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
                for klass in cls.__mro__
                for member in vars(klass).values()
            )
        _ASYNC_API[cls] = known
    return known


class SyncClient:
    """A blocking connection to one ARE sidecar, with the async client's API.

    Every method of :class:`~are_sdk.Client` is available and blocks until it
    returns; streams become iterators. Use it as a context manager or call
    :meth:`close`.
    """

    def __init__(self, client: Client, runner: _LoopThread) -> None:
        self._client = client
        self._runner = runner
        self._facade = _Blocking(client, runner)

    @classmethod
    def connect(cls, target: str, **kwargs: Any) -> Self:
        """Connects like :meth:`are_sdk.Client.connect`, blocking until ready."""
        runner = _LoopThread()
        try:
            client = runner.run(Client.connect(target, **kwargs))
        except BaseException:
            runner.stop()
            raise
        return cls(client, runner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._facade, name)

    def close(self) -> None:
        """Closes the channel and stops the private event loop."""
        self._runner.refuse_own_thread("SyncClient.close")
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
