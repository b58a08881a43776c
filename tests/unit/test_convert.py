"""DeepSeek -> transformers Janus conversion, tested on a tiny random model.

No real weights exist here, so the test builds a tiny transformers Janus model,
writes it out in DeepSeek's layout with the inverse of every mapping rule
(`_to_deepseek`), converts it back and demands exact equality: every tensor, and
the image tokens greedy CFG generation produces. The helpers at the top are
shared with tests/unit/test_loading.py.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
)

from focusdiff.model.convert import (
    CODEBOOK_KEY,
    ModelLoadError,
    convert_checkpoint,
    convert_config,
    convert_key,
    convert_state_dict,
)

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
IMAGE, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
PROMPT = "<|User|>: a red circle left of a blue square\n\n<|Assistant|>:" + BOI
CODEBOOK_USED_SIZE = 65536  # LlamaGen's usage counter buffer


# --------------------------------------------------------------------------------------
# Shared builders: a DeepSeek-style tokenizer, a tiny Janus model, its DeepSeek checkpoint
# --------------------------------------------------------------------------------------


@functools.cache
def raw_tokenizer() -> Tokenizer:
    """A byte-level BPE tokenizer like DeepSeek's (BOS added by the post-processor)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[BOS, EOS, PAD, IMAGE, BOI, EOI],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["a red circle left of a blue square", "two green triangles above one yellow star", PROMPT]
    tok.train_from_iterator(corpus * 20, trainer)
    tok.add_tokens(["<|User|>", "<|Assistant|>"])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return tok


def write_deepseek_tokenizer(directory: Path) -> None:
    """tokenizer.json plus DeepSeek's tokenizer_config (which names LlamaTokenizerFast)."""
    raw_tokenizer().save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": None,
              "model_max_length": 16384, "legacy": True, "add_bos_token": False}
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": [IMAGE, BOI, EOI]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "special_tokens_map.json").write_text(json.dumps(special))


def tiny_config() -> JanusConfig:
    tok = raw_tokenizer()
    text = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       tie_word_embeddings=False, bos_token_id=tok.token_to_id(BOS),
                       eos_token_id=tok.token_to_id(EOS), pad_token_id=tok.token_to_id(PAD))
    vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                               patch_size=4, num_image_tokens=64, projection_dim=64, depth=2, mlp_ratio=4.0)
    vq = JanusVQVAEConfig(num_embeddings=64, embed_dim=8, base_channels=32, channel_multiplier=[1, 2, 2],
                          latent_channels=32, num_res_blocks=1, projection_dim=64, image_token_embed_dim=64,
                          num_hidden_layers=2)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=tok.token_to_id(IMAGE), tie_word_embeddings=False)


def tiny_model() -> JanusForConditionalGeneration:
    """A fresh copy of the same random model (seeded; every tensor perturbed so that no
    two same-shaped tensors are equal and a swapped key cannot go unnoticed)."""
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def deepseek_config(config: JanusConfig) -> dict:
    """The DeepSeek-layout config.json of `config`, sizes given through the override keys."""
    t, v, q = config.text_config, config.vision_config, config.vq_config
    return {
        "model_type": "multi_modality",
        "architectures": ["MultiModalityCausalLM"],
        "torch_dtype": "float32",
        "language_config": {"model_type": "llama", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
                            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
                            "num_attention_heads": t.num_attention_heads,
                            "num_key_value_heads": t.num_key_value_heads,
                            "max_position_embeddings": t.max_position_embeddings, "torch_dtype": "float32"},
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                          "params": {"model_name": "siglip_tiny", "image_size": v.image_size, "select_feature": "same",
                                     "select_layer": -1, "width": v.hidden_size, "layers": v.num_hidden_layers,
                                     "heads": v.num_attention_heads, "patch_size": v.patch_size,
                                     "mlp_ratio": v.mlp_ratio}},
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                           "params": {"depth": v.depth, "input_dim": v.hidden_size, "n_embed": v.projection_dim,
                                      "projector_type": "mlp_gelu"}},
        "gen_vision_config": {"cls": "VQ-tiny", "model_type": "gen_vision",
                              "params": {"image_token_size": q.num_embeddings, "n_embed": q.embed_dim,
                                         "ch": q.base_channels, "ch_mult": list(q.channel_multiplier),
                                         "z_channels": q.latent_channels, "num_res_blocks": q.num_res_blocks}},
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner",
                               "params": {"depth": q.num_hidden_layers, "input_dim": q.embed_dim,
                                          "n_embed": q.projection_dim, "projector_type": "mlp_gelu"}},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head",
                            "params": {"image_token_embed": q.projection_dim, "image_token_size": q.num_embeddings,
                                       "n_embed": t.hidden_size}},
    }


def _aligner_to_deepseek(rest: str) -> str:
    if rest.startswith("fc1."):
        return "layers.0." + rest[4:]
    n, tail = re.fullmatch(r"hidden_layers\.(\d+)\.(.*)", rest).groups()
    return f"layers.{2 * int(n) + 2}.{tail}"


def _vq_to_deepseek(rest: str) -> str:
    rest = re.sub(r"^encoder\.down\.", "encoder.conv_blocks.", rest)
    rest = re.sub(r"^decoder\.up\.", "decoder.conv_blocks.", rest)
    rest = re.sub(r"(conv_blocks\.\d+)\.block\.", r"\1.res.", rest)
    for hf, ds in (("mid.block_1.", "mid.0."), ("mid.attn_1.", "mid.1."), ("mid.block_2.", "mid.2.")):
        rest = rest.replace(hf, ds)
    return rest


def _vision_to_deepseek(rest: str) -> str:
    rest = rest.replace("embeddings.patch_embedding.", "patch_embed.proj.")
    rest = rest.replace("post_layernorm.", "norm.")
    rest = rest.replace("encoder.layers.", "blocks.")
    rest = rest.replace(".layer_norm1.", ".norm1.").replace(".layer_norm2.", ".norm2.")
    return rest.replace(".self_attn.projection_layer.", ".attn.proj.")


def _to_deepseek(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of the conversion: transformers names -> DeepSeek names, q/k/v fused,
    pos_embed with its batch dimension, plus the buffers DeepSeek has and Janus drops."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        value = value.clone()
        if key == "lm_head.weight":
            out["language_model.lm_head.weight"] = value
        elif key.startswith("model.language_model."):
            out["language_model.model." + key.removeprefix("model.language_model.")] = value
        elif key.startswith("model.vqmodel."):
            out["gen_vision_model." + _vq_to_deepseek(key.removeprefix("model.vqmodel."))] = value
        elif key.startswith("model.generation_embeddings."):
            out["gen_embed." + key.removeprefix("model.generation_embeddings.")] = value
        elif key.startswith("model.generation_head."):
            out["gen_head." + key.removeprefix("model.generation_head.").replace("proj_out.", "output_mlp_projector.")] = value
        elif key.startswith("model.generation_aligner."):
            out["gen_aligner." + _aligner_to_deepseek(key.removeprefix("model.generation_aligner."))] = value
        elif key.startswith("model.aligner."):
            out["aligner." + _aligner_to_deepseek(key.removeprefix("model.aligner."))] = value
        elif key == "model.vision_model.embeddings.position_embedding.weight":
            out["vision_model.vision_tower.pos_embed"] = value.unsqueeze(0)
        elif match := re.fullmatch(r"model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            layer, part, kind = match.groups()
            qkv.setdefault(f"vision_model.vision_tower.blocks.{layer}.attn.qkv.{kind}", {})[part] = value
        elif key.startswith("model.vision_model."):
            out["vision_model.vision_tower." + _vision_to_deepseek(key.removeprefix("model.vision_model."))] = value
        else:
            raise AssertionError(f"test inverse mapping misses {key}")
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    out["gen_vision_model.quantize.codebook_used"] = torch.zeros(CODEBOOK_USED_SIZE)
    out.update(_attn_pool(sd["model.vision_model.post_layernorm.weight"].shape[0]))
    return out


def _attn_pool(dim: int) -> dict[str, torch.Tensor]:
    """The SigLIP MAP head DeepSeek's checkpoints carry and Janus never uses."""
    names = {"latent": (1, 1, dim), "q.weight": (dim, dim), "q.bias": (dim,), "kv.weight": (2 * dim, dim),
             "kv.bias": (2 * dim,), "proj.weight": (dim, dim), "proj.bias": (dim,), "norm.weight": (dim,),
             "norm.bias": (dim,), "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,),
             "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,)}
    return {f"vision_model.vision_tower.attn_pool.{k}": torch.randn(shape) for k, shape in names.items()}


def write_deepseek_checkpoint(directory: Path, sd: dict[str, torch.Tensor] | None = None, *,
                              shards: int = 1, config: dict | None = None) -> Path:
    """A DeepSeek-format checkpoint directory of the tiny model (or of `sd`)."""
    directory.mkdir(parents=True, exist_ok=True)
    sd = _to_deepseek(tiny_model().state_dict()) if sd is None else sd
    (directory / "config.json").write_text(json.dumps(config or deepseek_config(tiny_config())))
    (directory / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "VLMImageProcessor", "image_size": 32, "min_size": 14, "do_normalize": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255}))
    write_deepseek_tokenizer(directory)
    if shards == 1:
        torch.save(sd, directory / "pytorch_model.bin")
        return directory
    keys = list(sd)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: sd[k] for k in keys[i::shards]}
        torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def original() -> JanusForConditionalGeneration:
    return tiny_model()


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    src = write_deepseek_checkpoint(tmp_path_factory.mktemp("deepseek") / "Janus-Tiny")
    return convert_checkpoint(src, tmp_path_factory.mktemp("hf") / "Janus-Tiny-hf")


def _saved_tensors(directory: Path) -> dict[str, torch.Tensor]:
    sd = {}
    for path in sorted(directory.glob("*.safetensors")):
        sd.update(load_file(path))
    return sd


# --------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------


def _expected(original) -> dict[str, torch.Tensor]:
    """The original weights, with the codebook rows unit-normalised as the converter does."""
    sd = dict(original.state_dict())
    sd[CODEBOOK_KEY] = torch.nn.functional.normalize(sd[CODEBOOK_KEY], dim=-1)
    return sd


def test_round_trip_is_exact(original, converted):
    expected, saved = _expected(original), _saved_tensors(converted)
    assert saved.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(saved[key], tensor), key
    assert not torch.equal(saved[CODEBOOK_KEY], original.state_dict()[CODEBOOK_KEY])  # random rows were not unit
    assert not list(converted.glob("*.bin")), "the converted checkpoint is safetensors only"


def test_converted_vq_encodes_like_deepseek_and_decodes_unchanged(original, converted):
    """DeepSeek quantizes by cosine (both sides L2-normalised); the converted encode() must agree."""
    model = JanusForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    vq, ref = model.model.vqmodel, original.model.vqmodel
    with torch.no_grad():
        z = ref.quant_conv(ref.encoder(pixels)).permute(0, 2, 3, 1).reshape(-1, ref.config.embed_dim)
        cosine = (F.normalize(z, dim=-1) @ F.normalize(ref.quantize.embedding.weight, dim=-1).T).argmax(-1)
        tokens = vq.encode(pixels).image_tokens.view(-1)
        assert torch.equal(tokens, cosine)
        assert torch.allclose(vq.decode(tokens.view(2, -1)), ref.decode(tokens.view(2, -1)), atol=1e-5)


def test_round_trip_from_two_shards(original, tmp_path):
    src = write_deepseek_checkpoint(tmp_path / "sharded", shards=2)
    assert len(list(src.glob("pytorch_model-*.bin"))) == 2
    saved = _saved_tensors(convert_checkpoint(src, tmp_path / "out"))
    assert saved.keys() == original.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in _expected(original).items())


def test_converted_model_generates_the_same_image_tokens(original, converted):
    model = JanusForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    inputs = tokenizer([PROMPT], return_tensors="pt")
    original.generation_config = model.generation_config  # same special ids and guidance
    with torch.no_grad():
        logits = [m(**inputs).logits for m in (original, model)]
        tokens = [m.generate(**inputs, generation_mode="image", do_sample=False) for m in (original, model)]
    assert torch.equal(logits[0], logits[1])
    assert tokens[0].shape == (1, 64)
    assert torch.equal(tokens[0], tokens[1])


def test_converted_config_and_generation_config(original, converted):
    config = JanusConfig.from_pretrained(converted)
    assert config.tie_word_embeddings is False
    assert config.vision_config.num_image_tokens == 64
    assert list(config.vq_config.channel_multiplier) == [1, 2, 2]
    tok = raw_tokenizer()
    assert config.image_token_id == tok.token_to_id(IMAGE)
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["generation_kwargs"] == {"boi_token_id": tok.token_to_id(BOI)}
    assert generation["pad_token_id"] == tok.token_to_id(PAD)
    assert generation["guidance_scale"] == 5.0


def test_converted_tokenizer_keeps_deepseek_ids_and_image_tokens(converted):
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer(PROMPT).input_ids == raw_tokenizer().encode(PROMPT).ids
    assert (tokenizer.image_token, tokenizer.boi_token, tokenizer.eoi_token) == (IMAGE, BOI, EOI)
    assert tokenizer.pad_token == PAD
    processor = json.loads((converted / "processor_config.json").read_text())
    assert processor["num_image_tokens"] == 64


# --------------------------------------------------------------------------------------
# The mapping rules, one by one
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("deepseek", "hf"), [
    ("language_model.model.layers.3.self_attn.q_proj.weight", "model.language_model.layers.3.self_attn.q_proj.weight"),
    ("language_model.model.embed_tokens.weight", "model.language_model.embed_tokens.weight"),
    ("language_model.lm_head.weight", "lm_head.weight"),
    ("gen_vision_model.encoder.conv_blocks.1.res.0.conv1.weight", "model.vqmodel.encoder.down.1.block.0.conv1.weight"),
    ("gen_vision_model.encoder.conv_blocks.0.downsample.conv.bias", "model.vqmodel.encoder.down.0.downsample.conv.bias"),
    ("gen_vision_model.decoder.conv_blocks.0.attn.1.proj_out.weight", "model.vqmodel.decoder.up.0.attn.1.proj_out.weight"),
    ("gen_vision_model.decoder.conv_blocks.2.res.2.nin_shortcut.weight", "model.vqmodel.decoder.up.2.block.2.nin_shortcut.weight"),
    ("gen_vision_model.encoder.mid.0.norm1.weight", "model.vqmodel.encoder.mid.block_1.norm1.weight"),
    ("gen_vision_model.decoder.mid.1.q.weight", "model.vqmodel.decoder.mid.attn_1.q.weight"),
    ("gen_vision_model.decoder.mid.2.conv2.bias", "model.vqmodel.decoder.mid.block_2.conv2.bias"),
    ("gen_vision_model.quantize.embedding.weight", "model.vqmodel.quantize.embedding.weight"),
    ("gen_vision_model.quant_conv.weight", "model.vqmodel.quant_conv.weight"),
    ("gen_vision_model.quantize.codebook_used", None),
    ("gen_embed.weight", "model.generation_embeddings.weight"),
    ("gen_head.output_mlp_projector.weight", "model.generation_head.proj_out.weight"),
    ("gen_head.vision_head.bias", "model.generation_head.vision_head.bias"),
    ("gen_aligner.layers.0.weight", "model.generation_aligner.fc1.weight"),
    ("gen_aligner.layers.2.bias", "model.generation_aligner.hidden_layers.0.bias"),
    ("aligner.layers.0.bias", "model.aligner.fc1.bias"),
    ("aligner.layers.2.weight", "model.aligner.hidden_layers.0.weight"),
    ("vision_model.vision_tower.pos_embed", "model.vision_model.embeddings.position_embedding.weight"),
    ("vision_model.vision_tower.patch_embed.proj.weight", "model.vision_model.embeddings.patch_embedding.weight"),
    ("vision_model.vision_tower.norm.bias", "model.vision_model.post_layernorm.bias"),
    ("vision_model.vision_tower.blocks.5.norm1.weight", "model.vision_model.encoder.layers.5.layer_norm1.weight"),
    ("vision_model.vision_tower.blocks.5.norm2.bias", "model.vision_model.encoder.layers.5.layer_norm2.bias"),
    ("vision_model.vision_tower.blocks.5.attn.proj.weight", "model.vision_model.encoder.layers.5.self_attn.projection_layer.weight"),
    ("vision_model.vision_tower.blocks.5.mlp.fc2.bias", "model.vision_model.encoder.layers.5.mlp.fc2.bias"),
    ("vision_model.vision_tower.attn_pool.kv.weight", None),
    ("vision_model.vision_tower.attn_pool.latent", None),
])
def test_convert_key(deepseek, hf):
    assert convert_key(deepseek) == hf


def test_fused_projections_split_into_equal_parts():
    qkv = torch.arange(6 * 4, dtype=torch.float32).view(6, 4)
    kv = torch.arange(4 * 4, dtype=torch.float32).view(4, 4)
    out = convert_state_dict({
        "vision_model.vision_tower.blocks.0.attn.qkv.weight": qkv,
        "vision_model.vision_tower.blocks.0.attn.qkv.bias": torch.arange(6.0),
        "vision_model.vision_tower.blocks.1.attn.kv.weight": kv,
    })
    layer0, layer1 = "model.vision_model.encoder.layers.0.self_attn", "model.vision_model.encoder.layers.1.self_attn"
    assert torch.equal(out[f"{layer0}.q_proj.weight"], qkv[0:2])
    assert torch.equal(out[f"{layer0}.k_proj.weight"], qkv[2:4])
    assert torch.equal(out[f"{layer0}.v_proj.weight"], qkv[4:6])
    assert torch.equal(out[f"{layer0}.v_proj.bias"], torch.tensor([4.0, 5.0]))
    assert torch.equal(out[f"{layer1}.k_proj.weight"], kv[0:2])
    assert torch.equal(out[f"{layer1}.v_proj.weight"], kv[2:4])


def test_pos_embed_loses_its_batch_dimension():
    pos = torch.randn(1, 9, 4)
    out = convert_state_dict({"vision_model.vision_tower.pos_embed": pos})
    assert torch.equal(out["model.vision_model.embeddings.position_embedding.weight"], pos[0])
    with pytest.raises(ModelLoadError, match=r"pos_embed.*shape \(1, positions, dim\), got \(9, 4\)"):
        convert_state_dict({"vision_model.vision_tower.pos_embed": pos[0]})


def test_deeper_aligners_map_every_linear_layer():
    assert convert_key("aligner.layers.4.weight") == "model.aligner.hidden_layers.1.weight"
    with pytest.raises(ModelLoadError, match=r"aligner\.layers\.1\.weight"):
        convert_key("aligner.layers.1.weight")  # a GELU slot holds no parameters


def test_real_janus_pro_7b_config_converts():
    """The config.json layout deepseek-ai/Janus-Pro-7B ships, mapped onto JanusConfig."""
    config = convert_config({
        "model_type": "multi_modality", "torch_dtype": "bfloat16",
        "language_config": {"hidden_size": 4096, "intermediate_size": 11008, "max_position_embeddings": 16384,
                            "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 30,
                            "num_key_value_heads": 32, "torch_dtype": "bfloat16", "vocab_size": 102400},
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                          "params": {"image_size": 384, "model_name": "siglip_large_patch16_384",
                                     "select_feature": "same", "select_layer": -1}},
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                           "params": {"depth": 2, "input_dim": 1024, "n_embed": 4096, "projector_type": "mlp_gelu"}},
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision", "params": {"image_token_size": 16384, "n_embed": 8}},
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner",
                               "params": {"depth": 2, "input_dim": 8, "n_embed": 4096, "projector_type": "mlp_gelu"}},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head",
                            "params": {"image_token_embed": 4096, "image_token_size": 16384, "n_embed": 4096}},
    })
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (4096, 30)
    assert config.tie_word_embeddings is False and config.text_config.tie_word_embeddings is False
    v = config.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size) == (1024, 24, 16, 16)
    assert (v.num_image_tokens, v.projection_dim, v.depth) == (576, 4096, 2)
    q = config.vq_config
    assert (q.num_embeddings, q.embed_dim, q.base_channels, q.latent_channels) == (16384, 8, 128, 256)
    assert list(q.channel_multiplier) == [1, 1, 2, 2, 4]
    assert q.num_patches == 24  # 384 px / 16x downsampling
    assert (q.projection_dim, q.image_token_embed_dim, q.num_hidden_layers) == (4096, 4096, 2)
    with torch.device("meta"):
        model = JanusForConditionalGeneration(config)
    assert model.model.generation_head.vision_head.weight.shape == (16384, 4096)
    assert model.model.vision_model.embeddings.position_embedding.weight.shape == (576, 1024)


# --------------------------------------------------------------------------------------
# Errors: each names what is wrong
# --------------------------------------------------------------------------------------


def test_unknown_key_is_an_error_naming_it():
    sd = _to_deepseek(tiny_model().state_dict())
    sd["extra_head.weight"] = torch.zeros(2)
    sd["vision_model.vision_tower.blocks.0.ls1.gamma"] = torch.zeros(2)
    with pytest.raises(ModelLoadError, match=r"2 DeepSeek checkpoint key\(s\) have no conversion rule: "
                                             r"extra_head\.weight, vision_model\.vision_tower\.blocks\.0\.ls1\.gamma"):
        convert_state_dict(sd)


def test_extra_key_under_a_known_prefix_is_an_error(tmp_path):
    sd = _to_deepseek(tiny_model().state_dict())
    sd["language_model.model.layers.9.mlp.up_proj.weight"] = torch.zeros(128, 64)
    src = write_deepseek_checkpoint(tmp_path / "src", sd)
    with pytest.raises(ModelLoadError, match=r"not in the model: model\.language_model\.layers\.9\.mlp\.up_proj\.weight"):
        convert_checkpoint(src, tmp_path / "out")


def test_wrong_shape_is_an_error_naming_the_key(tmp_path):
    sd = _to_deepseek(tiny_model().state_dict())
    sd["gen_head.vision_head.weight"] = torch.zeros(65, 64)
    src = write_deepseek_checkpoint(tmp_path / "src", sd)
    with pytest.raises(ModelLoadError, match=r"shape mismatch: model\.generation_head\.vision_head\.weight is "
                                             r"\(65, 64\), config needs \(64, 64\)"):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_tensor_is_an_error_naming_it(tmp_path):
    sd = _to_deepseek(tiny_model().state_dict())
    del sd["gen_embed.weight"]
    src = write_deepseek_checkpoint(tmp_path / "src", sd)
    with pytest.raises(ModelLoadError, match=r"missing: model\.generation_embeddings\.weight"):
        convert_checkpoint(src, tmp_path / "out")


EXECUTED: list[str] = []


def _side_effect() -> dict:
    EXECUTED.append("unpickling ran code")
    return {}


class NotATensor:
    """Unpickling this would call _side_effect: weights_only loading must refuse it."""

    def __reduce__(self):
        return (_side_effect, ())


def test_pickle_with_objects_is_refused_without_running_them(tmp_path):
    sd = _to_deepseek(tiny_model().state_dict())
    src = write_deepseek_checkpoint(tmp_path / "src", sd)
    torch.save({**sd, "payload": NotATensor()}, src / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"refusing to load .*pytorch_model\.bin: it is not a "
                                             r"plain-tensor checkpoint \(Unsupported global: .*_side_effect"):
        convert_checkpoint(src, tmp_path / "out")
    assert EXECUTED == []


def test_non_tensor_entries_are_refused(tmp_path):
    src = write_deepseek_checkpoint(tmp_path / "src")
    torch.save({"state_dict": {"a": torch.zeros(1)}, "step": 3}, src / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"entries that are not named tensors: state_dict, step"):
        convert_checkpoint(src, tmp_path / "out")


def test_missing_files_are_named(tmp_path):
    src = write_deepseek_checkpoint(tmp_path / "src", shards=2)
    shard = sorted(src.glob("pytorch_model-*.bin"))[1]
    shard.rename(tmp_path / "elsewhere.bin")
    with pytest.raises(ModelLoadError, match=rf"lists shard\(s\) missing from .*: {shard.name}"):
        convert_checkpoint(src, tmp_path / "out")
    (src / "pytorch_model.bin.index.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no weights file in .*src \(looked for"):
        convert_checkpoint(src, tmp_path / "out")
    (src / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer file\(s\) missing from .*src: tokenizer\.json"):
        convert_checkpoint(src, tmp_path / "out")
    (src / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"missing config\.json in .*src"):
        convert_checkpoint(src, tmp_path / "out")
    with pytest.raises(ModelLoadError, match=r"no such directory: .*nowhere"):
        convert_checkpoint(tmp_path / "nowhere", tmp_path / "out")


def test_index_and_shards_must_agree(tmp_path):
    src = write_deepseek_checkpoint(tmp_path / "src", shards=2)
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["gen_head.phantom.weight"] = next(iter(index["weight_map"].values()))
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"lists key\(s\) no shard holds: gen_head\.phantom\.weight"):
        convert_checkpoint(src, tmp_path / "out")


def test_tokenizer_without_image_tokens_is_refused(tmp_path):
    src = write_deepseek_checkpoint(tmp_path / "src")
    data = json.loads((src / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != BOI]
    data["model"]["vocab"].pop(BOI)
    (src / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json has no token '<begin_of_image>'"):
        convert_checkpoint(src, tmp_path / "out")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["gen_vision_config"].update(cls="VQ-32") or c["gen_vision_config"]["params"].pop("ch"), r"unknown gen_vision_config\.cls 'VQ-32'"),
    (lambda c: c["vision_config"]["params"].pop("width"), r"unknown vision tower model_name 'siglip_tiny'"),
    (lambda c: c.pop("gen_head_config"), r"config\.json: missing 'gen_head_config'"),
    (lambda c: c["gen_head_config"]["params"].update(image_token_embed=32),
     r"gen_head_config\.params\.image_token_embed is 32, but transformers' Janus needs it to equal 64"),
    (lambda c: c["aligner_config"]["params"].update(projector_type="linear"), r"projector_type 'linear' is not supported"),
    (lambda c: c["vision_config"]["params"].update(image_size=30), r"image_size 30 is not a multiple of patch_size 4"),
])
def test_inexpressible_configs_are_errors(edit, message):
    config = deepseek_config(tiny_config())
    edit(config)
    with pytest.raises(ModelLoadError, match=message):
        convert_config(config)


def test_failed_conversion_leaves_an_existing_output_alone(tmp_path, converted, monkeypatch):
    import focusdiff.model.convert as convert

    out = tmp_path / "out"
    shutil.copytree(converted, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args, **kwargs):  # after the weights were written into the temporary directory
        raise OSError("disk full")

    monkeypatch.setattr(convert, "_save_tokenizer_and_processor", fail)
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(write_deepseek_checkpoint(tmp_path / "src"), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
