"""Process scaffolding every service shares: settings, logs, health server, and patient retries."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, floor_s: float = 0.0) -> float:
    """Jittered exponential backoff: a random wait from floor_s up to base_s * 2**attempt, at most cap_s."""
    return random.uniform(floor_s, max(floor_s, min(cap_s, base_s * 2 ** min(attempt, 30))))


async def retry_until_done(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    retry_on: tuple[type[BaseException], ...],
    base_s: float = 0.2,
    cap_s: float = 10.0,
) -> T:
    """Retry a call whose failure is the dependency's, not the record's, until it succeeds.

    The stream waits instead of dropping or dead-lettering: nothing is committed until outputs are durable.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except retry_on as exc:
            delay = backoff_delay(attempt, base_s=base_s, cap_s=cap_s, floor_s=base_s)
            log.warning(
                "dependency unavailable, waiting",
                extra={"what": what, "attempt": attempt + 1, "error": type(exc).__name__, "delay_s": round(delay, 2)},
            )
            attempt += 1
            await asyncio.sleep(delay)


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `serve(stop)` until SIGTERM or SIGINT sets `stop` (Kubernetes stops pods with SIGTERM)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(runner())
