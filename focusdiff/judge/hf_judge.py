"""An in-process transformers vision-language model as the judge.

Why: between the exact checker (ShapesWorld only) and a served large VLM (needs
a GPU server) sits a mid-size open VLM run in the training process itself -
Qwen2.5-VL, Qwen2-VL, InternVL3-hf, LLaVA, ... - anything that
`AutoModelForImageTextToText` loads and whose processor has a chat template.

How a verdict is read: the image and `self.ask(prompt)` (the reward question by default) go into one user turn of
the model's own chat template (with the generation prompt, so the next token is
the first answer token); one forward pass gives that token's logits; a softmax
over the *full* vocabulary gives probabilities, and P(yes) is the summed
probability of every vocabulary token whose text normalizes to "yes" (" yes",
"Yes", "ĠYES", "▁yes", ...), P(no) likewise. Matching uses the same
`normalize_token` as the OpenAI-compatible client, so the in-process judge and
the same model served by vLLM count the same tokens. With `answer_tokens="official"`
only the tokens whose text is exactly yes/Yes/YES and no/No/NO count (PairComp's
official vocabulary entries). The token-id sets are computed once, from each id's
decoded text.

Batching: `ajudge` runs the items in batches of `batch_size` (left padding, so
the last position of every row is its first answer token) in a worker thread,
so the event loop is never blocked by a forward pass. A lock serializes forward
passes of one judge, so concurrent callers (server requests, two threads)
queue rather than doubling GPU memory.

Failures follow the base policy: an item that cannot be judged is an
`ItemFailure` inside a `JudgeFailure`, never a score.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from focusdiff.errors import ConfigError
from focusdiff.judge.base import BatchedJudge, ImageLike, ItemFailure, Verdict, item_failure, to_rgb
from focusdiff.judge.openai_judge import _NO, _YES, AnswerTokens, answer_word


class HFJudge(BatchedJudge):
    """P(yes)/(P(yes)+P(no)) from a transformers image-text-to-text model, in process.

    `model` is a local checkpoint directory or a hub id. `dtype` is passed to
    `from_pretrained` ("auto": the checkpoint's own dtype). `device` defaults to
    CUDA when available, else CPU.
    """

    name = "hf"

    def __init__(
        self,
        model: str | Path,
        *,
        batch_size: int = 8,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        answer_tokens: AnswerTokens = "variants",
    ):
        super().__init__(max_concurrency=1)  # concurrency is the batch, not parallel calls
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = str(model)
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.processor = load_model_and_processor(self.model_path, dtype)
        self.model.to(self.device).eval()
        self.tokenizer = self.processor.tokenizer
        if self.tokenizer.pad_token is None:
            # Batches need a pad token; padded positions are masked out, so any token will do.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.answer_tokens = answer_tokens
        self.yes_ids, self.no_ids = answer_token_ids(self.tokenizer, _output_vocab_size(self.model), answer_tokens)
        if not self.yes_ids or not self.no_ids:
            missing = " nor ".join(repr(w) for w, ids in ((_YES, self.yes_ids), (_NO, self.no_ids)) if not ids)
            forms = ("as one of the entries yes/Yes/YES, no/No/NO (answer_tokens: official)" if answer_tokens == "official"
                     else "in any case, with or without a leading space")
            raise ConfigError(
                f"{self.model_path}: the tokenizer has no token for {missing} ({forms}), so "
                "P(yes)/(P(yes)+P(no)) cannot be read from this model"
            )
        self._yes = torch.tensor(self.yes_ids, device=self.device)
        self._no = torch.tensor(self.no_ids, device=self.device)
        # Keep only the last position's logits when the model supports it (saves B x L x V memory).
        self._logits_kwargs = (
            {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}
        )
        self._lock = threading.Lock()

    # -- batches ---------------------------------------------------------------- #

    def _judge_batch(
        self, indices: range, images: Sequence[ImageLike], prompts: Sequence[str]
    ) -> list[Verdict | ItemFailure]:
        """One batch: a bad image fails only its item; a failed forward pass fails the whole batch."""
        outcomes: dict[int, Verdict | ItemFailure] = {}
        ready: dict[int, Image.Image] = {}
        for i in indices:
            try:
                ready[i] = to_rgb(images[i])
            except Exception as exc:
                outcomes[i] = item_failure(i, prompts[i], exc)
        if ready:
            try:
                probs = self.answer_probabilities(list(ready.values()), [prompts[i] for i in ready])
            except Exception as exc:  # e.g. out of memory, a prompt the processor rejects
                probs = None
                outcomes.update({i: item_failure(i, prompts[i], exc) for i in ready})
            for i, (p_yes, p_no) in zip(ready, probs or []):
                try:
                    outcomes[i] = Verdict(p_yes=p_yes, p_no=p_no)
                except ValueError as exc:  # e.g. yes and no both underflowed to 0
                    outcomes[i] = item_failure(i, prompts[i], exc)
        return [outcomes[i] for i in indices]

    def answer_probabilities(self, images: list[Image.Image], prompts: list[str]) -> list[tuple[float, float]]:
        """(P(yes), P(no)) at the first answer token of each item, from one batched forward pass."""
        # Floating inputs (pixel values) in the model's dtype; ids and masks keep theirs.
        inputs = self.encode(images, prompts).to(self.device, dtype=self.model.dtype)
        with self._lock, torch.inference_mode():
            logits = self.model(**inputs, **self._logits_kwargs).logits[:, -1]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            # Sum in log space, then exp in float64: small probabilities stay finite and nonzero.
            p_yes = torch.logsumexp(logprobs[:, self._yes].double(), dim=-1).exp()
            p_no = torch.logsumexp(logprobs[:, self._no].double(), dim=-1).exp()
        # Summed probabilities may exceed 1 by rounding.
        return [(min(y, 1.0), min(n, 1.0)) for y, n in zip(p_yes.tolist(), p_no.tolist())]

    def encode(self, images: list[Image.Image], prompts: list[str]) -> Any:
        """The model inputs for a batch: one chat turn per item, left-padded."""
        conversations = [
            [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": self.ask(p)}]}]
            for img, p in zip(images, prompts)
        ]
        return self.processor.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            # Left padding: the last position of every row is the real last prompt token.
            processor_kwargs={"padding": True, "padding_side": "left"},
        )


# --------------------------------------------------------------------------- #
# Loading and vocabulary
# --------------------------------------------------------------------------- #


def load_model_and_processor(path: str, dtype: str | torch.dtype = "auto") -> tuple[Any, Any]:
    """The model and its processor, or a ConfigError that says what is missing at `path`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"{path}: not a transformers checkpoint (no config.json in that directory)")
        path = str(local)
    elif _looks_like_a_path(path):
        raise ConfigError(f"{path}: no such model directory")
    try:
        processor = AutoProcessor.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError, ValueError, ImportError (e.g. no torchvision), ...
        raise ConfigError(f"{path}: cannot load the processor: {type(exc).__name__}: {_one_line(exc)}") from exc
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ConfigError(
            f"{path}: the processor is a {type(processor).__name__}, not a vision-language processor "
            "(an image processor and a tokenizer); is this an image-text-to-text model?"
        )
    if not getattr(processor, "chat_template", None):
        raise ConfigError(
            f"{path}: the processor has no chat template (chat_template.jinja or chat_template in "
            "processor_config.json); the judge needs the model's own template to ask its question"
        )
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {_one_line(exc)}"
        raise ConfigError(f"{path}: cannot load an image-text-to-text model: {reason}") from exc
    return model, processor


def answer_token_ids(tokenizer: Any, vocab_size: int | None = None,
                     answer_tokens: AnswerTokens = "variants") -> tuple[list[int], list[int]]:
    """Ids of every token whose decoded text normalizes to "yes", and to "no" (with `official`:
    whose text is exactly yes/Yes/YES, no/No/NO).

    Decoded text rather than raw vocabulary strings: it is what a server reports as
    the token (so the served and in-process judges agree), and it turns byte-level
    pieces such as "Ġyes" into " yes" whatever the tokenizer's internal alphabet.
    Ids at or past `vocab_size` (the model's output width) can never be predicted
    and are left out.
    """
    n = len(tokenizer) if vocab_size is None else min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode(
        [[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    words = [answer_word(t, answer_tokens) for t in texts]
    return [i for i, w in enumerate(words) if w == _YES], [i for i, w in enumerate(words) if w == _NO]


def _output_vocab_size(model: Any) -> int | None:
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else None


def _looks_like_a_path(name: str) -> bool:
    """A name that cannot be a hub id ("owner/name"), so there is nothing to download."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
