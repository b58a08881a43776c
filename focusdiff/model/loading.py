"""Load a text-to-image `Policy` (Janus model + tokenizer) from wherever it lives.

`load_policy(source)` accepts:
- `"shapes-base"` (SHAPES_BASE): the ShapesWorld base policy shipped inside the
  package at focusdiff/model/weights/shapes-base/, produced by `focusdiff bootstrap lm`;
- a directory in transformers format (config.json with model_type "janus");
- a directory in DeepSeek format (model_type "multi_modality", as Janus-Pro and
  Janus-FocusDiff-7B ship): converted once by `focusdiff.model.convert` into the
  conversion cache (below), then loaded from there;
- any other string that is a valid hub repo id ("org/name"): fetched from the
  Hugging Face hub, then loaded as one of the two directory formats. A string that
  looks like a path (absolute, or starting with ".", "~") is never sent to the hub:
  if it is not a directory the error says "no such directory".

Conversion cache: `$FOCUSDIFF_CACHE_DIR/converted/<dirname>-<fingerprint>/`, where
the cache root defaults to `$XDG_CACHE_HOME/focusdiff` or `~/.cache/focusdiff`.
The fingerprint hashes the converter version, config.json, the tokenizer files and
each weight file's name, size and modification time (hashing the bytes of a 15 GB
checkpoint would cost minutes at every load). Rewriting a weight file therefore
triggers a fresh conversion; a stale entry is never reused.

Safety: nothing is unpickled beyond plain tensors. transformers 5's from_pretrained
prefers model.safetensors, and reads a pytorch_model.bin only through
`torch.load(weights_only=True)` (its `weights_only` argument defaults to True and
it requires torch >= 2.6 for .bin files); we pass `weights_only=True` explicitly.
The DeepSeek converter loads .bin files the same way.

Every failure is a `ModelLoadError` naming the path, file or key: a missing
directory, config.json, weights file or tokenizer file, a corrupt safetensors
file, and any checkpoint tensor that is missing, unexpected or of the wrong shape.
transformers would only warn about missing/unexpected keys and re-initialize them
randomly; here they are errors.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import threading
from pathlib import Path
from typing import Any

import torch

from focusdiff.io import atomic_write_json
from focusdiff.model.convert import (
    CONFIG_FILE,
    IMAGE_SPECIAL_TOKENS,
    WEIGHT_INDEXES,
    ModelLoadError,
    convert_checkpoint,
    is_deepseek_config,
    read_json,
    unpickling_refused,
    weight_files,
)
from focusdiff.model.policy import Policy

__all__ = ["SHAPES_BASE", "SHAPES_BASE_DIR", "ModelLoadError", "conversion_cache_dir", "load_policy", "policy_directory"]

SHAPES_BASE = "shapes-base"
SHAPES_BASE_DIR = Path(__file__).parent / "weights" / SHAPES_BASE

# Bump when convert.py changes what it writes, so old cache entries are not reused.
CONVERTER_VERSION = "2"  # 2: VQ codebook rows are L2-normalised on conversion

_FINGERPRINTED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$", re.ASCII)


def load_policy(
    source: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
) -> Policy:
    """Load the Janus model and tokenizer at `source` (see the module docstring).

    `cache_dir` overrides where converted DeepSeek checkpoints are kept.
    """
    directory = policy_directory(source)
    return _load_directory(directory, str(source), dtype, device, cache_dir)


def policy_directory(source: str | Path) -> Path:
    """The local checkpoint directory `source` names (see the module docstring): the shipped
    base, a directory, or a hub id fetched into the hub's cache. What gets registered when the
    starting policy becomes a model version; a ModelLoadError when there is none."""
    if isinstance(source, str) and source == SHAPES_BASE:
        if not SHAPES_BASE_DIR.is_dir():
            raise ModelLoadError(
                f"the ShapesWorld base policy is not built: {SHAPES_BASE_DIR} does not exist; "
                "run `focusdiff bootstrap lm` to produce it"
            )
        return SHAPES_BASE_DIR
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"not a directory: {source} (give the checkpoint's directory)")
    if isinstance(source, Path) or _looks_like_path(source):
        raise ModelLoadError(f"no such directory: {source}")
    return _fetch_from_hub(source)


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith((".", "~", "/", "\\"))
        or os.path.isabs(source)
        or not _HUB_ID.match(source)
        or ".." in source
        or "--" in source
    )


def _load_directory(
    directory: Path, source: str, dtype: torch.dtype, device: str | torch.device, cache_dir: str | Path | None
) -> Policy:
    config = read_json(directory / CONFIG_FILE)
    if is_deepseek_config(config):
        directory = _converted(directory, cache_dir)
    elif config.get("model_type") != "janus":
        raise ModelLoadError(
            f"{directory / CONFIG_FILE} has model_type {config.get('model_type')!r}: "
            "expected 'janus' (transformers format) or 'multi_modality' (DeepSeek format)"
        )
    model = _load_model(directory, dtype).to(device)
    tokenizer = _load_tokenizer(directory, model.config.text_config.vocab_size)
    return Policy(model=model, tokenizer=tokenizer, source=source)


# --------------------------------------------------------------------------------------
# transformers-format directories
# --------------------------------------------------------------------------------------


_LOAD_LOCK = threading.Lock()


def _load_model(directory: Path, dtype: torch.dtype):
    from transformers import JanusForConditionalGeneration

    files = weight_files(directory)  # a clear error for a missing weights file or shard, before transformers'
    try:
        with _LOAD_LOCK:  # from_pretrained patches process-global torch state: concurrent loads broke weight tying
            model, info = JanusForConditionalGeneration.from_pretrained(
                directory,
                dtype=dtype,
                weights_only=True,
                # mismatched tensors are reported in `info` instead of raised without their names
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                local_files_only=True,
            )
    except pickle.UnpicklingError as e:
        raise unpickling_refused(files[0] if len(files) == 1 else directory, e) from e
    except Exception as e:  # corrupt files surface as many exception types; keep the cause
        raise ModelLoadError(f"cannot load the model in {directory}: {type(e).__name__}: {e}") from e
    _check_loading_info(directory, info)
    return model


def _check_loading_info(directory: Path, info: dict[str, Any]) -> None:
    problems = []
    if info["mismatched_keys"]:
        problems.append(
            "shape mismatch: "
            + "; ".join(
                f"{key} is {tuple(ckpt)} in the checkpoint, config needs {tuple(model)}"
                for key, ckpt, model in sorted(info["mismatched_keys"])
            )
        )
    if info["missing_keys"]:
        problems.append(f"missing from the checkpoint: {', '.join(sorted(info['missing_keys']))}")
    if info["unexpected_keys"]:
        problems.append(f"not in the model: {', '.join(sorted(info['unexpected_keys']))}")
    if info["error_msgs"]:
        problems.extend(info["error_msgs"])
    if problems:
        raise ModelLoadError(f"checkpoint in {directory} does not fit its config.json: " + " | ".join(problems))


def _load_tokenizer(directory: Path, vocab_size: int):
    from transformers import AutoTokenizer

    if not (directory / "tokenizer.json").is_file() and not (directory / "tokenizer.model").is_file():
        raise ModelLoadError(f"no tokenizer in {directory} (looked for tokenizer.json, tokenizer.model)")
    if not (directory / "tokenizer_config.json").is_file():
        raise ModelLoadError(f"missing tokenizer_config.json in {directory}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer in {directory}: {type(e).__name__}: {e}") from e
    for attr, token in IMAGE_SPECIAL_TOKENS.items():
        if getattr(tokenizer, attr, None) is None:
            raise ModelLoadError(
                f"the tokenizer in {directory} does not define {attr} (expected {token!r} among its "
                "extra_special_tokens, as transformers' Janus processor needs)"
            )
    if tokenizer.pad_token_id is None:
        raise ModelLoadError(f"the tokenizer in {directory} has no pad token (needed for the unconditional CFG row)")
    if len(tokenizer) > vocab_size:
        raise ModelLoadError(f"the tokenizer in {directory} has {len(tokenizer)} tokens, more than the model's vocab_size {vocab_size}")
    return tokenizer


# --------------------------------------------------------------------------------------
# DeepSeek-format directories: the conversion cache
# --------------------------------------------------------------------------------------


def conversion_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where converted DeepSeek checkpoints are kept (see the module docstring)."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("FOCUSDIFF_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "converted"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "focusdiff" / "converted"


def checkpoint_fingerprint(src: Path) -> str:
    """A cheap identity of a checkpoint directory: its config and tokenizer files' bytes, its
    weight files' names, sizes and modification times (hashing 15 GB of weights is not cheap)."""
    digest = hashlib.sha256(f"focusdiff-convert-v{CONVERTER_VERSION}\n".encode())
    for name in (CONFIG_FILE, *_FINGERPRINTED_FILES, *WEIGHT_INDEXES):
        path = src / name
        if path.is_file():
            digest.update(f"{name}\n".encode())
            digest.update(path.read_bytes())
    for path in weight_files(src):
        stat = path.stat()
        digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def checkpoint_files(src: Path) -> list[Path]:
    """The files that make a checkpoint directory the model it is: its config, tokenizer files,
    weight index and weight files (what a content identity hashes; not READMEs or records)."""
    named = [src / name for name in (CONFIG_FILE, *_FINGERPRINTED_FILES, *WEIGHT_INDEXES)]
    return [p for p in named if p.is_file()] + weight_files(src)


def _converted(src: Path, cache_dir: str | Path | None) -> Path:
    """The transformers-format conversion of `src`, made on first use."""
    target = conversion_cache_dir(cache_dir) / f"{src.resolve().name}-{checkpoint_fingerprint(src)}"
    if not (target / CONFIG_FILE).is_file():
        convert_checkpoint(src, target)
        # lineage: which directory this entry was converted from
        atomic_write_json(target / "focusdiff_conversion.json", {"source": str(src.resolve()), "converter_version": CONVERTER_VERSION})
    return target


# --------------------------------------------------------------------------------------
# Hub ids
# --------------------------------------------------------------------------------------


def _fetch_from_hub(repo_id: str) -> Path:
    """Download what a hub checkpoint needs: config first, then the files of its format."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        config = read_json(Path(hf_hub_download(repo_id, CONFIG_FILE)))
        weights = ["*.bin", "*.bin.index.json"] if is_deepseek_config(config) else ["*.safetensors", "*.safetensors.index.json"]
        patterns = [CONFIG_FILE, "generation_config.json", "processor_config.json", "chat_template*", *_FINGERPRINTED_FILES, *weights]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except ModelLoadError:
        raise
    except Exception as e:  # network, auth, missing repo: all end here with their cause
        raise ModelLoadError(
            f"{repo_id!r} is not a local directory, and fetching it from the Hugging Face hub failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e

