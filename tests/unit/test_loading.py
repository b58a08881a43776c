"""load_policy: every accepted source loads the same weights, every bad one is a clear error.

The tiny random model and its DeepSeek-format checkpoint come from the builders in
tests/unit/test_convert.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

import focusdiff.model.loading as loading
from focusdiff.model.convert import convert_checkpoint
from focusdiff.model.loading import SHAPES_BASE, ModelLoadError, conversion_cache_dir, load_policy
from tests.unit.test_convert import BOI, IMAGE, PROMPT, raw_tokenizer, tiny_model, write_deepseek_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def original():
    """The tiny model with unit-norm codebook rows (as any cosine-trained VQ has), so that
    conversion, which normalises the rows, leaves every tensor exactly as it was."""
    model = tiny_model()
    with torch.no_grad():
        codebook = model.model.vqmodel.quantize.embedding.weight
        codebook.copy_(torch.nn.functional.normalize(codebook, dim=-1))
    return model


@pytest.fixture(scope="module")
def deepseek_dir(tmp_path_factory) -> Path:
    return write_deepseek_checkpoint(tmp_path_factory.mktemp("ds") / "Janus-Tiny")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, deepseek_dir) -> Path:
    return convert_checkpoint(deepseek_dir, tmp_path_factory.mktemp("hf") / "Janus-Tiny-hf")


@pytest.fixture
def hf_copy(hf_dir, tmp_path) -> Path:
    """A private copy of the transformers-format checkpoint, for tests that damage it."""
    return Path(shutil.copytree(hf_dir, tmp_path / "hf"))


def _same_weights(model, original) -> bool:
    expected = original.state_dict()
    return model.state_dict().keys() == expected.keys() and all(
        torch.equal(model.state_dict()[k].float(), v.float()) for k, v in expected.items()
    )


# --------------------------------------------------------------------------------------
# Sources that load
# --------------------------------------------------------------------------------------


def test_transformers_directory(hf_dir, original):
    policy = load_policy(hf_dir)
    assert _same_weights(policy.model, original)
    assert policy.source == str(hf_dir)
    assert (policy.num_image_tokens, policy.image_size) == (64, 32)
    assert policy.boi_token_id == raw_tokenizer().token_to_id(BOI)
    assert policy.tokenizer.image_token == IMAGE
    assert policy.tokenizer(PROMPT).input_ids == raw_tokenizer().encode(PROMPT).ids
    assert not policy.model.training


def test_concurrent_loads_from_threads_all_succeed(tmp_path):
    """Evaluation tasks load policies from parallel threads: transformers' from_pretrained
    patches process-global state, which broke tied weights (lm_head "missing") before loads
    were serialised."""
    import threading

    from transformers import JanusForConditionalGeneration

    from focusdiff.model.configs import VQTrainConfig
    from focusdiff.model.shapes_model import build_config, build_tokenizer
    from focusdiff.model.vq import vq_config

    tok = build_tokenizer()
    JanusForConditionalGeneration(build_config(tok, vq_config(VQTrainConfig()), hidden=64, layers=1)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    errors = []

    def load():
        try:
            load_policy(tmp_path)
        except Exception as exc:  # collected: the assertion below shows them
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_dtype_and_device(hf_dir, original):
    policy = load_policy(hf_dir, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in policy.model.parameters()} == {torch.bfloat16}
    assert policy.device == torch.device("cpu")
    expected = original.model.generation_embeddings.weight.to(torch.bfloat16)
    assert torch.equal(policy.model.model.generation_embeddings.weight, expected)


def test_deepseek_directory_is_converted_once_into_the_cache(deepseek_dir, original, tmp_path, monkeypatch):
    calls = []
    real_convert = loading.convert_checkpoint
    monkeypatch.setattr(loading, "convert_checkpoint", lambda src, dst: calls.append(dst) or real_convert(src, dst))
    cache = tmp_path / "cache"

    policy = load_policy(deepseek_dir, cache_dir=cache)
    assert _same_weights(policy.model, original)
    assert policy.source == str(deepseek_dir)
    (entry,) = cache.iterdir()
    assert entry.name.startswith("Janus-Tiny-") and calls == [entry]
    assert json.loads((entry / "focusdiff_conversion.json").read_text())["source"] == str(deepseek_dir.resolve())

    load_policy(deepseek_dir, cache_dir=cache)
    assert len(calls) == 1, "a second load reuses the converted checkpoint"

    # a rewritten weight file is a different checkpoint: converted afresh
    weights = deepseek_dir / "pytorch_model.bin"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    load_policy(deepseek_dir, cache_dir=cache)
    assert len(calls) == 2 and len(list(cache.iterdir())) == 2


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("FOCUSDIFF_CACHE_DIR", str(tmp_path / "fd"))
    assert conversion_cache_dir() == tmp_path / "fd" / "converted"
    monkeypatch.delenv("FOCUSDIFF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert conversion_cache_dir() == tmp_path / "xdg" / "focusdiff" / "converted"
    assert conversion_cache_dir(tmp_path / "mine") == tmp_path / "mine"


def test_shapes_base(monkeypatch, tmp_path, hf_dir, original):
    missing = tmp_path / "weights" / "shapes-base"
    monkeypatch.setattr(loading, "SHAPES_BASE_DIR", missing)
    with pytest.raises(ModelLoadError, match=rf"{missing} does not exist; run `focusdiff bootstrap lm`"):
        load_policy(SHAPES_BASE)
    monkeypatch.setattr(loading, "SHAPES_BASE_DIR", hf_dir)
    policy = load_policy(SHAPES_BASE)
    assert policy.source == SHAPES_BASE
    assert _same_weights(policy.model, original)


def test_shapes_base_lives_inside_the_package():
    assert loading.SHAPES_BASE_DIR == Path(loading.__file__).parent / "weights" / "shapes-base"


def test_bin_checkpoint_in_transformers_format_loads(hf_copy, original):
    sd = load_file(hf_copy / "model.safetensors")
    (hf_copy / "model.safetensors").unlink()
    torch.save(sd, hf_copy / "pytorch_model.bin")
    assert _same_weights(load_policy(hf_copy).model, original)


# --------------------------------------------------------------------------------------
# Sources that are errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["./nope", "../nope/deeper", "/abs/nope", "~/nope-focusdiff", Path("nope")])
def test_missing_local_path_is_no_such_directory(source):
    with pytest.raises(ModelLoadError, match=r"no such directory: .*nope"):
        load_policy(source)


def test_a_file_is_not_a_checkpoint_directory(hf_dir):
    with pytest.raises(ModelLoadError, match=r"not a directory: .*model\.safetensors"):
        load_policy(hf_dir / "model.safetensors")


def test_hub_id_that_cannot_be_fetched(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"'nobody/no-such-model' is not a local directory, and fetching it "
                                             r"from the Hugging Face hub failed"):
        load_policy("nobody/no-such-model")


def test_missing_config(hf_copy):
    (hf_copy / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=rf"missing config\.json in {hf_copy}"):
        load_policy(hf_copy)


def test_foreign_model_type(hf_copy):
    (hf_copy / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match=r"model_type 'llama': expected 'janus'"):
        load_policy(hf_copy)


def test_missing_weights(hf_copy):
    (hf_copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=rf"no weights file in {hf_copy}"):
        load_policy(hf_copy)


@pytest.mark.parametrize(("name", "message"), [
    ("tokenizer.json", r"no tokenizer in {} \(looked for tokenizer\.json, tokenizer\.model\)"),
    ("tokenizer_config.json", r"missing tokenizer_config\.json in {}"),
])
def test_missing_tokenizer_files(hf_copy, name, message):
    (hf_copy / name).unlink()
    with pytest.raises(ModelLoadError, match=message.format(hf_copy)):
        load_policy(hf_copy)


def test_tokenizer_without_image_tokens(hf_copy):
    config = json.loads((hf_copy / "tokenizer_config.json").read_text())
    for key in ("boi_token", "model_specific_special_tokens", "extra_special_tokens"):
        config.pop(key, None)
    (hf_copy / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"does not define boi_token"):
        load_policy(hf_copy)


def test_tensor_shape_that_does_not_match_the_config(hf_copy):
    config = json.loads((hf_copy / "config.json").read_text())
    config["vq_config"]["num_embeddings"] = 32
    (hf_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"shape mismatch: .*model\.generation_embeddings\.weight is \(64, 8\) "
                                             r"in the checkpoint, config needs \(32, 8\)"):
        load_policy(hf_copy)


def test_missing_and_unexpected_tensors(hf_copy):
    sd = load_file(hf_copy / "model.safetensors")
    del sd["model.generation_head.vision_head.bias"]
    sd["model.generation_head.extra.weight"] = torch.zeros(2)
    save_file(sd, hf_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"missing from the checkpoint: model\.generation_head\.vision_head\.bias"
                                             r" \| not in the model: model\.generation_head\.extra\.weight"):
        load_policy(hf_copy)


def test_corrupted_safetensors(hf_copy):
    weights = hf_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=rf"cannot load the model in {hf_copy}"):
        load_policy(hf_copy)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_objects_is_refused(hf_copy, capsys):
    sd = load_file(hf_copy / "model.safetensors")
    (hf_copy / "model.safetensors").unlink()
    torch.save({**sd, "payload": Payload()}, hf_copy / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=rf"refusing to load {hf_copy / 'pytorch_model.bin'}: it is not a "
                                              r"plain-tensor checkpoint \(Unsupported global: GLOBAL .*print"):
        load_policy(hf_copy)
    assert "this must never run" not in capsys.readouterr().out


def test_deepseek_errors_surface_through_load_policy(tmp_path):
    src = write_deepseek_checkpoint(tmp_path / "src")
    (src / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match=rf"no weights file in {src}"):
        load_policy(src, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
