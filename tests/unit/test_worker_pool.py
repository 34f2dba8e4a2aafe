"""The supervisor restarts dead workers, backing off while they keep dying at start."""

from __future__ import annotations

import itertools

from tunesmith.cli.server import WorkerPool
from tunesmith.config import Settings


class DeadAtOnce:
    pid, returncode = 1, 1

    def poll(self) -> int:
        return 1


class Alive:
    pid, returncode = 2, None

    def poll(self) -> None:
        return None


def test_a_crash_loop_is_restarted_with_doubling_delays(tmp_path, monkeypatch):
    pool = WorkerPool(Settings(data_dir=tmp_path), 1)
    spawned: list[float] = []
    monkeypatch.setattr(pool, "_spawn", lambda: spawned.append(clock) or DeadAtOnce())
    clock = 0.0
    pool.processes, pool.started_at, pool.delays, pool.restart_at = (
        [DeadAtOnce()],
        [0.0],
        [0.0],
        [0.0],
    )
    for _ in range(800):  # 200 s of supervision, a check every 0.25 s
        clock += 0.25
        pool._check(0, clock)
    gaps = [b - a for a, b in itertools.pairwise(spawned)]
    # Each death is seen at the next check, a quarter second after the spawn.
    assert [gap - 0.25 for gap in gaps[:6]] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert len(spawned) == 8  # not 800


def test_a_worker_that_ran_a_while_restarts_after_the_first_delay(tmp_path, monkeypatch):
    pool = WorkerPool(Settings(data_dir=tmp_path), 1)
    monkeypatch.setattr(pool, "_spawn", Alive)
    pool.processes, pool.started_at, pool.delays, pool.restart_at = (
        [DeadAtOnce()],
        [0.0],
        [32.0],
        [0.0],
    )
    pool._check(0, 500.0)  # it died after 500 s of work
    assert pool.delays[0] == WorkerPool.FIRST_DELAY and pool.processes[0] is None
    pool._check(0, 501.0)
    assert isinstance(pool.processes[0], Alive)
