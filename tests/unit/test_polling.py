"""The pacing of tight operation polls (api/polling.py), by what it reads, not by clocks."""

from __future__ import annotations

import asyncio

from tunesmith.api.polling import PollPacer
from tunesmith.domain.resources import JobStatus

RUNNING = (JobStatus.RUNNING, 3)


class Progress:
    """An operation's progress as the store would report it, changing after `reads`."""

    def __init__(self, changes_after: int, to=(JobStatus.RUNNING, 4)) -> None:
        self.reads, self.changes_after, self.to = 0, changes_after, to

    async def __call__(self):
        self.reads += 1
        return self.to if self.reads > self.changes_after else RUNNING


def wait(pacer: PollPacer, progress: Progress) -> None:
    asyncio.run(pacer.wait_for_news("key", progress))


def test_a_first_poll_and_a_late_poll_are_answered_without_waiting_for_news():
    pacer = PollPacer(min_interval=0.01, max_hold=60, check_every=0.001)
    progress = Progress(changes_after=10**9)
    wait(pacer, progress)  # never answered before
    pacer.answered("key", RUNNING)
    asyncio.run(asyncio.sleep(0.02))  # a person's pause, longer than min_interval
    wait(pacer, progress)
    assert progress.reads == 0


def test_a_tight_repeat_waits_until_the_operation_changes():
    pacer = PollPacer(min_interval=0.001, max_hold=60, check_every=0.001)
    pacer.answered("key", RUNNING)
    progress = Progress(changes_after=5)
    wait(pacer, progress)
    assert progress.reads == 6  # unchanged five times, then the change that ends the wait


def test_a_tight_repeat_is_answered_once_the_operation_ends_without_waiting_out_the_pace():
    pacer = PollPacer(min_interval=60, max_hold=120, check_every=0.001)
    pacer.answered("key", RUNNING)
    progress = Progress(changes_after=3, to=(JobStatus.SUCCEEDED, 4))
    wait(pacer, progress)  # would take a minute if the pace held
    assert progress.reads == 4


def test_a_tight_repeat_of_a_finished_operation_is_only_paced():
    pacer = PollPacer(min_interval=0.001, max_hold=60, check_every=0.001)
    pacer.answered("key", (JobStatus.SUCCEEDED, 4))
    progress = Progress(changes_after=10**9)
    wait(pacer, progress)
    assert progress.reads == 0


def test_a_hold_ends_at_max_hold_when_nothing_changes():
    pacer = PollPacer(min_interval=0.001, max_hold=0.05, check_every=0.001)
    pacer.answered("key", RUNNING)
    progress = Progress(changes_after=10**9)
    wait(pacer, progress)
    assert progress.reads >= 1


def test_a_change_that_does_not_end_the_operation_waits_out_the_pace():
    pacer = PollPacer(min_interval=0.05, max_hold=60, check_every=0.001)
    pacer.answered("key", RUNNING)
    progress = Progress(changes_after=1)  # a new step at the second read
    wait(pacer, progress)
    assert progress.reads > 2  # still reading after the change, until min_interval passed
