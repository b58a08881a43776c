"""Build the judge a config names (a `JudgeSpec`): the one place trainers and evaluators get
judges from, so the reward judge and the held-out evaluator are configured the same way."""

from __future__ import annotations

from focusdiff.errors import ConfigError
from focusdiff.judge.base import Judge
from focusdiff.judge.server import make_backend
from focusdiff.judge.spec import JudgeSpec


def build_judge(spec: JudgeSpec, template: str | None = None) -> Judge:
    """The judge `spec` names. `template` replaces the question a VLM backend asks (DPG-Bench
    asks its own questions: "{prompt}"); judges that check captions (exact, shapes) refuse it."""
    if spec.backend == "openai":
        from focusdiff.judge.openai_judge import OpenAIJudge

        judge = OpenAIJudge(spec.base_url, spec.model, api_key_env=spec.api_key_env,
                            max_concurrency=spec.max_concurrency, max_retries=spec.max_retries,
                            answer_tokens=spec.answer_tokens)
    else:
        judge = make_backend(spec.backend, spec.model, spec.answer_tokens)
        judge.max_concurrency = spec.max_concurrency
    if template is not None:
        if spec.backend not in ("openai", "hf"):
            raise ConfigError(f"the {spec.backend} judge checks captions and cannot answer free questions; "
                              "use an hf or openai (VLM) judge here")
        judge.template = template
    return judge
