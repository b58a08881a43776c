"""LoRA for Pair-GRPO (`train.lora`): low-rank adapters (peft) on the language model's linear
layers, injected into the Janus model in place, so every code path that takes a `Policy`
(the sampler, the scorer, the checkpoints) runs unchanged on an adapted one.

Why in place (peft's `inject_adapter_in_model`) rather than a `PeftModel` wrapper: the wrapper
changes what `policy.model.model` means, and the sampler, the scorer and the checkpoints all
address Janus modules by their transformers names.

The KL reference is the same model with its adapters disabled (`adapters_disabled`): the
base's log-probs without a second copy in memory. At the end the adapters are merged into
the base weights (`merge_adapters`) and the trained policy is saved as a plain Janus
checkpoint: evaluation, registration, the MLflow pyfunc and any Janus code load it as they
load a fully fine-tuned one (a documented choice: a 7B version is then a full 14 GB checkpoint
rather than base + a 100 MB adapter; the adapter is what the resumable checkpoints hold).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from focusdiff.train.configs import LoRAConfig

ADAPTED_MODULE = "model.language_model"  # only the language model's layers get adapters


def add_adapters(model: torch.nn.Module, cfg: LoRAConfig, seed: int) -> dict[str, torch.nn.Parameter]:
    """Inject the adapters (fp32 whatever the base's dtype; B = 0, so the model's outputs are
    unchanged) and freeze every other weight; returns the adapters' parameters by name."""
    from peft import LoraConfig, inject_adapter_in_model

    linear_names = {name.rsplit(".", 1)[-1] for name, m in model.get_submodule(ADAPTED_MODULE).named_modules()
                    if isinstance(m, torch.nn.Linear)}
    unknown = sorted(set(cfg.target_modules) - linear_names)
    if unknown:
        raise ValueError(f"train.lora.target_modules: {', '.join(unknown)} not among the language model's linear "
                         f"layers ({', '.join(sorted(linear_names))})")
    pattern = rf"{re.escape(ADAPTED_MODULE)}\..*\.({'|'.join(map(re.escape, cfg.target_modules))})"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the adapters' A matrices: a function of the run's seed
        inject_adapter_in_model(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                           target_modules=pattern, bias="none"), model)
    adapters = {}
    for name, p in model.named_parameters():
        is_adapter = ".lora_" in name
        p.requires_grad_(is_adapter)
        if is_adapter:
            p.data = p.data.float()
            adapters[name] = p
    return adapters


def _adapter_layers(model: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The base model's forward (the KL reference) for the duration."""
    layers = _adapter_layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def merge_adapters(model: torch.nn.Module) -> None:
    """Fold each adapter into its base weight (W + alpha/r B A, in the base's dtype) and put the
    plain linear layer back: the model is a Janus model again, with its original names."""
    from peft.tuners.lora import LoraLayer

    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    leftover = [n for n, _ in model.named_parameters() if ".lora_" in n]
    if leftover:
        raise RuntimeError(f"adapters left after merging: {leftover[:3]}")
