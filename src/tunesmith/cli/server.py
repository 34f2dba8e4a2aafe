"""`tunesmith serve` and `tunesmith worker`: the server and its training workers."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import typer

from tunesmith.cli.common import configure_logging, local_settings
from tunesmith.config import Settings

if TYPE_CHECKING:
    from tunesmith.jobs.ray_executor import RayWorkers

log = logging.getLogger("tunesmith")


def _worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["TUNESMITH_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url:
        env["TUNESMITH_DATABASE_URL"] = settings.database_url
    return env


class WorkerPool:
    """Worker subprocesses that are restarted when they die, after a delay that doubles
    while a worker keeps dying soon after its start (a crash loop must not spin a core)."""

    FIRST_DELAY = 1.0
    MAX_DELAY = 60.0
    HEALTHY_AFTER = 60.0  # a worker that ran this long resets its slot's delay

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings, self.count = settings, count
        self.processes: list[subprocess.Popen | None] = []
        self.started_at: list[float] = []
        self.delays: list[float] = []
        self.restart_at: list[float] = []
        self.stopping = threading.Event()

    def _spawn(self) -> subprocess.Popen:
        command = [sys.executable, "-m", "tunesmith", "worker", "--supervisor", str(os.getpid())]
        return subprocess.Popen(command, env=_worker_env(self.settings))

    def start(self) -> None:
        now = time.monotonic()
        self.processes = [self._spawn() for _ in range(self.count)]
        self.started_at = [now] * self.count
        self.delays = [0.0] * self.count
        self.restart_at = [0.0] * self.count
        threading.Thread(target=self._supervise, daemon=True, name="worker-pool").start()

    def _supervise(self) -> None:
        while not self.stopping.wait(0.5):
            for slot in range(self.count):
                self._check(slot, time.monotonic())

    def _check(self, slot: int, now: float) -> None:
        process = self.processes[slot]
        if process is not None and process.poll() is None:
            return
        if process is not None:  # it just died: schedule its restart
            lived = now - self.started_at[slot]
            delay = (
                self.FIRST_DELAY
                if lived >= self.HEALTHY_AFTER
                else min(max(self.delays[slot] * 2, self.FIRST_DELAY), self.MAX_DELAY)
            )
            self.delays[slot], self.restart_at[slot] = delay, now + delay
            self.processes[slot] = None
            log.warning(
                "worker %d exited with %s after %.0f s; restarting it in %.0f s",
                process.pid,
                process.returncode,
                lived,
                delay,
            )
        if now >= self.restart_at[slot] and not self.stopping.is_set():
            self.processes[slot], self.started_at[slot] = self._spawn(), now

    def stop(self) -> None:
        self.stopping.set()
        running = [p for p in self.processes if p is not None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _executor(settings: Settings) -> WorkerPool | RayWorkers:
    """Where jobs train: worker subprocesses here, or worker actors on a Ray cluster."""
    if settings.executor == "ray":
        from tunesmith.jobs.ray_executor import RayWorkers

        return RayWorkers(settings)
    return WorkerPool(settings, settings.workers)


def serve(
    host: str | None = typer.Option(None, help="Address to listen on [default: 127.0.0.1]"),
    port: int | None = typer.Option(None, help="Port [default: 8080]"),
    workers: int | None = typer.Option(
        None, help="Training workers: subprocesses, or Ray actors [default: 1]"
    ),
) -> None:
    """Serve the API with training workers, using the embedded defaults."""
    from tunesmith.training.base_models import Catalog, ensure_cached, use_torch_threads

    configure_logging()
    settings = local_settings(host=host, port=port, workers=workers)
    settings.make_data_dir()
    default = Catalog(settings).default
    log.info("preparing base model %s", default.name)
    ensure_cached(default, settings.base_model_cache_dir)  # converted once, before workers
    # Workers start before the app is built, and before this process imports torch, so
    # their imports, model load and warm-up run beside this process's own start: a job
    # posted once the API answers waits less.
    pool = _executor(settings)
    pool.start()
    try:
        use_torch_threads(settings.torch_threads)  # for generation in this process
        import uvicorn

        from tunesmith.api.app import create_app
        from tunesmith.api.http_protocol import deadline_protocol

        application = create_app(settings)
        log.info(
            "owner API key: %s (tunesmith auth print-api-key)",
            application.state.credentials.owner_key_path,
        )
        # Tunesmith writes the access log itself (no query strings: they may hold keys), and
        # uvicorn's own lines go through the same handler (log_config=None).
        uvicorn.run(
            application,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            http=deadline_protocol(
                settings.http_header_timeout_seconds, settings.http_body_timeout_seconds
            ),
        )
    finally:
        pool.stop()


def _exit_with(supervisor: int) -> None:
    """Stops this worker when the process that started it is gone (even after kill -9),
    handing its job back instead of training on as an orphan."""

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="supervisor-watch").start()


def worker(
    supervisor: int = typer.Option(0, help="Exit when this parent process is gone"),
) -> None:
    """Run one training worker: claims queued jobs from the database and trains them."""
    # A worker's start allocates what lives as long as the process (modules, the base model,
    # the tokenizer's vocabulary): over a million objects that the cyclic garbage collector
    # would traverse again and again for nothing, 0.9 s of a 4.8 s start. It is off until the
    # worker is ready, then back on with that heap frozen out of its sight (gc.freeze: the
    # start's few thousand unreachable objects, small ones and no tensors, stay with it).
    gc.disable()
    from tunesmith.jobs.worker import Worker

    configure_logging()
    training = Worker.from_settings(local_settings())
    stop = threading.Event()

    def graceful(_signum, _frame) -> None:
        stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, graceful)
    if supervisor:
        _exit_with(supervisor)
    training.run_forever(stop, ready=_collect_from_now_on)


def _collect_from_now_on() -> None:
    gc.freeze()
    gc.enable()


def ray_workers(
    stop: bool = typer.Option(False, "--stop", help="End every worker actor"),
) -> None:
    """List (or --stop) the worker actors that train on Ray with TUNESMITH_EXECUTOR=ray."""
    from tunesmith.jobs.ray_executor import describe_workers, stop_workers

    settings = local_settings()
    if stop:
        for name in stop_workers(settings):
            typer.echo(f"stopped {name}")
        return
    for name, info in describe_workers(settings):
        typer.echo(f"{name}\t{info}")
