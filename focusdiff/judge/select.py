"""Build the judge a config names (a `JudgeSpec`): the one place trainers and evaluators get
judges from, so the reward judge and the held-out evaluator are configured the same way."""

from __future__ import annotations

from focusdiff.judge.base import Judge
from focusdiff.judge.server import make_backend
from focusdiff.judge.spec import JudgeSpec


def build_judge(spec: JudgeSpec) -> Judge:
    if spec.backend == "openai":
        from focusdiff.judge.openai_judge import OpenAIJudge

        return OpenAIJudge(spec.base_url, spec.model, api_key_env=spec.api_key_env,
                           max_concurrency=spec.max_concurrency, max_retries=spec.max_retries)
    judge = make_backend(spec.backend, spec.model)
    judge.max_concurrency = spec.max_concurrency
    return judge
