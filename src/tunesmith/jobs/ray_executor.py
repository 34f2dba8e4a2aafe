"""Training on a Ray cluster (TUNESMITH_EXECUTOR=ray): worker actors instead of subprocesses.

Each actor runs the same Worker loop as `tunesmith worker`: it claims jobs from the database,
renews their leases and checkpoints them to the artifact store, so the database stays the one
source of truth and a cancel reaches a job through its row, read at every step. Ray restarts
an actor whose process dies (max_restarts=-1); the job the dead process held is claimed again
when its lease ends, by any worker, and resumes from its last checkpoint.

The actors are detached and named (`tunesmith-worker-0`, ... in the Ray namespace
TUNESMITH_RAY_NAMESPACE): `tunesmith serve` attaches to the ones that run and starts the missing
ones, so restarting serve, or running several API replicas, never duplicates them, and jobs
train on while serve restarts. They keep the settings they were started with:
`tunesmith ray-workers --stop` ends them (their jobs go back to the queue) before a restart
with new settings.

Every node runs Tunesmith's code from its own Python environment and reaches the database and
the artifact store named by the settings; credentials for those (AWS_*, say) are the node's own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from tunesmith.config import Settings

log = logging.getLogger(__name__)

ACTOR_PREFIX = "tunesmith-worker-"
CRASH_PAUSE = 5.0  # before a broken worker loop ends its process, so Ray's restarts do not spin
PRIVATE = {"TUNESMITH_API_KEY"}  # a client's credential, never a worker's


def actor_env(settings: Settings) -> dict[str, str]:
    """What an actor's process runs with: this process's Tunesmith settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.startswith("TUNESMITH_") and key not in PRIVATE
    }
    env["TUNESMITH_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url:
        env["TUNESMITH_DATABASE_URL"] = settings.database_url
    return env


class TrainingWorker:
    """A Ray actor: one Tunesmith worker, its loop on a thread so the actor still answers."""

    def __init__(self) -> None:
        from tunesmith.cli.common import configure_logging
        from tunesmith.jobs.worker import Worker

        configure_logging()
        self.worker = Worker.from_settings(Settings())
        self.stopping = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="tunesmith-worker").start()

    def _run(self) -> None:
        try:
            self.worker.run_forever(self.stopping)
        except BaseException:
            log.exception("worker %s stopped; Ray restarts it", self.worker.worker_id)
            time.sleep(CRASH_PAUSE)
            os._exit(1)

    def describe(self) -> dict[str, Any]:
        return {"worker_id": self.worker.worker_id, "pid": os.getpid()}


def connect(settings: Settings) -> None:
    """Joins the cluster at RAY_ADDRESS (or the one `ray start` runs on this machine); it
    never starts a cluster of its own."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or "auto",
            namespace=settings.ray_namespace,
            log_to_driver=False,
        )


def start_workers(settings: Settings) -> list[Any]:
    """Attaches to the named worker actors, starting those that are missing."""
    import ray

    connect(settings)
    actor = ray.remote(TrainingWorker)
    handles = [
        actor.options(
            name=f"{ACTOR_PREFIX}{slot}",
            namespace=settings.ray_namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=settings.ray_num_cpus,
            num_gpus=settings.ray_num_gpus,
            runtime_env={"env_vars": actor_env(settings)},
        ).remote()
        for slot in range(settings.workers)
    ]
    log.info(
        "training on Ray: %d worker actors in namespace %s",
        len(handles),
        settings.ray_namespace,
    )
    return handles


def _named_workers(settings: Settings) -> list[str]:
    from ray.util import list_named_actors

    connect(settings)
    return sorted(
        entry["name"]
        for entry in list_named_actors(all_namespaces=True)
        if entry["namespace"] == settings.ray_namespace and entry["name"].startswith(ACTOR_PREFIX)
    )


def describe_workers(settings: Settings, timeout: float = 30.0) -> list[tuple[str, str]]:
    """Each worker actor's name, and its worker id and process (or why it does not answer)."""
    import ray

    described = []
    for name in _named_workers(settings):
        handle = ray.get_actor(name, namespace=settings.ray_namespace)
        try:
            info = ray.get(handle.describe.remote(), timeout=timeout)
            described.append((name, f"{info['worker_id']} (pid {info['pid']})"))
        except Exception as error:  # starting, restarting, or its node is gone
            described.append((name, f"not answering: {type(error).__name__}"))
    return described


def stop_workers(settings: Settings) -> list[str]:
    """Ends every worker actor in the namespace; their jobs return to the queue when their
    leases end. The names of the actors ended."""
    import ray

    names = _named_workers(settings)
    for name in names:
        ray.kill(ray.get_actor(name, namespace=settings.ray_namespace))
    return names


class RayWorkers:
    """`tunesmith serve`'s executor on Ray: the counterpart of its local WorkerPool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def start(self) -> None:
        start_workers(self.settings)

    def stop(self) -> None:
        """Leaves the cluster; the detached actors train on."""
        import ray

        ray.shutdown()
