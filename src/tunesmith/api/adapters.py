"""Tunesmith's extensions beyond the Gemini API: export a tuned model's adapter, and import
an adapter as a tuned model. Archives travel as tar files (gzip too, on import)."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fastapi import Request

from tunesmith.api.archive_reader import COPY_CHUNK, DAMAGED, MAX_READ, ArchiveRefused, open_tar
from tunesmith.api.deps import query
from tunesmith.api.service import TuningService
from tunesmith.config import Settings
from tunesmith.domain import names
from tunesmith.domain.access import Principal
from tunesmith.domain.errors import Code, FieldViolation, ServiceError, invalid
from tunesmith.domain.quotas import ProjectQuota
from tunesmith.domain.resources import Hyperparameters, TunedModel, TunedModelState
from tunesmith.domain.validation import Violations, check_descriptive, check_tuned_model_id
from tunesmith.store.repository import Repository
from tunesmith.training.base_models import Catalog, CatalogEntry, ensure_cached
from tunesmith.training.export import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    InvalidAdapter,
    SamplingDefaults,
    export_merged,
    export_peft,
    read_adapter_config,
    store_imported_adapter,
)

FORMATS = ("peft", "merged")
MAX_ARCHIVE_BYTES = 512 * 1024**2  # what an import may upload
MAX_UNPACKED_BYTES = 1024**3  # what its archive may unpack to, every file counted
MAX_CONFIG_BYTES = 1024**2
# tarfile keeps every member's headers (each at most archive_reader.MAX_READ) in memory.
MAX_MEMBERS = 256
MAX_TAR_OVERHEAD = MAX_MEMBERS * 2 * MAX_READ  # headers and padding between the files
# The files an import reads, with their size limits; anything else in the archive is skipped.
WANTED = {ADAPTER_CONFIG: MAX_CONFIG_BYTES, ADAPTER_WEIGHTS: MAX_ARCHIVE_BYTES}


@dataclass(frozen=True)
class ImportRequest:
    tuned_model_id: str | None
    display_name: str
    description: str
    base_model: str | None


@dataclass(frozen=True)
class Export:
    archive: Path  # alone in a scratch folder that `discard` removes

    def discard(self) -> None:
        shutil.rmtree(self.archive.parent, ignore_errors=True)


def decode_import(request: Request) -> ImportRequest:
    """importAdapter's query parameters, every problem reported at once."""
    command = ImportRequest(
        tuned_model_id=query(request, "tunedModelId") or None,
        display_name=query(request, "displayName") or "",
        description=query(request, "description") or "",
        base_model=query(request, "baseModel") or None,
    )
    v = Violations()
    check_tuned_model_id(v, command.tuned_model_id)
    check_descriptive(v, command.display_name, command.description)
    v.raise_if_any()
    return command


def too_large(what: str, limit: int) -> ServiceError:
    return invalid([FieldViolation("", f"{what} is larger than {limit // 1024**2} MiB")])


async def receive_archive(request: Request, dest: Path) -> Path:
    """The request body, written to `dest` and refused past MAX_ARCHIVE_BYTES."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ARCHIVE_BYTES:
        raise too_large("The adapter archive", MAX_ARCHIVE_BYTES)
    size = 0
    with dest.open("wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_ARCHIVE_BYTES:
                raise too_large("The adapter archive", MAX_ARCHIVE_BYTES)
            out.write(chunk)
    if size == 0:
        raise invalid(
            [
                FieldViolation(
                    "",
                    "The request body must be a tar archive of adapter_config.json and "
                    "adapter_model.safetensors",
                )
            ]
        )
    return dest


def unpack(archive: Path, dest: Path) -> dict[str, Path]:
    """adapter_config.json and adapter_model.safetensors from a tar archive (at its top or
    in one folder), extracted to `dest`; nothing else is extracted. Headers, members and
    decompressed bytes are bounded before they are read (archive_reader.py)."""
    found: dict[str, Path] = {}
    try:
        with open_tar(archive, MAX_UNPACKED_BYTES + MAX_TAR_OVERHEAD) as tar:
            unpacked = 0
            for count, member in enumerate(tar, start=1):
                unpacked += member.size
                if count > MAX_MEMBERS or unpacked > MAX_UNPACKED_BYTES:
                    raise _bad_archive(f"it unpacks to more than {MAX_MEMBERS} files or 1 GiB")
                name = _wanted(member)
                if name is None:
                    continue
                if name in found:
                    raise _bad_archive(f"it holds more than one {name}")
                if member.size > WANTED[name]:
                    raise too_large(name, WANTED[name])
                found[name] = _extract(tar, member, dest / name)
    except ArchiveRefused as refused:
        raise _bad_archive(str(refused)) from None
    except tarfile.ReadError:
        raise _bad_archive("it is not a tar archive (plain, gzip, bzip2 or xz)") from None
    except (tarfile.TarError, OSError, *DAMAGED) as error:
        raise _bad_archive(f"it is damaged ({error})") from None
    for name in WANTED:
        if name not in found:
            raise _bad_archive(f"it has no {name}")
    return found


def _wanted(member: tarfile.TarInfo) -> str | None:
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if not member.isfile() or not parts or len(parts) > 2 or parts[-1] not in WANTED:
        return None
    return parts[-1]


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> Path:
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has contents
    with source, dest.open("wb") as out:
        shutil.copyfileobj(source, out, COPY_CHUNK)
    return dest


def _bad_archive(problem: str) -> ServiceError:
    return invalid([FieldViolation("", f"The adapter archive cannot be imported: {problem}.")])


def pack(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name, filter=_plain)


def _plain(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """No server user names or private modes in what a client unpacks."""
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.mode = 0o644
    return member


def _invalid_adapter(error: InvalidAdapter) -> ServiceError:
    return invalid([FieldViolation(error.where, error.problem)])


class AdapterService:
    def __init__(
        self, settings: Settings, repo: Repository, catalog: Catalog, tuning: TuningService
    ) -> None:
        self.settings, self.repo, self.catalog, self.tuning = settings, repo, catalog, tuning
        self.quota = ProjectQuota(settings.quota_tuned_models_per_project)  # an import runs no job
        # Merging holds a whole float32 base model in memory: one at a time.
        self._merge_lock = threading.Lock()

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A temporary folder beside the adapters, so a checked import moves in atomically."""
        root = self.tuning.artifacts.adapters_root
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".import-", dir=root) as d:
            yield Path(d)

    # ------------------------------------------------------------ export

    def export(self, caller: Principal, model_id: str, fmt: str) -> Export:
        if fmt not in FORMATS:
            raise invalid([FieldViolation("format", f"format must be peft or merged, got '{fmt}'")])
        model = self.tuning.get(caller, model_id)
        adapter, entry = self._exportable(model)
        base_folder = ensure_cached(entry.target, self.settings.base_model_cache_dir)
        scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=self.settings.data_dir))
        try:
            folder = scratch / model.id
            if fmt == "peft":
                export_peft(adapter, base_folder, entry.target.name, folder)
            else:
                defaults = SamplingDefaults(model.temperature, model.top_p, model.top_k)
                with self._merge_lock:
                    export_merged(adapter, base_folder, folder, defaults)
            archive = scratch / f"{model.id}-{fmt}.tar"
            pack(folder, archive)
            shutil.rmtree(folder)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return Export(archive)

    def _exportable(self, model: TunedModel) -> tuple[Path, CatalogEntry]:
        if model.state != TunedModelState.ACTIVE:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"Tuned model {model.name} is {model.state.name}; only an ACTIVE tuned model "
                "can be exported.",
            )
        adapter = self.tuning.adapter_of(model.id)
        if adapter is None or not (adapter / ADAPTER_WEIGHTS).exists():
            raise ServiceError(Code.FAILED_PRECONDITION, f"The adapter of {model.name} is missing.")
        entry = self.catalog.get(model.base_model)
        if entry is None:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"Base model {model.base_model} of {model.name} is not installed.",
            )
        return adapter, entry

    # ------------------------------------------------------------ import

    def import_adapter(
        self, caller: Principal, request: ImportRequest, archive: Path, scratch: Path
    ) -> TunedModel:
        """Checks the archive's adapter against its base model, stores it where a tuning
        job would have, then records the ACTIVE model; a failure leaves neither behind."""
        files = unpack(archive, scratch)
        try:
            config = read_adapter_config(files[ADAPTER_CONFIG].read_bytes())
        except InvalidAdapter as error:
            raise _invalid_adapter(error) from None
        entry = self._import_base(request.base_model, config.get("base_model_name_or_path"))
        model = self._new_model(caller, request, entry)
        if self.repo.get_tuned_model(model.id) is not None:
            raise ServiceError(Code.ALREADY_EXISTS, f"Tuned model {model.name} already exists.")
        staged = scratch / "adapter"
        base_folder = ensure_cached(entry.target, self.settings.base_model_cache_dir)
        try:
            store_imported_adapter(
                config, files[ADAPTER_WEIGHTS], base_folder, entry.target.name, staged
            )
        except InvalidAdapter as error:
            raise _invalid_adapter(error) from None
        self._commit(caller, model, staged)
        return self.tuning.get(caller, model.id)

    def _import_base(self, requested: str | None, named: object) -> CatalogEntry:
        name = requested or (named if isinstance(named, str) else "")
        entry = self.catalog.get(name)
        if entry is not None:
            return entry
        known = ", ".join(e.name for e in self.catalog.list())
        problem = (
            f"baseModel '{requested}' is not a base model here"
            if requested
            else f"baseModel is required: {ADAPTER_CONFIG} names base model {named!r}, which "
            "is not one here"
        )
        raise invalid([FieldViolation("baseModel", f"{problem}. Known: {known}")])

    def _new_model(
        self, caller: Principal, request: ImportRequest, entry: CatalogEntry
    ) -> TunedModel:
        now = datetime.now(UTC)
        return TunedModel(
            id=request.tuned_model_id or names.tuned_model_id(request.display_name),
            base_model=entry.name,
            display_name=request.display_name,
            description=request.description,
            temperature=entry.temperature,
            top_p=entry.top_p,
            top_k=entry.top_k,
            state=TunedModelState.ACTIVE,
            create_time=now,
            update_time=now,
            hyperparameters=Hyperparameters(0, 0, 0.0),  # not tuned here: unknown
            owner_id=caller.id,
            project_number=caller.project_number,
        )

    def _commit(self, caller: Principal, model: TunedModel, staged: Path) -> None:
        operation_id = names.operation_id()
        artifacts = self.tuning.artifacts
        artifacts.store(staged, model.id, operation_id)
        try:
            self.repo.import_tuned_model(model, operation_id, caller.email, self.quota)
        except BaseException:
            artifacts.remove_operation(model.id, operation_id)
            raise
