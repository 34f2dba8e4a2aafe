"""Where adapters and checkpoints live: the one module that knows the artifact layout.

    {root}/adapters/{tuned_model_id}/{operation_id}/   a tuning operation's adapter
    {root}/adapters/{tuned_model_id}/checkpoints/{operation_id}/{epoch}/
                                                   the adapter kept at an epoch's end
    {root}/checkpoints/{operation_id}.pt               a running job's resumable state
                                                   (.tmp while it is written)

Operation ids are 12 characters, so none is `checkpoints`. An epoch's adapter is written
once (again only by a resumed job, with the same weights) and never changed after: a tuned
model that serves another epoch serves another folder, so no cache serves a stale one.

`root` is `TUNESMITH_ARTIFACT_URL`: by default the data dir, or any fsspec URL. A local or
shared (NFS) directory is used in place, as the data dir is. A tuned model's adapters sit in
one folder per operation, so a reused tuned model id never finds (or is served from a cache
of) an older model's adapter. Local folders are written under a hidden `.partial` name and
renamed into place, so a reader sees a whole adapter or none.

Object storage (`s3://bucket/prefix`, or any other non-local fsspec URL) cannot rename a
folder, and training and serving need local files. There the data dir's own layout is the
working copy: a worker trains into its local staging folder, uploads every file of the
adapter and then `_COMPLETE`, a manifest written last; readers ignore an adapter without it.
A checkpoint is saved locally, uploaded under a temporary key and moved into place (one
object, whole or absent), and downloaded by whichever worker resumes the job. A server
downloads the adapter it serves into its data dir's layout once, and reads it from there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import Settings
from tunesmith.training.lora import Checkpoint

log = logging.getLogger(__name__)

COMPLETE = "_COMPLETE"  # an uploaded adapter's manifest, written after its files


class Artifacts:
    def __init__(
        self, data_dir: Path, url: str = "", options: dict[str, Any] | None = None
    ) -> None:
        self.remote: RemoteStore | None = None
        root = data_dir
        if url:
            from fsspec.core import url_to_fs
            from fsspec.implementations.local import LocalFileSystem

            fs, path = url_to_fs(url, **(options or {}))
            if isinstance(fs, LocalFileSystem):
                root = Path(path)
            else:
                self.remote = RemoteStore(fs, path.rstrip("/"))
        self.adapters_root = root / "adapters"
        self.checkpoints_root = root / "checkpoints"

    @classmethod
    def of(cls, settings: Settings) -> Artifacts:
        return cls(settings.data_dir, settings.artifact_url, settings.artifact_options)

    # ------------------------------------------------------------ local paths

    def model_dir(self, tuned_model_id: str) -> Path:
        return self.adapters_root / tuned_model_id

    def adapter(self, tuned_model_id: str, operation_id: str) -> Path:
        """Where an adapter is read from on this machine (a download, for object storage)."""
        return self.model_dir(tuned_model_id) / operation_id

    def staging(self, tuned_model_id: str, operation_id: str) -> Path:
        """Where an adapter is written before `publish` puts it in place."""
        return self.model_dir(tuned_model_id) / f".{operation_id}.partial"

    def checkpoint(self, operation_id: str) -> Path:
        return self.checkpoints_root / f"{operation_id}.pt"

    def epoch_adapters(self, tuned_model_id: str, operation_id: str) -> Path:
        return self.model_dir(tuned_model_id) / "checkpoints" / operation_id

    def epoch_adapter(self, tuned_model_id: str, operation_id: str, epoch: int) -> Path:
        """Where the adapter kept at an epoch's end is read from on this machine."""
        return self.epoch_adapters(tuned_model_id, operation_id) / str(epoch)

    def epoch_staging(self, tuned_model_id: str, operation_id: str, epoch: int) -> Path:
        """A new folder to write an epoch's adapter to before `keep_epoch` puts it in place
        (its own name: a worker that lost the job may still be writing another)."""
        folder = self.epoch_adapters(tuned_model_id, operation_id)
        return folder / f".{epoch}.{uuid.uuid4().hex[:12]}.partial"

    # ------------------------------------------------------------ adapters

    def fetch_adapter(self, tuned_model_id: str, operation_id: str) -> Path | None:
        """A local folder with the whole adapter, downloaded first from object storage;
        None when the adapter is not (or not completely) stored."""
        key = self.remote.adapter_key(tuned_model_id, operation_id) if self.remote else ""
        return self._fetch(self.adapter(tuned_model_id, operation_id), key)

    def fetch_epoch_adapter(
        self, tuned_model_id: str, operation_id: str, epoch: int
    ) -> Path | None:
        """The adapter kept at an epoch's end, as `fetch_adapter` fetches the final one."""
        key = self.remote.epoch_key(tuned_model_id, operation_id, epoch) if self.remote else ""
        return self._fetch(self.epoch_adapter(tuned_model_id, operation_id, epoch), key)

    def fetch_served(
        self, tuned_model_id: str, operation_id: str, served_epoch: int | None
    ) -> Path | None:
        """The adapter an operation's model serves: the kept one of `served_epoch`, or
        the final one (None)."""
        if served_epoch is None:
            return self.fetch_adapter(tuned_model_id, operation_id)
        return self.fetch_epoch_adapter(tuned_model_id, operation_id, served_epoch)

    def _fetch(self, local: Path, key: str) -> Path | None:
        if local.exists():
            return local
        if self.remote is None:
            return None
        staging = local.parent / f".{local.name}.{uuid.uuid4().hex}.download"
        try:
            if not self.remote.download_folder(key, staging):
                return None
            with contextlib.suppress(OSError):  # another request finished the same download
                os.replace(staging, local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return local if local.exists() else None

    def publish(self, tuned_model_id: str, operation_id: str) -> bool:
        """Puts a staged adapter in place; False if its model's folder was deleted meanwhile
        (the model is gone, and nothing is left behind)."""
        staging = self.staging(tuned_model_id, operation_id)
        if self.remote is not None:
            # A delete meanwhile is found by the worker's next database write, whose clean-up
            # removes what this upload leaves.
            self.remote.upload_adapter(staging, tuned_model_id, operation_id)
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):  # this machine serves other adapters of it
                self.model_dir(tuned_model_id).rmdir()
            return True
        final = self.adapter(tuned_model_id, operation_id)
        shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(staging, final)
        except FileNotFoundError:
            shutil.rmtree(staging, ignore_errors=True)
            return False
        return True

    def store(self, folder: Path, tuned_model_id: str, operation_id: str) -> None:
        """Stores a checked adapter folder (an import) as the operation's adapter."""
        if self.remote is not None:
            self.remote.upload_adapter(folder, tuned_model_id, operation_id)
            shutil.rmtree(folder, ignore_errors=True)
            return
        final = self.adapter(tuned_model_id, operation_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, final)

    def discard_staging(self, tuned_model_id: str, operation_id: str) -> None:
        shutil.rmtree(self.staging(tuned_model_id, operation_id), ignore_errors=True)

    # ------------------------------------------------------------ epoch adapters

    def keep_epoch(self, tuned_model_id: str, operation_id: str, epoch: int, staging: Path) -> None:
        """Puts an epoch's staged adapter in place (replacing one a resumed job wrote)."""
        if self.remote is not None:
            key = self.remote.epoch_key(tuned_model_id, operation_id, epoch)
            self.remote.upload_folder(staging, key)
            shutil.rmtree(staging, ignore_errors=True)
            folder = self.epoch_adapters(tuned_model_id, operation_id)
            for empty in (folder, folder.parent, self.model_dir(tuned_model_id)):
                with contextlib.suppress(OSError):  # not empty: this machine serves from it
                    empty.rmdir()
            return
        final = self.epoch_adapter(tuned_model_id, operation_id, epoch)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)

    def remove_epochs(self, tuned_model_id: str, operation_id: str, epochs: Iterable[int]) -> None:
        for epoch in epochs:
            path = self.epoch_adapter(tuned_model_id, operation_id, epoch)
            shutil.rmtree(path, ignore_errors=True)
            if self.remote is not None:
                key = self.remote.epoch_key(tuned_model_id, operation_id, epoch)
                self.remote.remove_folder(key)

    # ------------------------------------------------------------ checkpoints

    def resumable(self, operation_id: str) -> Checkpoint:
        """A job's checkpoint: saved where any worker that resumes the job finds it."""
        local = self.checkpoint(operation_id)
        if self.remote is None:
            return Checkpoint(local)
        return SharedCheckpoint(local, self.remote, self.remote.checkpoint_key(operation_id))

    def remove_checkpoint(self, operation_id: str) -> None:
        """A job's checkpoint and a half-written one: they hold the adapter and optimizer
        state, so they are as private as the model."""
        checkpoint = self.checkpoint(operation_id)
        for path in (checkpoint, checkpoint.with_suffix(".tmp")):
            path.unlink(missing_ok=True)
        if self.remote is not None:
            self.remote.remove_file(self.remote.checkpoint_key(operation_id))

    # ------------------------------------------------------------ deletes

    def remove_operation(self, tuned_model_id: str, operation_id: str) -> None:
        """An operation's adapter, staged adapter and checkpoint; its model's folder too
        once nothing else is in it."""
        shutil.rmtree(self.adapter(tuned_model_id, operation_id), ignore_errors=True)
        shutil.rmtree(self.epoch_adapters(tuned_model_id, operation_id), ignore_errors=True)
        self.discard_staging(tuned_model_id, operation_id)
        self.remove_checkpoint(operation_id)
        with contextlib.suppress(OSError):  # other operations' epochs are in it
            self.epoch_adapters(tuned_model_id, operation_id).parent.rmdir()
        with contextlib.suppress(OSError):  # not empty, or already gone
            self.model_dir(tuned_model_id).rmdir()
        if self.remote is not None:
            self.remote.remove_folder(self.remote.adapter_key(tuned_model_id, operation_id))
            self.remote.remove_folder(self.remote.epochs_key(tuned_model_id, operation_id))

    def remove_model(self, tuned_model_id: str, operation_ids: Iterable[str]) -> None:
        """Every artifact of a deleted tuned model: its adapters and its jobs' checkpoints."""
        shutil.rmtree(self.model_dir(tuned_model_id), ignore_errors=True)
        if self.remote is not None:
            self.remote.remove_folder(self.remote.model_key(tuned_model_id))
        for operation_id in operation_ids:
            self.remove_checkpoint(operation_id)


class RemoteStore:
    """The artifact layout on a non-local fsspec file system (object storage)."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs, self.root = fs, root

    def model_key(self, tuned_model_id: str) -> str:
        return f"{self.root}/adapters/{tuned_model_id}"

    def adapter_key(self, tuned_model_id: str, operation_id: str) -> str:
        return f"{self.model_key(tuned_model_id)}/{operation_id}"

    def epochs_key(self, tuned_model_id: str, operation_id: str) -> str:
        return f"{self.model_key(tuned_model_id)}/checkpoints/{operation_id}"

    def epoch_key(self, tuned_model_id: str, operation_id: str, epoch: int) -> str:
        return f"{self.epochs_key(tuned_model_id, operation_id)}/{epoch}"

    def checkpoint_key(self, operation_id: str) -> str:
        return f"{self.root}/checkpoints/{operation_id}.pt"

    def upload_adapter(self, folder: Path, tuned_model_id: str, operation_id: str) -> None:
        self.upload_folder(folder, self.adapter_key(tuned_model_id, operation_id))

    def upload_folder(self, folder: Path, key: str) -> None:
        """Uploads every file, then the manifest: a reader sees the whole adapter or none."""
        self.remove_file(f"{key}/{COMPLETE}")  # a retried upload: no reader mixes two
        files = {name: path.stat().st_size for name, path in _files(folder)}
        for name, path in _files(folder):
            self.fs.put_file(str(path), f"{key}/{name}")
        self.fs.pipe_file(f"{key}/{COMPLETE}", json.dumps({"files": files}).encode())
        self.fs.invalidate_cache(key.rsplit("/", 1)[0])

    def download_folder(self, key: str, dest: Path) -> bool:
        """Downloads a completely uploaded adapter into `dest`; False when there is none."""
        try:
            manifest = json.loads(self.fs.cat_file(f"{key}/{COMPLETE}"))
        except FileNotFoundError:
            return False
        for name, size in manifest["files"].items():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{key}/{name}", str(target))
            if target.stat().st_size != size:
                raise OSError(f"{key}/{name} is {target.stat().st_size} bytes, not {size}")
        return True

    def upload_file(self, path: Path, key: str) -> None:
        """One object, moved into place whole after its upload."""
        temporary = f"{key}.{uuid.uuid4().hex}.tmp"
        self.fs.put_file(str(path), temporary)
        self.fs.mv(temporary, key)
        self.fs.invalidate_cache(key.rsplit("/", 1)[0])

    def download_file(self, key: str, path: Path) -> bool:
        """False when there is no such object."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.download")
        try:
            self.fs.get_file(key, str(temporary))
            os.replace(temporary, path)
        except FileNotFoundError:
            return False
        finally:
            temporary.unlink(missing_ok=True)
        return True

    def remove_folder(self, key: str) -> None:
        """Everything under `key`; nothing when there is nothing."""
        self.fs.invalidate_cache(key)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(key, recursive=True)
        self.fs.invalidate_cache(key.rsplit("/", 1)[0])

    def remove_file(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(key)
        self.fs.invalidate_cache(key.rsplit("/", 1)[0])


def _files(folder: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path.relative_to(folder).as_posix(), path


@dataclass(frozen=True)
class SharedCheckpoint(Checkpoint):
    """A checkpoint in object storage: saved locally, then uploaded; restored from the
    upload, whichever worker wrote it."""

    remote: RemoteStore
    key: str

    def save(self, model, optimizer, step: int, average) -> None:
        super().save(model, optimizer, step, average)
        try:
            self.remote.upload_file(self.path, self.key)
        except Exception:  # the next save tries again; the job goes on meanwhile
            log.exception("could not upload the checkpoint of step %d", step)

    def restore(self, model, optimizer, average) -> int:
        # The upload is the job's checkpoint; a local file without one is another attempt's.
        if not self.remote.download_file(self.key, self.path):
            self.path.unlink(missing_ok=True)
        return super().restore(model, optimizer, average)
