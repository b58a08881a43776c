"""The typed records that cross layers: a registration, the PairComp evaluation protocol, and
the one sampling config and LR schedules train and eval share (no MLflow, no torch needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from focusdiff.eval.configs import EvalConfig
from focusdiff.model.sampling import SamplingConfig
from focusdiff.registry.gate import Evidence, GateConfig, decide
from focusdiff.eval.protocol import EvaluationProtocol
from focusdiff.registry.registration import RecordError, Registration
from focusdiff.schedule import warmup_cosine
from focusdiff.train.configs import GRPOConfig, LRConfig
from focusdiff.train.objective import learning_rate

# What focusdiff wrote on every version evaluated with the embedded default's settings.
DEFAULT_TAG = "exact:|suite=shapes:test|sampling=cfg_weight=5.0,temperature=1.0,top_k=0,top_p=1.0|seed=0"


# --------------------------------------------------------------------------- Registration
def test_registration_round_trips_through_its_file(tmp_path):
    path = tmp_path / "metrics" / "registration.json"
    registration = Registration(model_name="focusdiff-shapes", version="3", run_id="abc", policy="models/grpo")
    path.parent.mkdir()
    registration.save(path)
    # the file keeps the shape the train stage always wrote, model_uri included
    assert json.loads(path.read_text("utf-8")) == {"model_name": "focusdiff-shapes", "version": "3", "run_id": "abc",
                                                   "model_uri": "models:/focusdiff-shapes/3", "policy": "models/grpo"}
    assert Registration.load(path) == registration
    assert not list(path.parent.glob("*.tmp*"))  # written atomically: no temporary left behind
    Registration.save_unregistered(path)
    assert json.loads(path.read_text("utf-8")) == {"registered": False}
    assert Registration.load(path) is None


def test_registration_for_a_policy(tmp_path):
    path = tmp_path / "registration.json"
    assert Registration.for_policy(path, "models/grpo") is None  # not trained here
    Registration(model_name="m", version="1", run_id="r", policy=str(tmp_path / "grpo")).save(path)
    assert Registration.for_policy(path, str(tmp_path / "grpo")).version == "1"
    assert Registration.for_policy(path, str(tmp_path / "other")) is None
    Registration.save_unregistered(path)
    assert Registration.for_policy(path, str(tmp_path / "grpo")) is None


@pytest.mark.parametrize(("content", "field", "message"), [
    ({"model_name": "m", "version": 2, "run_id": "r"}, "version", "valid string"),
    ({"model_name": "m", "version": "v2", "run_id": "r"}, "version", "pattern"),
    ({"model_name": "m", "version": "2"}, "run_id", "Field required"),
    ({"model_name": "m", "version": "2", "run_id": "r", "extra": 1}, "extra", "Extra inputs"),
    ({"model_name": "m", "version": "2", "run_id": "r", "model_uri": "models:/m/3"}, "model_uri", "does not name version 2"),
])
def test_a_malformed_registration_file_names_the_field(tmp_path, content, field, message):
    path = tmp_path / "registration.json"
    path.write_text(json.dumps(content), "utf-8")
    with pytest.raises(RecordError, match=message) as caught:
        Registration.load(path)
    assert str(caught.value).startswith(f"{path}, field '{field}': ")


def test_a_missing_or_broken_registration_file_is_named(tmp_path):
    with pytest.raises(RecordError, match=r"registration.json: no such file"):
        Registration.load(tmp_path / "registration.json")
    (tmp_path / "registration.json").write_text("{", "utf-8")
    with pytest.raises(RecordError, match=r"registration.json: not JSON"):
        Registration.load(tmp_path / "registration.json")
    (tmp_path / "registration.json").write_text("[]", "utf-8")
    with pytest.raises(RecordError, match=r"registration.json: expected a JSON object, got list"):
        Registration.load(tmp_path / "registration.json")


# --------------------------------------------------------------------------- EvaluationProtocol
def test_the_protocol_tag_is_the_one_the_registry_holds():
    """The eval stage's protocol for the default evaluate config is exactly the tag string that
    earlier focusdiff versions wrote (the gate compares tags, and registries hold old ones)."""
    from focusdiff.eval.paircomp import BENCHMARK as PAIRCOMP

    protocol = PAIRCOMP.protocol(EvalConfig())
    assert protocol.as_tag() == DEFAULT_TAG
    assert EvaluationProtocol.from_tag(DEFAULT_TAG) == protocol
    judged = EvalConfig.model_validate({"seed": 7, "sampling": {"cfg_weight": 2, "top_k": 50},
                                        "paircomp": {"suite": "official", "split": "val",
                                                     "evaluator": {"backend": "openai", "model": "org/vlm:7b",
                                                                   "base_url": "http://127.0.0.1:9/v1"}}})
    tag = PAIRCOMP.protocol(judged).as_tag()
    # a judge read off answer tokens records which ones counted: the official entries by default
    assert tag == ("openai:org/vlm:7b|suite=official:val|sampling=cfg_weight=2.0,temperature=1.0,top_k=50,top_p=1.0"
                   "|seed=7|answers=official")
    assert EvaluationProtocol.from_tag(tag).as_tag() == tag
    variants = judged.model_copy(update={"paircomp": judged.paircomp.model_copy(update={
        "evaluator": judged.paircomp.evaluator.model_copy(update={"answer_tokens": "variants"})})})
    other = EvaluationProtocol.from_tag(PAIRCOMP.protocol(variants).as_tag())
    assert other.answers == "variants" and EvaluationProtocol.from_tag(tag).differences(other) == [
        "answers: 'official' vs 'variants'"]
    # a tag written before the choice existed (variants were summed) compares with neither
    old = EvaluationProtocol.from_tag(tag.removesuffix("|answers=official"))
    assert old.answers == "" and old.as_tag() != tag


def test_the_paircomp_evaluator_counts_the_official_answer_tokens_unless_told():
    from focusdiff.eval.paircomp import BENCHMARK as PAIRCOMP

    served = {"backend": "openai", "model": "vlm", "base_url": "http://127.0.0.1:9/v1"}
    assert EvalConfig.model_validate({"paircomp": {"evaluator": served}}).paircomp.evaluator.answer_tokens == "official"
    told = EvalConfig.model_validate({"paircomp": {"evaluator": {**served, "answer_tokens": "variants"}}})
    assert told.paircomp.evaluator.answer_tokens == "variants"
    assert PAIRCOMP.protocol(told).answers == "variants"
    from focusdiff.judge.spec import JudgeSpec
    assert JudgeSpec().answer_tokens == "variants"  # a reward judge sums every spelling


@pytest.mark.parametrize(("tag", "field", "message"), [
    ("exact|shapes", None, "2 '|'-separated parts, not 4 or 5"),
    (DEFAULT_TAG + "|answers=all", "answers", "Input should be '', 'official' or 'variants'"),
    (DEFAULT_TAG + "|tokens=official", "answers", "is not answers=..."),
    (DEFAULT_TAG.replace("exact:", "exact"), "evaluator", "is not backend:model"),
    (DEFAULT_TAG.replace("suite=shapes:test", "suite=shapes"), "suite", "is not suite=<suite>:<split>"),
    (DEFAULT_TAG.replace("seed=0", "seed=x"), "seed", "valid integer"),
    (DEFAULT_TAG.replace("seed=0", "rng=0"), "seed", "is not seed=..."),
    (DEFAULT_TAG.replace("cfg_weight=5.0", "cfg_weight=0.5"), "sampling.cfg_weight", "greater than or equal to 1"),
    (DEFAULT_TAG.replace(",top_p=1.0", ""), "sampling", "are not cfg_weight, temperature, top_k, top_p"),
    (DEFAULT_TAG.replace("cfg_weight=5.0", "cfg_weight=5"), None, "not written as this protocol writes it"),
])
def test_a_malformed_protocol_tag_names_the_field(tag, field, message):
    with pytest.raises(RecordError, match=message) as caught:
        EvaluationProtocol.from_tag(tag)
    where = "eval.paircomp.evaluator" + (f", field '{field}'" if field else "")
    assert str(caught.value).startswith(f"{where}: ")


def test_the_gate_names_the_protocol_fields_that_differ():
    pairs = {f"p{i}": ("color", 0.5) for i in range(10)}
    cfg2 = DEFAULT_TAG.replace("cfg_weight=5.0", "cfg_weight=2.0")
    d = decide(Evidence("2", {"paircomp.s_g": 60.0}, dict.fromkeys(GateConfig().required, "complete"), pairs, cfg2),
               Evidence("1", {"paircomp.s_g": 50.0}, {}, pairs, DEFAULT_TAG), GateConfig())
    assert not d.promote and "scores are not comparable" in d.reasons[0]
    assert d.reasons[1] == "the PairComp protocols differ in sampling.cfg_weight: 2.0 vs 5.0 (challenger vs champion)"
    assert d.reasons[2].startswith("to compare them, re-score the champion under the challenger's protocol: "
                                   "`focusdiff evaluate --version champion -b paircomp`")
    # a tag recorded before the protocol was a record is compared as the string it is, without detail
    d = decide(Evidence("2", {"paircomp.s_g": 60.0}, dict.fromkeys(GateConfig().required, "complete"), pairs, "exact|shapes"),
               Evidence("1", {"paircomp.s_g": 50.0}, {}, pairs, DEFAULT_TAG), GateConfig())
    assert not d.promote and len(d.reasons) == 2 and "scores are not comparable" in d.reasons[0]
    assert "re-score the champion" in d.reasons[1]


# --------------------------------------------------------------------------- one value per concept
def test_train_and_eval_share_one_sampling_config():
    assert GRPOConfig.model_fields["sampling"].annotation is SamplingConfig
    assert EvalConfig.model_fields["sampling"].annotation is SamplingConfig
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SamplingConfig(temperature=-1.0)


def test_the_cosine_schedule_is_the_bootstrap_trainers_one():
    lr = LRConfig(schedule="cosine", peak=3e-5, warmup=7, min_ratio=0.2)
    for step in range(0, 120, 3):
        assert learning_rate(step, 100, lr) == warmup_cosine(step, 3e-5, 7, 100, 0.2)  # bit-identical


def test_tracking_does_not_load_the_whole_project_config():
    code = "import sys, focusdiff.tracking; print('focusdiff.config' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_fields_added_later_leave_a_dump_only_at_their_neutral_value():
    from focusdiff.keys import without_neutral_additions

    neutral = {"ema_decay": None, "t2i.images_per_prompt": 10, "absent.field": 1}
    dump = {"ema_decay": None, "lr": 1e-5, "t2i": {"images_per_prompt": 10, "seed": 3}}
    assert without_neutral_additions(dump, neutral) == {"lr": 1e-5, "t2i": {"seed": 3}}
    assert dump == {"ema_decay": None, "lr": 1e-5, "t2i": {"images_per_prompt": 10, "seed": 3}}  # not changed
    other = {"ema_decay": 0.99, "t2i": {"images_per_prompt": 2}}  # another value is another configuration
    assert without_neutral_additions(other, neutral) == other
