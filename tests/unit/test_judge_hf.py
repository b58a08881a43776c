"""The in-process transformers judge, on a tiny random-initialized VLM saved to disk.

The model is a LLaVA (CLIP vision tower + Qwen2 text model) of some 50k
parameters, with a byte-level BPE tokenizer trained here so that yes/no
appear in several spellings ("yes", "ĠYes", "ĠYES", ...) next to decoys
("yesterday", "nothing"). LLaVA rather than Qwen2-VL: in transformers 5 the
Qwen2-VL/Qwen2.5-VL/InternVL processors carry a video processor, which needs
torchvision, which this project does not install.
Its random weights make the verdicts meaningless, which is fine: the tests
check the arithmetic against a reference computed here from the model's logits.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from focusdiff.errors import ConfigError
from focusdiff.judge.base import JudgeFailure, question
from focusdiff.judge.hf_judge import HFJudge
from focusdiff.judge.openai_judge import parse_verdict, request_body
from focusdiff.judge.server import create_app, make_backend
from tests.tiny_models import (PLAIN_CORPUS, YES_NO_CORPUS, llava_tokenizer as _tokenizer,
                               save_llava_processor as _save_processor, save_tiny_llava)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def judge(tiny_vlm) -> HFJudge:
    return HFJudge(tiny_vlm, batch_size=4, dtype=torch.float32, device="cpu")


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


PROMPTS = ["a red circle", "two blue squares on a black background", "a small green triangle to the left of a circle",
           "the letter A", "three circles"]


# --------------------------------------------------------------------------- #
# The verdict equals a reference computed here from the model's logits
# --------------------------------------------------------------------------- #


def _reference(tiny_vlm: Path, image: np.ndarray, prompt: str) -> tuple[float, float]:
    """Softmax over the full vocabulary at the last prompt position, summed over yes/no
    spellings read off the raw vocabulary (not via the judge's decoding)."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm, dtype=torch.float32).eval()
    conversation = [{"role": "user", "content": [
        {"type": "image", "image": Image.fromarray(image)}, {"type": "text", "text": question(prompt)}]}]
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits[0, -1].double(), dim=-1)
    vocab = processor.tokenizer.get_vocab()
    ids = {w: [i for t, i in vocab.items() if t.removeprefix("Ġ").lower() == w] for w in ("yes", "no")}
    return float(probs[ids["yes"]].sum()), float(probs[ids["no"]].sum())


def test_answer_tokens_are_every_spelling_and_nothing_else(judge):
    tokens = judge.tokenizer.convert_ids_to_tokens
    assert set(tokens(judge.yes_ids)) == {"yes", "Yes", "YES", "Ġyes", "ĠYes", "ĠYES"}
    assert set(tokens(judge.no_ids)) == {"no", "No", "NO", "Ġno", "ĠNo", "ĠNO"}


def test_official_answer_tokens_are_the_vocabulary_entries_only(judge):
    """PairComp's official script sums the entries yes/Yes/YES and no/No/NO, not 'Ġyes'."""
    from focusdiff.judge.hf_judge import answer_token_ids

    yes_ids, no_ids = answer_token_ids(judge.tokenizer, None, "official")
    tokens = judge.tokenizer.convert_ids_to_tokens
    assert set(tokens(yes_ids)) == {"yes", "Yes", "YES"} and set(tokens(no_ids)) == {"no", "No", "NO"}


def test_official_answer_tokens_sum_less_mass_than_variants(tiny_vlm):
    official = HFJudge(tiny_vlm, dtype=torch.float32, device="cpu", answer_tokens="official")
    variants = HFJudge(tiny_vlm, dtype=torch.float32, device="cpu")
    image = _images(1)[0]
    [a], [b] = official.judge([image], [PROMPTS[1]]), variants.judge([image], [PROMPTS[1]])
    assert 0.0 < a.p_yes < b.p_yes and 0.0 < a.p_no < b.p_no


def test_verdict_matches_hand_computed_softmax_mass(judge, tiny_vlm):
    image = _images(1)[0]
    [verdict] = judge.judge([image], [PROMPTS[1]])
    p_yes, p_no = _reference(tiny_vlm, image, PROMPTS[1])
    assert 0.0 <= verdict.p_yes <= 1.0 and 0.0 <= verdict.p_no <= 1.0
    assert verdict.p_yes == pytest.approx(p_yes, rel=1e-4, abs=1e-7)
    assert verdict.p_no == pytest.approx(p_no, rel=1e-4, abs=1e-7)
    assert verdict.p_yes + verdict.p_no == pytest.approx(p_yes + p_no, rel=1e-4, abs=1e-7)
    assert 0.0 < verdict.score < 1.0


def test_batched_equals_unbatched_and_is_deterministic(judge, tiny_vlm):
    images, prompts = _images(5), PROMPTS  # prompts of different lengths: left padding is exercised
    one_by_one = HFJudge(tiny_vlm, batch_size=1, dtype=torch.float32, device="cpu").judge(images, prompts)
    batched = judge.judge(images, prompts)  # batches of 4 and 1
    for a, b in zip(one_by_one, batched):
        assert a.p_yes == pytest.approx(b.p_yes, abs=1e-5) and a.p_no == pytest.approx(b.p_no, abs=1e-5)
    assert judge.judge(images, prompts) == batched  # bit-identical on a second call
    # The image reaches the model: the same prompt on two images gives two verdicts.
    assert len({v.score for v in judge.judge(_images(2, seed=1), [PROMPTS[0]] * 2)}) == 2


def test_a_bad_image_fails_only_its_item(judge):
    images = [*_images(2), np.zeros((32, 32, 3), dtype=np.float32)]
    with pytest.raises(JudgeFailure) as info:
        judge.judge(images, PROMPTS[:3])
    (failure,) = info.value.failures
    assert failure.index == 2 and "uint8" in failure.reason
    assert info.value.verdicts[2] is None and all(v is not None for v in info.value.verdicts[:2])


def test_forward_passes_do_not_block_the_event_loop(judge, monkeypatch):
    real = judge.answer_probabilities

    def slow(images, prompts):
        time.sleep(0.3)  # a blocking forward pass
        return real(images, prompts)

    monkeypatch.setattr(judge, "answer_probabilities", slow)

    async def main() -> int:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await judge.ajudge(_images(1), PROMPTS[:1])
        task.cancel()
        return ticks

    assert asyncio.run(main()) >= 5  # ~30 when the loop runs free; 0 or 1 when a forward pass blocks it


# --------------------------------------------------------------------------- #
# Serving it: `focusdiff judge serve --backend hf --model PATH`
# --------------------------------------------------------------------------- #


def test_served_hf_judge_equals_in_process(judge, tiny_vlm):
    served = make_backend("hf", str(tiny_vlm))
    assert isinstance(served, HFJudge)
    image = _images(1)[0]
    with TestClient(create_app(served, "tiny")) as client:
        resp = client.post("/v1/chat/completions", json=request_body("tiny", image, PROMPTS[0]))
    assert resp.status_code == 200, resp.text
    got = parse_verdict(resp.json())
    [expected] = judge.judge([image], [PROMPTS[0]])
    assert got.p_yes == pytest.approx(expected.p_yes, rel=1e-6) and got.p_no == pytest.approx(expected.p_no, rel=1e-6)


def test_hf_backend_needs_a_model():
    with pytest.raises(ConfigError, match="needs --model PATH"):
        make_backend("hf")


# --------------------------------------------------------------------------- #
# Loading errors say what is wrong
# --------------------------------------------------------------------------- #


def test_no_such_path(tmp_path):
    with pytest.raises(ConfigError, match="no such model directory"):
        HFJudge(tmp_path / "missing")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        HFJudge(tmp_path)


def _copy_weights(tiny_vlm: Path, out: Path) -> None:
    out.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny_vlm / name, out / name)


def test_tokenizer_without_yes_or_no(tiny_vlm, tmp_path):
    out = tmp_path / "no-yes-no"
    _copy_weights(tiny_vlm, out)
    _save_processor(_tokenizer(PLAIN_CORPUS), out)
    with pytest.raises(ConfigError, match=r"the tokenizer has no token for 'yes' nor 'no'"):
        HFJudge(out, dtype=torch.float32, device="cpu")


def test_processor_without_chat_template(tiny_vlm, tmp_path):
    out = tmp_path / "no-template"
    _copy_weights(tiny_vlm, out)
    _save_processor(_tokenizer(YES_NO_CORPUS), out, chat_template=None)
    with pytest.raises(ConfigError, match="no chat template"):
        HFJudge(out, dtype=torch.float32, device="cpu")


def test_checkpoint_without_image_processor(tiny_vlm, tmp_path):
    out = tmp_path / "tokenizer-only"
    _copy_weights(tiny_vlm, out)
    _tokenizer(YES_NO_CORPUS).save_pretrained(out)
    with pytest.raises(ConfigError, match="cannot load the processor: OSError: Can't load image processor"):
        HFJudge(out, dtype=torch.float32, device="cpu")


def test_text_only_checkpoint(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(vocab_size=400, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    _tokenizer(YES_NO_CORPUS).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not a vision-language processor"):
        HFJudge(tmp_path, dtype=torch.float32, device="cpu")
