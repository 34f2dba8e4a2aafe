"""`tunesmith tune` in a real terminal (tmux), read off the screen as a person reads it:
the live progress bar, then Ctrl-C and the question whether to cancel the job."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cli_support import TUNESMITH, Cli

pytest_plugins = ["cli_fixtures"]
pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (make system-deps)"
)
PROGRESS = re.compile(
    r"tuning ━+.* step (\d+)/2000 • epoch (\d+)/500 • loss (\d+\.\d+) • "
    r"(\d+:\d\d:\d\d|-:--:--) left"
)


class Terminal:
    """A 150x30 tmux window running bash, on a tmux server of its own."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "cli", "-l", text)
        self.tmux("send-keys", "-t", "cli", "Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "cli")

    def wait_for(self, seen: Callable[[str], object], timeout: float = 120) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = seen(self.screen())
            if found:
                return found
            time.sleep(0.2)
        raise TimeoutError(f"not on the screen:\n{self.screen()}")


@pytest.fixture
def terminal(tmp_path) -> Iterator[Terminal]:
    term = Terminal(f"tunesmith-test-{tmp_path.name}")
    term.tmux("new-session", "-d", "-s", "cli", "-x", "150", "-y", "30", "bash --norc --noprofile")
    yield term
    term.tmux("kill-server")


def test_a_person_follows_the_progress_bar_and_cancels_with_ctrl_c(
    cli: Cli, api: httpx.Client, terminal: Terminal, tmp_path: Path
):
    data = tmp_path / "numbers.jsonl"
    data.write_text("".join(f'{{"input": "{n}", "output": "{n + 1}"}}\n' for n in range(4)))
    settings = [f"{k}={v}" for k, v in cli.env().items() if k.startswith("TUNESMITH_")]
    command = ["env", *settings, str(TUNESMITH), "tune", str(data), "--epochs", "500"]
    terminal.type(
        shlex.join([*command, "--batch-size", "1", "--id", "cli-tmux"]) + "; echo exit=$?"
    )

    def moving_bar(screen: str) -> re.Match | None:
        match = PROGRESS.search(screen)
        return match if match and int(match[1]) >= 2 else None

    bar = terminal.wait_for(moving_bar)
    assert isinstance(bar, re.Match) and 1 <= int(bar[2]) <= 500
    terminal.tmux("send-keys", "-t", "cli", "C-c")
    terminal.wait_for(
        lambda s: "Cancel the tuning of tunedModels/cli-tmux, or leave it running?" in s
    )
    terminal.type("cancel")
    terminal.wait_for(lambda s: "exit=130" in s)
    assert "Cancelled the tuning of tunedModels/cli-tmux." in terminal.screen()
    [operation] = api.get("/v1beta/tunedModels/cli-tmux/operations").json()["operations"]
    assert operation["done"] and operation["error"]["code"] == 1  # CANCELLED
