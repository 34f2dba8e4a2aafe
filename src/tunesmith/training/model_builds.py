"""One model build or load at a time in this process.

transformers and peft build and load models inside context managers that patch state the
whole process shares: peft's `init_empty_weights` (a `low_cpu_mem_usage` load) replaces
`torch.nn.Module.register_parameter`, and transformers' `no_init_weights` and friends
replace the `torch.nn.init` functions and `PreTrainedModel.init_weights`. Each restores what
it found on exit, so two threads inside them at once can leave a patch installed for good:
thread A saves the original and patches, B saves A's patch as "the original", A restores,
B "restores" the patch. After that every load in the process fails (`Parameter.__new__()
got an unexpected keyword argument '_is_hf_initialized'`) or builds layers on the meta
device. Every model build or load in a process that runs more than one goes through
`building_models`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunesmith.training.adapter_config import ADAPTER_CONFIG, allowed_config, parse_config

# Re-entrant: a build may call code that builds (an export loads the base, then peft).
_BUILD_LOCK = threading.RLock()


@contextmanager
def building_models() -> Iterator[None]:
    with _BUILD_LOCK:
        yield


def check_stored_config(folder: Path) -> None:
    """InvalidAdapter unless the adapter's stored config passes the import allow-list."""
    allowed_config(parse_config((folder / ADAPTER_CONFIG).read_bytes()))
