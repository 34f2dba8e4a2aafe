"""Pacing of clients that poll an operation in a tight loop.

google-generativeai's `Operation.wait_bar()` calls operations.get again as soon as an
answer arrives, with no sleep: hundreds of requests a second against a local server, which
costs the training it watches CPU time and soon hits the per-user request quota. A repeated
poll of an operation by the same caller within `min_interval` of its last answer is a tight
loop: it is answered no sooner than `min_interval` after that answer, and then as soon as
the operation has changed (a new step, a new state), or after `max_hold` at the latest, a
hanging GET like Google's longrunning `Operations.WaitOperation`. The operation's end is
the exception: it is answered as soon as it is seen (within `check_every`), since the
poller then stops. A poll that comes later than `min_interval` after the last one, as from
a person with curl, is answered at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from tunesmith.domain.resources import JobStatus

Progress = tuple[JobStatus, int] | None


@dataclass(frozen=True)
class _Answer:
    at: float
    progress: Progress


class PollPacer:
    def __init__(
        self, min_interval: float = 1.0, max_hold: float = 10.0, check_every: float = 0.2
    ) -> None:
        self.min_interval, self.max_hold, self.check_every = min_interval, max_hold, check_every
        self._answers: dict[Hashable, _Answer] = {}

    async def wait_for_news(
        self, key: Hashable, read_progress: Callable[[], Awaitable[Progress]]
    ) -> None:
        """Returns when a poll of `key` may be answered."""
        last = self._answers.get(key)
        now = time.monotonic()
        if last is None or now - last.at >= self.min_interval:
            return
        if _final(last.progress):
            await asyncio.sleep(last.at + self.min_interval - now)
            return
        paced, deadline = last.at + self.min_interval, last.at + self.max_hold
        while time.monotonic() < deadline:
            progress = await read_progress()
            if progress != last.progress and (_final(progress) or time.monotonic() >= paced):
                return
            await asyncio.sleep(self.check_every)

    def answered(self, key: Hashable, progress: Progress) -> None:
        now = time.monotonic()
        self._answers[key] = _Answer(now, progress)
        if len(self._answers) > 10_000:
            self._forget_before(now - self.max_hold)

    def _forget_before(self, cutoff: float) -> None:
        for key in [k for k, a in self._answers.items() if a.at < cutoff]:
            self._answers.pop(key, None)


def _final(progress: Progress) -> bool:
    """Whether an operation is done (or gone): a poller that reads this stops polling, so
    answering it early costs one request at most."""
    return progress is None or progress[0].finished
