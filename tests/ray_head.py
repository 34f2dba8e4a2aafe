"""A Ray head of a test's own, on loopback: `ray start --head --block`, ended with SIGTERM.

Never `ray stop`: that ends every Ray process on the machine, other tests' heads included.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]

# Ray turns 127.0.0.1 into the machine's address unless clusters are "off": then every Ray
# process (head, workers, drivers) uses loopback. No usage reports leave the machine.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class RayHead:
    cpus: int = 2
    port: int = field(default_factory=free_port)
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ray-")))
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """What a process that joins this cluster (a server, a driver) runs with."""
        return {**LOOPBACK_ENV, "RAY_ADDRESS": self.address}

    def start(self, timeout: float = 120) -> RayHead:
        # Ray's workers import Tunesmith from the code under test, as the test itself does.
        path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, **LOOPBACK_ENV, "PYTHONPATH": path}
        ports = {
            "--port": self.port,
            "--ray-client-server-port": free_port(),
            "--dashboard-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
        }
        command = [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus),
            "--temp-dir", str(self.temp_dir), "--include-dashboard", "false",
            "--disable-usage-stats", "--object-store-memory", str(100 * 2**20),
            *(str(part) for pair in ports.items() for part in pair),
        ]  # fmt: skip
        log = open(self.temp_dir / "head.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while b"Ray runtime started" not in (self.temp_dir / "head.log").read_bytes():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.5)
        return self

    def log(self) -> str:
        return (self.temp_dir / "head.log").read_text(errors="replace")

    def worker_logs(self) -> str:
        """What the cluster's worker processes (actors) wrote."""
        logs = sorted((self.temp_dir / "session_latest" / "logs").glob("worker-*"))
        return "".join(path.read_text(errors="replace") for path in logs)

    def stop(self) -> None:
        """Drains and ends this head's processes, and only them."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
