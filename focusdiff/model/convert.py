"""Convert a DeepSeek-format Janus checkpoint into a transformers-format directory.

DeepSeek's Janus-Pro releases (`deepseek-ai/Janus-Pro-1B/7B`) and the FocusDiff
release (Janus-FocusDiff-7B) ship DeepSeek's own module names and config layout
(`MultiModalityCausalLM`, model_type "multi_modality"). transformers' Janus
classes use other names, so such a checkpoint has to be renamed before
`JanusForConditionalGeneration.from_pretrained` can read it. This module does that
renaming, builds the equivalent `JanusConfig`, converts the tokenizer (and image
processor, when present) and writes the result atomically with safetensors.

It follows the public transformers conversion recipe
(`convert_janus_weights_to_hf.py`) and `/work/shared/specs/janus.md`, with three
deliberate differences, all in the direction of refusing rather than guessing:
- every checkpoint key must be mapped; the only keys dropped are the documented
  ones (`gen_vision_model.quantize.codebook_used`, a usage counter, and
  `vision_model.vision_tower.attn_pool.*`, a pooling head Janus never runs);
- the converted tensors are checked key by key and shape by shape against the
  model the converted config describes, before anything is written;
- `tie_word_embeddings` is taken from DeepSeek's language config (False for the
  Janus-Pro LLMs) instead of JanusConfig's default True: with True, transformers
  would tie `lm_head` to the input embeddings and lose the trained head.

Checkpoint files are read with `torch.load(weights_only=True)` (plain tensors
only, no arbitrary unpickling) or with safetensors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from focusdiff.errors import FocusdiffError
from focusdiff.io import atomic_directory

if TYPE_CHECKING:  # transformers is imported lazily: importing it costs seconds
    from transformers import JanusConfig


class ModelLoadError(FocusdiffError):
    """A checkpoint cannot be loaded or converted; the message names the path, file or key."""


# Tokens Janus' generate() and processor look up by attribute on the tokenizer
# (`tokenizer.image_token`, `.boi_token`, `.eoi_token`), as the recipe registers them.
IMAGE_SPECIAL_TOKENS = {
    "image_token": "<image_placeholder>",
    "boi_token": "<begin_of_image>",
    "eoi_token": "<end_of_image>",
}
# DeepSeek's pad token: the unconditional CFG row is made of it.
DEEPSEEK_PAD_TOKEN = "<｜▁pad▁｜>"
# DeepSeek's default classifier-free guidance weight (cfg_weight in its examples).
DEFAULT_GUIDANCE_SCALE = 5.0

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PREPROCESSOR_FILE = "preprocessor_config.json"

# Weight files a DeepSeek checkpoint may come as, in order of preference: safetensors
# first (a re-upload may carry DeepSeek names in safetensors), then the original .bin.
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_MAX_KEYS_IN_MESSAGE = 12


def _name_keys(keys: Iterable[str]) -> str:
    """A readable, bounded list of keys for an error message."""
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return shown + (f" (and {more} more)" if more > 0 else "")


# --------------------------------------------------------------------------------------
# State dict: key renaming
# --------------------------------------------------------------------------------------

# A key that is dropped on purpose (see the module docstring).
DROP = None
# Fused attention projections are split along dim 0 into these parts, in order.
_FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "kv": ("k_proj", "v_proj")}

_VQ_MID = {"0": "block_1", "1": "attn_1", "2": "block_2"}
_VISION_BLOCK_PARTS = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn": "self_attn",
    "mlp": "mlp",
}
_VISION_ATTN_PARTS = {
    "proj": "projection_layer",
    "q": "q_proj",
    "q_norm": "q_norm",
    "k_norm": "k_norm",
    "qkv": "qkv",  # split later into q/k/v_proj
    "kv": "kv",  # split later into k/v_proj
}


class _Unmapped(Exception):
    """Raised by the per-module renamers for a key no rule covers."""


def _rename_vq(rest: list[str]) -> list[str] | None:
    """`gen_vision_model.<rest>` -> `model.vqmodel.<...>` (LlamaGen VQ names -> HF names)."""
    if rest == ["quantize", "codebook_used"]:
        return DROP
    if len(rest) >= 2 and rest[0] in ("encoder", "decoder"):
        coder, part = rest[0], rest[1]
        if part == "conv_blocks":
            # encoder.conv_blocks.I.res.J -> encoder.down.I.block.J (decoder: up);
            # the decoder's levels are stored lowest resolution first in both layouts.
            level = rest[2:]
            if len(level) >= 2 and level[1] == "res":
                level = [level[0], "block", *level[2:]]
            return [coder, "down" if coder == "encoder" else "up", *level]
        if part == "mid":
            if len(rest) < 3 or rest[2] not in _VQ_MID:
                raise _Unmapped
            return [coder, "mid", _VQ_MID[rest[2]], *rest[3:]]
    # conv_in/out, norm_out, quant_conv, post_quant_conv, quantize.embedding keep their names
    return rest


def _rename_mlp_projector(rest: list[str]) -> list[str]:
    """DeepSeek's MlpProjector (`layers.0`, GELU, `layers.2`, GELU, `layers.4`...) ->
    HF's aligner MLP (`fc1`, `hidden_layers.0`, `hidden_layers.1`...).

    The odd indices are parameter-free GELUs, so a parameter there is unmapped.
    """
    if len(rest) < 2 or rest[0] != "layers" or not rest[1].isdigit() or int(rest[1]) % 2:
        raise _Unmapped
    index = int(rest[1]) // 2
    head = ["fc1"] if index == 0 else ["hidden_layers", str(index - 1)]
    return [*head, *rest[2:]]


def _rename_vision_tower(rest: list[str]) -> list[str] | None:
    """`vision_model.vision_tower.<rest>` (a timm SigLIP ViT) -> `model.vision_model.<...>`."""
    if rest[0] == "attn_pool":
        return DROP
    if rest == ["pos_embed"]:
        return ["embeddings", "position_embedding", "weight"]
    if rest[:2] == ["patch_embed", "proj"]:
        return ["embeddings", "patch_embedding", *rest[2:]]
    if rest[0] == "norm":
        return ["post_layernorm", *rest[1:]]
    if rest[0] == "blocks" and len(rest) >= 4 and rest[1].isdigit():
        part = _VISION_BLOCK_PARTS.get(rest[2])
        if part is None:
            raise _Unmapped
        inner = rest[3:]
        if part == "self_attn":
            if inner[0] not in _VISION_ATTN_PARTS:
                raise _Unmapped
            inner = [_VISION_ATTN_PARTS[inner[0]], *inner[1:]]
        return ["encoder", "layers", rest[1], part, *inner]
    raise _Unmapped


def _rename_gen_head(rest: list[str]) -> list[str]:
    if rest[0] == "output_mlp_projector":
        return ["proj_out", *rest[1:]]
    if rest[0] == "vision_head":
        return rest
    raise _Unmapped


# DeepSeek top-level module prefix -> (HF prefix, renamer of the remaining parts).
_PREFIXES: list[tuple[str, str, Callable[[list[str]], list[str] | None]]] = [
    ("language_model.model", "model.language_model", lambda rest: rest),
    ("gen_vision_model", "model.vqmodel", _rename_vq),
    ("gen_embed", "model.generation_embeddings", lambda rest: rest),
    ("gen_head", "model.generation_head", _rename_gen_head),
    ("gen_aligner", "model.generation_aligner", _rename_mlp_projector),
    ("aligner", "model.aligner", _rename_mlp_projector),
    ("vision_model.vision_tower", "model.vision_model", _rename_vision_tower),
]


def convert_key(key: str) -> str | None:
    """The transformers name of one DeepSeek key, or None for a documented drop.

    Fused `qkv`/`kv` keys come back with the fused name in place (e.g.
    `...self_attn.qkv.weight`); `convert_state_dict` splits their tensors.
    Raises ModelLoadError for a key no rule covers.
    """
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    for old, new, rename in _PREFIXES:
        if key.startswith(old + "."):
            rest = key[len(old) + 1 :].split(".")
            try:
                renamed = rename(rest)
            except (_Unmapped, IndexError):
                break
            return DROP if renamed is DROP else ".".join([new, *renamed])
    raise ModelLoadError(f"no conversion rule for DeepSeek checkpoint key {key!r}")


def _split_fused(new_key: str, tensor: Tensor) -> dict[str, Tensor]:
    """Split a fused `qkv` (thirds) or `kv` (halves) projection along dim 0."""
    match = re.search(r"\.(qkv|kv)\.(weight|bias)$", new_key)
    if match is None:
        return {new_key: tensor}
    fused, kind = match.groups()
    names = _FUSED[fused]
    if tensor.shape[0] % len(names):
        raise ModelLoadError(
            f"fused attention tensor {new_key!r} has {tensor.shape[0]} rows, not divisible into {len(names)} equal parts"
        )
    stem = new_key[: match.start()]
    # clone: safetensors refuses to save tensors that share storage
    return {f"{stem}.{name}.{kind}": part.clone() for name, part in zip(names, tensor.chunk(len(names), dim=0), strict=True)}


CODEBOOK_KEY = "model.vqmodel.quantize.embedding.weight"


def convert_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a DeepSeek Janus state dict to transformers' `JanusForConditionalGeneration` names.

    Implements every rule of janus.md: language model and lm_head, VQ model
    (conv_blocks -> down/up, res -> block, mid.0/1/2, codebook_used dropped),
    gen_embed, gen_head (output_mlp_projector -> proj_out), both aligners
    (layers.0/2 -> fc1/hidden_layers.0), and the understanding tower (qkv split in
    thirds, kv in halves, pos_embed batch dimension dropped, patch_embed,
    norm -> post_layernorm, proj -> projection_layer, norm1/2 -> layer_norm1/2,
    attn_pool dropped). The VQ codebook rows are L2-normalised (see below): the
    one tensor not copied bit for bit. All keys no rule covers are reported together.
    """
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in sd.items():
        try:
            new_key = convert_key(key)
        except ModelLoadError:
            unmapped.append(key)
            continue
        if new_key is DROP:
            continue
        if new_key == "model.vision_model.embeddings.position_embedding.weight":
            tensor = _drop_batch_dim(key, tensor)
        if new_key == CODEBOOK_KEY:
            # DeepSeek's quantizer L2-normalises latent and codebook (cosine) when encoding;
            # transformers' encode() takes the nearest raw code. With unit rows the two pick
            # the same code, so ground-truth images tokenize as DeepSeek's did. decode()
            # normalises rows itself, so decoding is unchanged.
            tensor = torch.nn.functional.normalize(tensor.float(), dim=-1).to(tensor.dtype)
        for name, value in _split_fused(new_key, tensor).items():
            if name in out:
                raise ModelLoadError(f"two DeepSeek keys map to the same transformers key {name!r} (one is {key!r})")
            out[name] = value
    if unmapped:
        raise ModelLoadError(f"{len(unmapped)} DeepSeek checkpoint key(s) have no conversion rule: {_name_keys(unmapped)}")
    return out


def _drop_batch_dim(key: str, tensor: Tensor) -> Tensor:
    """timm stores pos_embed as (1, positions, dim); an nn.Embedding wants (positions, dim)."""
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise ModelLoadError(f"{key!r} should have shape (1, positions, dim), got {tuple(tensor.shape)}")
    return tensor[0].clone()


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------

# Architectures behind DeepSeek's named components, which its config.json only names.
# SigLIP presets from DeepSeek's siglip_vit.py (the keys of SigLIPVisionCfg).
SIGLIP_PRESETS: dict[str, dict[str, Any]] = {
    "siglip_large_patch16_384": {"width": 1024, "layers": 24, "heads": 16, "patch_size": 16, "mlp_ratio": 4.0},
    "siglip_so400m_patch14_384": {"width": 1152, "layers": 27, "heads": 16, "patch_size": 14, "mlp_ratio": 3.7362},
    "siglip_so400m_patch14_224": {"width": 1152, "layers": 27, "heads": 16, "patch_size": 14, "mlp_ratio": 3.7362},
}
# DeepSeek's "VQ-16" (LlamaGen's VQModel with its Encoder/Decoder defaults). DeepSeek's
# code builds it with no arguments, so a real config never changes these.
VQ_PRESETS: dict[str, dict[str, Any]] = {
    "VQ-16": {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "z_channels": 256, "num_res_blocks": 2},
}
# focusdiff extension: a DeepSeek-layout config may override the preset through these
# keys in `vision_config.params` / `gen_vision_config.params`, so that small checkpoints
# (tests, ShapesWorld) can be written in the same layout. Real releases never carry them.
VISION_OVERRIDES = frozenset(SIGLIP_PRESETS["siglip_large_patch16_384"])
VQ_OVERRIDES = frozenset(VQ_PRESETS["VQ-16"])

# Keys of DeepSeek's language_config that are metadata, not LlamaConfig fields.
_LANGUAGE_METADATA = {"model_type", "architectures", "torch_dtype", "dtype", "transformers_version", "_name_or_path"}


class _ConfigReader:
    """Reads nested config values, raising errors that name the dotted path."""

    def __init__(self, config: dict[str, Any], source: str) -> None:
        self.config = config
        self.source = source

    def get(self, *path: str, default: Any = ...) -> Any:
        node: Any = self.config
        for i, part in enumerate(path):
            if not isinstance(node, dict) or part not in node:
                if default is not ...:
                    return default
                where = ".".join(path[: i + 1])
                raise ModelLoadError(f"{self.source}: missing {where!r}")
            node = node[part]
        return node

    def fail(self, message: str) -> ModelLoadError:
        return ModelLoadError(f"{self.source}: {message}")


def _architecture(
    cfg: _ConfigReader, what: str, name: str, presets: dict[str, dict[str, Any]], keys: frozenset[str],
    params: dict[str, Any], section: str,
) -> dict[str, Any]:
    """A named preset, overridden by explicit sizes in `params`; an unknown name needs all of them."""
    overrides = {k: v for k, v in params.items() if k in keys}
    if name not in presets and set(overrides) != keys:
        raise cfg.fail(
            f"unknown {what} {name!r} (known: {sorted(presets)}); "
            f"give all of {sorted(keys)} in {section}.params to describe it"
        )
    return {**presets.get(name, {}), **overrides}


def _vision_config(cfg: _ConfigReader) -> dict[str, Any]:
    params = cfg.get("vision_config", "params")
    name = params.get("model_name", "siglip_large_patch16_384")
    arch = _architecture(cfg, "vision tower model_name", name, SIGLIP_PRESETS, VISION_OVERRIDES, params, "vision_config")
    # DeepSeek's create_siglip_vit keeps layers up to select_layer (-1: all of them)
    select_layer = int(params.get("select_layer", -1))
    layers = arch["layers"]
    layers = min(layers, layers + select_layer + 1) if select_layer <= 0 else min(layers, select_layer)
    image_size = int(cfg.get("vision_config", "params", "image_size"))
    patch_size = int(arch["patch_size"])
    if image_size % patch_size:
        raise cfg.fail(f"vision image_size {image_size} is not a multiple of patch_size {patch_size}")

    aligner = cfg.get("aligner_config", "params")
    _check_mlp_projector(cfg, "aligner_config", aligner)
    if "input_dim" in aligner and aligner["input_dim"] != arch["width"]:
        raise cfg.fail(f"aligner_config.params.input_dim {aligner['input_dim']} != vision width {arch['width']}")
    return {
        "hidden_size": arch["width"],
        "num_hidden_layers": layers,
        "num_attention_heads": arch["heads"],
        "patch_size": patch_size,
        "mlp_ratio": float(arch["mlp_ratio"]),
        "image_size": image_size,
        "num_image_tokens": (image_size // patch_size) ** 2,
        "projection_dim": cfg.get("aligner_config", "params", "n_embed"),
        "depth": aligner.get("depth", 1),
    }


def _check_mlp_projector(cfg: _ConfigReader, section: str, params: dict[str, Any]) -> None:
    kind = params.get("projector_type", "mlp_gelu")
    if kind != "mlp_gelu":
        raise cfg.fail(f"{section}.params.projector_type {kind!r} is not supported (transformers' Janus has mlp_gelu)")


def _vq_config(cfg: _ConfigReader, text_hidden: int) -> dict[str, Any]:
    cls = cfg.get("gen_vision_config", "cls")
    params = cfg.get("gen_vision_config", "params")
    arch = _architecture(cfg, "gen_vision_config.cls", cls, VQ_PRESETS, VQ_OVERRIDES, params, "gen_vision_config")
    codebook_size = cfg.get("gen_vision_config", "params", "image_token_size")
    code_dim = cfg.get("gen_vision_config", "params", "n_embed")

    gen_aligner = cfg.get("gen_aligner_config", "params")
    _check_mlp_projector(cfg, "gen_aligner_config", gen_aligner)
    gen_head = cfg.get("gen_head_config", "params")
    aligner_out = cfg.get("gen_aligner_config", "params", "n_embed")
    # transformers' JanusVQVAEHead is Linear(image_token_embed_dim -> projection_dim) then
    # Linear(projection_dim -> num_embeddings), and the generation aligner also ends in
    # projection_dim; DeepSeek's VisionHead is Linear(n_embed -> image_token_embed) then
    # Linear(image_token_embed -> image_token_size). Only these equalities are expressible.
    checks = {
        "gen_aligner_config.params.input_dim": (gen_aligner.get("input_dim", code_dim), code_dim),
        "gen_aligner_config.params.n_embed": (aligner_out, text_hidden),
        "gen_head_config.params.n_embed": (cfg.get("gen_head_config", "params", "n_embed"), text_hidden),
        "gen_head_config.params.image_token_embed": (gen_head.get("image_token_embed", aligner_out), aligner_out),
        "gen_head_config.params.image_token_size": (gen_head.get("image_token_size", codebook_size), codebook_size),
    }
    for where, (value, expected) in checks.items():
        if value != expected:
            raise cfg.fail(f"{where} is {value}, but transformers' Janus needs it to equal {expected}")
    return {
        "embed_dim": code_dim,
        "num_embeddings": codebook_size,
        "base_channels": arch["ch"],
        "channel_multiplier": list(arch["ch_mult"]),
        "latent_channels": arch["z_channels"],
        "num_res_blocks": arch["num_res_blocks"],
        "projection_dim": aligner_out,
        "image_token_embed_dim": text_hidden,
        "num_hidden_layers": gen_aligner.get("depth", 1),
    }


def convert_config(
    deepseek_config: dict[str, Any], *, token_ids: dict[str, int] | None = None, source: str = "config.json"
) -> JanusConfig:
    """The `JanusConfig` equivalent to a DeepSeek `MultiModalityConfig` dict.

    `token_ids` (keys bos_token_id, eos_token_id, pad_token_id, image_token_id) come
    from the checkpoint's tokenizer; without it the ids in `language_config` (if any)
    and JanusConfig's default image_token_id are kept. Raises ModelLoadError naming
    the config path of a missing or inexpressible value.
    """
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    cfg = _ConfigReader(deepseek_config, source)
    language = {k: v for k, v in cfg.get("language_config").items() if k not in _LANGUAGE_METADATA}
    tie = bool(language.pop("tie_word_embeddings", False))
    token_ids = dict(token_ids or {})
    image_token_id = token_ids.pop("image_token_id", None)
    text_config = LlamaConfig(**{**language, **token_ids, "tie_word_embeddings": tie})

    extra: dict[str, Any] = {}
    if image_token_id is not None:
        extra["image_token_id"] = image_token_id
    dtype = deepseek_config.get("torch_dtype") or deepseek_config.get("dtype")
    if dtype is not None:
        extra["dtype"] = dtype
    return JanusConfig(
        text_config=text_config,
        vision_config=JanusVisionConfig(**_vision_config(cfg)),
        vq_config=JanusVQVAEConfig(**_vq_config(cfg, text_config.hidden_size)),
        tie_word_embeddings=tie,
        **extra,
    )


# --------------------------------------------------------------------------------------
# Reading a checkpoint directory
# --------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLoadError(f"missing {path.name} in {path.parent}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} should hold a JSON object")
    return data


def is_deepseek_config(config: dict[str, Any]) -> bool:
    """DeepSeek's MultiModalityConfig layout (as opposed to transformers' model_type "janus")."""
    return config.get("model_type") == "multi_modality" or {"language_config", "gen_vision_config"} <= config.keys()


def weight_files(src: Path) -> list[Path]:
    """The weight files of a checkpoint directory: the shards of an index, or the single file."""
    for index_name in WEIGHT_INDEXES:
        index_path = src / index_name
        if index_path.is_file():
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelLoadError(f"{index_path} has no 'weight_map'")
            shards = [src / name for name in sorted(set(weight_map.values()))]
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise ModelLoadError(f"{index_path} lists shard(s) missing from {src}: {_name_keys(missing)}")
            return shards
    for name in WEIGHT_FILES:
        if (src / name).is_file():
            return [src / name]
    raise ModelLoadError(f"no weights file in {src} (looked for {', '.join(WEIGHT_INDEXES + WEIGHT_FILES)})")


def load_weight_file(path: Path) -> dict[str, Tensor]:
    """One checkpoint file as a flat name -> tensor dict, never unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"cannot read safetensors file {path}: {e}") from e
    else:
        try:
            # mmap (zip-format files only) keeps a 15 GB checkpoint out of RAM until it is written
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as e:
            raise unpickling_refused(path, e) from e
        except (RuntimeError, OSError, EOFError, ValueError) as e:
            raise ModelLoadError(f"cannot read checkpoint file {path}: {e}") from e
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path} holds a {type(sd).__name__}, not a mapping of tensor names to tensors")
    not_tensors = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if not_tensors:
        raise ModelLoadError(f"{path} holds entries that are not named tensors: {_name_keys(not_tensors)}")
    return sd


def unpickling_refused(path: Path, error: pickle.UnpicklingError) -> ModelLoadError:
    """The error for a .bin file that `torch.load(weights_only=True)` refused.

    weights_only refuses any object that is not a tensor or a plain container; torch's
    own message goes on to suggest weights_only=False, which is exactly what must not
    be done with an untrusted file, so only its diagnosis is kept.
    """
    match = re.search(r"WeightsUnpickler error: (.*)", str(error))
    reason = match.group(1).split(". ")[0] if match else str(error).splitlines()[0]
    return ModelLoadError(f"refusing to load {path}: it is not a plain-tensor checkpoint ({reason})")


def load_deepseek_state_dict(src: Path) -> dict[str, Tensor]:
    """All tensors of a (possibly sharded) checkpoint, checked against its index."""
    files = weight_files(src)
    sd: dict[str, Tensor] = {}
    for path in files:
        part = load_weight_file(path)
        clash = part.keys() & sd.keys()
        if clash:
            raise ModelLoadError(f"key(s) stored in more than one shard ({path.name}): {_name_keys(clash)}")
        sd.update(part)
    _check_index(src, files, sd)
    return sd


def _check_index(src: Path, files: list[Path], sd: dict[str, Tensor]) -> None:
    index_names = [n for n in WEIGHT_INDEXES if (src / n).is_file()]
    if not index_names:
        return
    weight_map = read_json(src / index_names[0])["weight_map"]
    listed_only = weight_map.keys() - sd.keys()
    if listed_only:
        raise ModelLoadError(f"{src / index_names[0]} lists key(s) no shard holds: {_name_keys(listed_only)}")
    stored_only = sd.keys() - weight_map.keys()
    if stored_only:
        raise ModelLoadError(f"shards in {src} hold key(s) {index_names[0]} does not list: {_name_keys(stored_only)}")


# --------------------------------------------------------------------------------------
# Tokenizer and processor
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _transformers_log_level(level: int) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity(level)
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _require_tokenizer_files(src: Path) -> None:
    missing = [name for name in TOKENIZER_FILES if not (src / name).is_file()]
    if missing:
        raise ModelLoadError(f"tokenizer file(s) missing from {src}: {', '.join(missing)}")


def load_deepseek_tokenizer(src: Path):
    """DeepSeek's tokenizer with the image tokens registered as transformers' Janus expects.

    DeepSeek's tokenizer_config names LlamaTokenizerFast over a byte-level BPE
    tokenizer.json; transformers 5 notices the byte-level model and loads it with
    its generic backend, so the ids are those of tokenizer.json.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    _require_tokenizer_files(src)
    raw = Tokenizer.from_file(str(src / "tokenizer.json"))
    # extra_special_tokens would silently add a token missing from the vocabulary
    for token in [*IMAGE_SPECIAL_TOKENS.values()]:
        if raw.token_to_id(token) is None:
            raise ModelLoadError(f"{src / 'tokenizer.json'} has no token {token!r}, which Janus image generation needs")
    try:
        # quiet: transformers reads DeepSeek's config.json on the way and warns that
        # "multi_modality" is not a model type it knows, which is expected here
        with _transformers_log_level(logging.ERROR):
            tokenizer = AutoTokenizer.from_pretrained(src, extra_special_tokens=IMAGE_SPECIAL_TOKENS)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"cannot load the tokenizer in {src}: {e}") from e
    if tokenizer.pad_token is None:
        if raw.token_to_id(DEEPSEEK_PAD_TOKEN) is None:
            raise ModelLoadError(f"the tokenizer in {src} has no pad token and no {DEEPSEEK_PAD_TOKEN!r}")
        tokenizer.pad_token = DEEPSEEK_PAD_TOKEN
    return tokenizer


def special_token_ids(tokenizer) -> dict[str, int]:
    """The ids JanusConfig and the generation config need, read from the tokenizer."""
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_SPECIAL_TOKENS["image_token"]),
    }


def _save_tokenizer_and_processor(src: Path, dst: Path, tokenizer, num_image_tokens: int) -> None:
    """Save the tokenizer, and a JanusProcessor when DeepSeek's preprocessor config exists."""
    if not (src / PREPROCESSOR_FILE).is_file():
        tokenizer.save_pretrained(dst)
        return
    from transformers import JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    pre = read_json(src / PREPROCESSOR_FILE)
    kwargs = {k: pre[k] for k in ("do_normalize", "image_mean", "image_std", "min_size", "rescale_factor") if k in pre}
    if "image_size" in pre:
        kwargs["size"] = {"height": pre["image_size"], "width": pre["image_size"]}
    # the PIL image processor: torchvision (the other backend) is not a dependency here
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(**kwargs),
        tokenizer=tokenizer,
        num_image_tokens=num_image_tokens,
    )
    processor.save_pretrained(dst)


# --------------------------------------------------------------------------------------
# The whole checkpoint
# --------------------------------------------------------------------------------------


def check_against_config(sd: dict[str, Tensor], config) -> None:
    """Every tensor the model described by `config` expects, with its exact shape, and no other."""
    from transformers import JanusForConditionalGeneration

    with torch.device("meta"):  # shapes only: no memory, no initialization
        expected = {k: tuple(v.shape) for k, v in JanusForConditionalGeneration(config).state_dict().items()}
    missing = expected.keys() - sd.keys()
    unexpected = sd.keys() - expected.keys()
    wrong = {k: (tuple(sd[k].shape), expected[k]) for k in expected.keys() & sd.keys() if tuple(sd[k].shape) != expected[k]}
    problems = []
    if wrong:
        problems.append(
            "shape mismatch: "
            + "; ".join(f"{k} is {got}, config needs {want}" for k, (got, want) in sorted(wrong.items())[:_MAX_KEYS_IN_MESSAGE])
        )
    if missing:
        problems.append(f"missing: {_name_keys(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_name_keys(unexpected)}")
    if problems:
        raise ModelLoadError("converted checkpoint does not fit its config: " + " | ".join(problems))


def convert_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Convert the DeepSeek-format checkpoint directory `src` into a transformers one at `dst`.

    `dst` receives config.json, generation_config.json, model.safetensors (sharded by
    save_pretrained when large), the tokenizer files and, if `src` has a
    preprocessor_config.json, the JanusProcessor files. It is written atomically:
    on any error an existing `dst` is left as it was. Returns `dst`.
    """
    from transformers import GenerationConfig, JanusForConditionalGeneration

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ModelLoadError(f"no such directory: {src}")
    deepseek_config = read_json(src / CONFIG_FILE)
    if not is_deepseek_config(deepseek_config):
        raise ModelLoadError(
            f"{src / CONFIG_FILE} is not a DeepSeek Janus config (model_type {deepseek_config.get('model_type')!r}, "
            "expected 'multi_modality' with language_config and gen_vision_config)"
        )
    tokenizer = load_deepseek_tokenizer(src)
    ids = special_token_ids(tokenizer)
    config = convert_config(deepseek_config, token_ids=ids, source=str(src / CONFIG_FILE))
    if len(tokenizer) > config.text_config.vocab_size:
        raise ModelLoadError(
            f"the tokenizer in {src} has {len(tokenizer)} tokens, more than the model's vocab_size {config.text_config.vocab_size}"
        )
    sd = convert_state_dict(load_deepseek_state_dict(src))
    check_against_config(sd, config)

    with torch.device("meta"):  # save_pretrained only needs the module tree; the tensors are `sd`
        model = JanusForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        guidance_scale=DEFAULT_GUIDANCE_SCALE,
        # Janus' generate(generation_mode="image") reads boi_token_id from here
        generation_kwargs={"boi_token_id": tokenizer.convert_tokens_to_ids(IMAGE_SPECIAL_TOKENS["boi_token"])},
    )
    with atomic_directory(dst) as tmp:
        model.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
        _save_tokenizer_and_processor(src, tmp, tokenizer, config.vision_config.num_image_tokens)
    return dst
