"""Store calls off the event loop: a bounded thread hand-off with a timeout.

Every store call a request makes (one per ranking request) runs in a small thread pool of its own, and the
request waits for it at most ``timeout`` seconds; a hung store (a Redis that accepts and never answers, a
stuck network file system) then costs that request a JSON 503, while ``/healthz`` and every request that
needs no store call answer as usual. At most ``max_pending`` calls may be waiting at once; beyond that a
request is refused at once (503) instead of queueing behind hung calls.

Example:
    >>> import asyncio, time
    >>> calls = StoreCalls(timeout=0.05)
    >>> asyncio.run(calls.run(sum, [1, 2]))
    3
    >>> asyncio.run(calls.run(time.sleep, 0.2))
    Traceback (most recent call last):
    ...
    deepcrossing.serving.store.base.StoreUnavailable: the store did not answer within 0.05 s
    >>> calls.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from deepcrossing.serving.store import StoreUnavailable

T = TypeVar("T")


class StoreCalls:
    """A thread pool for store calls, with a per-call timeout and a bound on calls waiting.

    Args:
        timeout: seconds a request waits for one store call before it answers 503.
        workers: threads in the pool.
        max_pending: calls in flight (running or queued) beyond which new calls are refused at once.
    """

    def __init__(self, timeout: float = 1.0, workers: int = 4, max_pending: int = 64) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self.pending = 0
        self._lock = threading.Lock()  # pending is decremented in the pool's threads
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="store-call")

    def _done(self, _: object) -> None:
        with self._lock:
            self.pending -= 1

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the pool; :class:`StoreUnavailable` after :attr:`timeout` seconds.

        A call still queued when its request stops waiting is cancelled; a running one cannot be (threads
        cannot), and keeps its slot until it ends (store clients have socket timeouts of their own).
        """
        with self._lock:
            if self.pending >= self.max_pending:
                raise StoreUnavailable(f"{self.pending} store calls are already waiting; try again shortly")
            self.pending += 1
        future = self._pool.submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            raise StoreUnavailable(f"the store did not answer within {self.timeout:g} s") from None

    def close(self) -> None:
        """Stop the pool without waiting for hung calls."""
        self._pool.shutdown(wait=False, cancel_futures=True)
