"""Janus-Pro at its real shape, without its weights: random-initialised policies whose every
module has Janus-Pro-1B's or Janus-Pro-7B's configuration, for benchmarks, the memory
planner and tests (no weights can be downloaded here, and speed and memory do not depend
on the values of the weights).

What is real: the language model's width, heads, MLP and vocabulary (102400), the
understanding tower (SigLIP-L/16 at 384 px), the 16x VQ with its 16384-code book at 384 px
(576 image tokens), the generation aligner and head, and the special tokens' ids
(`<｜begin▁of▁sentence｜>` 100000, pad 100015, `<begin_of_image>` 100016, `<end_of_image>`
100593, `<image_placeholder>` 100581 for 1B / 100594 for 7B). Sources: transformers'
`JanusConfig` defaults and converter, DeepSeek's Janus-Pro-7B config.json (docs/real-shape.md
lists them). What is not: the weights, and the tokenizer's ordinary vocabulary: a word-level
tokenizer that knows ShapesWorld's words (so ShapesWorld prompts run through it), every other
id a reserved placeholder, so that ids, `len(tokenizer)` and the special tokens match.

`layers=N` keeps only the first N of the language model's layers: full width, full images,
a fraction of the depth, so that a real-shape step fits a CPU (per-layer costs scale
linearly; the planner extrapolates). `save_real_shape_policy` writes a transformers-format
directory, so the policy loads through `load_policy`, the path users run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import JanusConfig, PreTrainedTokenizerFast

from focusdiff.errors import ConfigError
from focusdiff.io import atomic_write_json
from focusdiff.model.shapes_model import ASSISTANT, BOI, BOS, EOI, EOS, IMAGE, PAD, UNK, USER, shapes_vocabulary

VOCAB_SIZE = 102400
SPECIAL_IDS = {BOS: 100000, EOS: 100001, USER: 100002, ASSISTANT: 100003, PAD: 100015, BOI: 100016, EOI: 100593}
# <|User|> and <|Assistant|> are ordinary text in DeepSeek's BPE; here they need ids of their own
# (a word-level tokenizer): two ids of the reserved block after BOS/EOS.


@dataclass(frozen=True)
class RealShape:
    """One released Janus-Pro size: what differs between 1B and 7B."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    image_token_id: int
    hub_ids: tuple[str, ...]


REAL_SHAPES: dict[str, RealShape] = {
    "janus-pro-1b": RealShape(2048, 5632, 24, 16, 100581, ("deepseek-community/Janus-Pro-1B", "deepseek-ai/Janus-Pro-1B")),
    "janus-pro-7b": RealShape(4096, 11008, 30, 32, 100594, ("deepseek-community/Janus-Pro-7B", "deepseek-ai/Janus-Pro-7B")),
}


def real_shape(name: str) -> RealShape:
    if name not in REAL_SHAPES:
        raise ConfigError(f"unknown real shape {name!r}: choose one of {', '.join(REAL_SHAPES)}")
    return REAL_SHAPES[name]


def shape_of_policy(policy: str) -> str | None:
    """The real shape a hub id names (e.g. a recipe's `policy`), or None."""
    return next((name for name, s in REAL_SHAPES.items() if policy in s.hub_ids), None)


def real_shape_config(name: str, layers: int | None = None) -> JanusConfig:
    """Janus-Pro's JanusConfig; `layers` keeps the first N language-model layers."""
    shape = real_shape(name)
    if layers is not None and not 1 <= layers <= shape.layers:
        raise ConfigError(f"{name} has {shape.layers} language-model layers: layers must be 1..{shape.layers}, got {layers}")
    text = {
        "model_type": "llama", "vocab_size": VOCAB_SIZE, "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate, "num_hidden_layers": layers or shape.layers,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.heads, "max_position_embeddings": 16384,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "bos_token_id": SPECIAL_IDS[BOS], "eos_token_id": SPECIAL_IDS[EOS], "pad_token_id": SPECIAL_IDS[PAD],
    }
    # the understanding tower and the VQ are transformers' defaults: SigLIP-L/16 at 384 px, VQ-16 (16384 x 8)
    vision = {"image_size": 384, "projection_dim": shape.hidden, "depth": 2}
    vq = {"embed_dim": 8, "num_embeddings": 16384, "projection_dim": shape.hidden,
          "image_token_embed_dim": shape.hidden, "num_hidden_layers": 2}
    # an untied lm_head, as released: then the 1B count is the hub checkpoint's 2,076,636,811 parameters
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=shape.image_token_id,
                       tie_word_embeddings=False)


def real_shape_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Janus-Pro's vocabulary size and special-token ids (see the
    module docstring): ShapesWorld's words at the start, reserved placeholders elsewhere."""
    special = {**SPECIAL_IDS, IMAGE: real_shape(name).image_token_id, UNK: 0}
    words = shapes_vocabulary()
    vocab: dict[str, int] = {UNK: 0, **{w: i + 1 for i, w in enumerate(words)}}
    taken = {**{i: t for t, i in special.items()}}
    for i in range(len(vocab), VOCAB_SIZE):
        vocab[taken.get(i, f"<|reserved_{i}|>")] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left",
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
    )


def build_real_shape_model(name: str, layers: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
                           device: str | torch.device = "cpu"):
    """The random-initialised JanusForConditionalGeneration (transformers' own init, seeded),
    built on `device` (initialising 7B parameters on a CPU takes minutes, on a GPU seconds)."""
    from transformers import JanusForConditionalGeneration

    torch.manual_seed(seed)
    with torch.device(device):
        model = JanusForConditionalGeneration(real_shape_config(name, layers))
    return model.to(dtype).eval()


def save_real_shape_policy(name: str, out: Path, layers: int | None = None, seed: int = 0,
                           dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write a random-initialised real-shape policy as a transformers checkpoint directory
    (config.json, model.safetensors, tokenizer): `load_policy(out)` loads it as it would
    Janus-Pro. Stored in bf16 by default (as Janus-Pro ships); load it in any dtype."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: give a new directory for the {name} policy")
    tmp = out.with_name(out.name + ".partial")
    model = build_real_shape_model(name, layers, seed, dtype)
    model.save_pretrained(tmp)
    real_shape_tokenizer(name).save_pretrained(tmp)
    atomic_write_json(tmp / "real_shape.json", {"shape": name, "layers": layers or real_shape(name).layers,
                                                "seed": seed, "weights": "random (transformers' init)"})
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
