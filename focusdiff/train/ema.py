"""EMA weights for evaluation (Flow-GRPO, DanceGRPO): an exponential moving average of the
trainable parameters, updated after every optimizer step, checkpointed with the run and
resumed exactly. When `train.ema_decay` is set, the run's output (what is registered and
evaluated) holds the EMA weights, not the last step's: RL updates are noisy, and the average
of the last ~1/(1 - decay) updates is usually the better policy.

The shadow copies are fp32, one per trainable parameter, on the parameters' device. Under
DDP and ZeRO-2 every process holds the same full parameters, so every process keeps the same
EMA and the main process checkpoints it; ZeRO-3 shards the parameters and is refused.
"""

from __future__ import annotations

import torch


class ParameterEMA:
    """shadow <- decay * shadow + (1 - decay) * parameter, after each optimizer step."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.nn.Parameter]) -> None:
        for name, p in params.items():
            self.shadow[name].mul_(self.decay).add_(p.detach().float(), alpha=1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, weights: dict[str, torch.Tensor], source: str) -> None:
        """Restore the shadows; `source` names the file in the error when they do not fit."""
        missing, unexpected = sorted(set(self.shadow) - set(weights)), sorted(set(weights) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"{source}: does not match the trainable parameters (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]})")
        for name, tensor in weights.items():
            if tensor.shape != self.shadow[name].shape:
                raise ValueError(f"{source}: {name} has shape {tuple(tensor.shape)}, the parameter "
                                 f"{tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(tensor)

    @torch.no_grad()
    def copy_to(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Write the EMA into the parameters (at the end of a run, before it is saved)."""
        for name, p in params.items():
            p.copy_(self.shadow[name].to(p.dtype))
