"""The memory planner: per-GPU memory of a Pair-GRPO run by part, before anyone rents GPUs.

`focusdiff plan -c RECIPE --gpus 8 --gpu-mem 80` prints, for the recipe's policy at its real
shape, the bytes each part holds on one GPU at the run's peak, whether that fits, and the
largest `items_per_micro_batch` that does. Parameter counts are exact: the model is built on
PyTorch's meta device from its config (no weights, no memory). Everything else is arithmetic
on what the trainer (focusdiff/train/trainer.py) keeps alive:

  weights      the policy: fp32 under plain mixed precision (autocast keeps fp32 weights), bf16
               under DeepSpeed (its bf16 mode) or for a LoRA run's frozen base
  gradients    one per trainable parameter (under ZeRO-2/3: this GPU's shard in fp32, plus the
               bf16 buffer the backward writes; under ZeRO-3 the weights are sharded too)
  optimizer    AdamW's two moments in fp32 (plus DeepSpeed's fp32 master weights), sharded by ZeRO
  reference    the frozen KL reference, a second full copy in the run's precision; none with
               beta 0, and none with LoRA (the reference is the policy with its adapters off)
  kv cache     the sampler's preallocated keys and values: 2 (key, value) x layers x rows x
               (prompt + image tokens) x hidden, rows = 2 (CFG) x the images one rollout draws
  activations  the loss's forward on 2 (CFG) x 2G images per pair item, kept for backward:
               ~(11 hidden + 4 intermediate) values per token per layer (RMSNorm in/out, q, k, v
               after RoPE, attention out, residuals, the MLP's gate, up, SiLU and product), or with
               gradient checkpointing each layer's input plus one layer's full set; and the
               generation head's logits over the 16384 codes, kept in fp32 three times (logits,
               guided logits, log-softmax)

Peak = the larger of the rollout phase (weights + reference + gradients + optimizer + kv cache)
and the loss phase (the same with activations instead of the cache). Not counted: the CUDA
context and allocator fragmentation (`headroom`, default 10% of the GPU) and the judge (served
elsewhere in the recipes). The CPU real-shape run checks these estimates against measured peaks
(tests/integration/test_real_shape.py; bench/real_shape.py prints both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from focusdiff.model.policy import FROZEN_FOR_IMAGE_GENERATION
from focusdiff.train.configs import GRPOConfig

GiB = 1024**3
ACT_PER_HIDDEN, ACT_PER_INTERMEDIATE = 11, 4  # activation values per token and layer (see the module docstring)
LOGIT_COPIES = 3  # logits, guided logits, log-softmax: fp32 (rows, N, codes) tensors alive at the loss


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a Janus model; `from_config` measures it exactly."""

    total_params: int
    trainable_params: int  # full fine-tuning: everything but the frozen prefixes
    layers: int
    hidden: int
    intermediate: int
    kv_width: int  # key/value heads x head dim
    image_tokens: int
    codes: int  # the generation head's output (the VQ's codebook size)
    lora_params: dict[str, int] = field(default_factory=dict)  # target module name -> (in + out) summed over layers

    @staticmethod
    def from_config(config) -> "ModelShape":
        import torch
        from transformers import JanusForConditionalGeneration

        with torch.device("meta"):
            model = JanusForConditionalGeneration(config)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(FROZEN_FOR_IMAGE_GENERATION))
        lora: dict[str, int] = {}
        for name, module in model.model.language_model.named_modules():
            if isinstance(module, torch.nn.Linear):
                leaf = name.rsplit(".", 1)[-1]
                lora[leaf] = lora.get(leaf, 0) + module.in_features + module.out_features
        text = config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return ModelShape(total, trainable, text.num_hidden_layers, text.hidden_size, text.intermediate_size,
                          text.num_key_value_heads * head_dim, config.vision_config.num_image_tokens,
                          config.vq_config.num_embeddings, lora)


@dataclass(frozen=True)
class Hardware:
    gpus: int = 1
    gpu_mem_gib: float = 80.0
    zero: Literal[0, 2, 3] = 0  # DeepSpeed ZeRO stage (0: none, plain data parallel or one GPU)
    headroom: float = 0.10  # share of the GPU left for the CUDA context and fragmentation
    prompt_tokens: int = 80  # tokens of a (padded) prompt, chat template included


@dataclass(frozen=True)
class Plan:
    parts: dict[str, float]  # bytes per GPU, by part (activations with the recipe's checkpointing)
    activations_other: float  # activations with the other gradient-checkpointing setting
    rollout_peak: float
    loss_peak: float
    usable: float  # bytes of the GPU the run may use
    images_per_micro_batch: int
    max_items_per_micro_batch: int  # the largest that fits (0: not even one)

    @property
    def peak(self) -> float:
        return max(self.rollout_peak, self.loss_peak)

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable


def lora_trainable(shape: ModelShape, cfg: GRPOConfig) -> int:
    assert cfg.lora is not None
    missing = [m for m in cfg.lora.target_modules if m not in shape.lora_params]
    if missing:
        raise ValueError(f"lora.target_modules: {', '.join(missing)} not among the language model's linear layers "
                         f"({', '.join(sorted(shape.lora_params))})")
    return cfg.lora.rank * sum(shape.lora_params[m] for m in cfg.lora.target_modules)


def plan(shape: ModelShape, cfg: GRPOConfig, hw: Hardware, items_per_micro_batch: int | None = None) -> Plan:
    """The per-GPU memory of `cfg` on `hw` (see the module docstring)."""
    items = items_per_micro_batch or cfg.items_per_micro_batch
    bf16 = cfg.mixed_precision == "bf16"
    lora = cfg.lora is not None
    shards = hw.gpus if hw.zero else 1
    trainable = lora_trainable(shape, cfg) if lora else shape.trainable_params
    frozen = shape.total_params - (0 if lora else trainable)

    deepspeed = hw.zero > 0
    weight_bytes = 2 if bf16 and (deepspeed or lora) else 4
    act_bytes = 2 if bf16 else 4
    parts: dict[str, float] = {}
    trainable_weights = (4 if lora else weight_bytes) * trainable  # adapters stay fp32
    parts["weights"] = weight_bytes * frozen + trainable_weights / (shards if hw.zero == 3 else 1)
    if deepspeed:  # bf16 grads written by the backward (partitioned by stage 2/3) + this GPU's fp32 shard
        parts["gradients"] = (2 + 4) * trainable / shards
        parts["optimizer"] = (8 + 4) * trainable / shards  # Adam moments + fp32 master weights
    else:
        parts["gradients"] = 4 * trainable
        parts["optimizer"] = 8 * trainable
    parts["reference"] = 0.0 if (cfg.beta == 0 or lora) else (2 if bf16 else 4) * shape.total_params

    prompts_per_item = 2  # a pair item holds two prompts (an unpaired item: two prompts as well)
    rollout_images = items * prompts_per_item * (cfg.rollouts_per_prompt or cfg.group_size)
    loss_images = items * prompts_per_item * cfg.group_size
    tokens = hw.prompt_tokens + shape.image_tokens
    parts["kv cache"] = 2 * shape.layers * (2 * rollout_images) * tokens * shape.kv_width * weight_bytes

    rows = 2 * loss_images  # conditional + unconditional rows, both with gradients
    per_layer_token = act_bytes * (ACT_PER_HIDDEN * shape.hidden + ACT_PER_INTERMEDIATE * shape.intermediate)
    full = shape.layers * rows * tokens * per_layer_token
    checkpointed = (shape.layers * rows * tokens * shape.hidden * act_bytes) + rows * tokens * per_layer_token
    head = LOGIT_COPIES * rows * shape.image_tokens * shape.codes * 4
    chosen, other = (checkpointed, full) if cfg.gradient_checkpointing else (full, checkpointed)
    parts["activations"] = chosen + head

    resident = sum(v for k, v in parts.items() if k not in ("kv cache", "activations"))
    usable = hw.gpu_mem_gib * GiB * (1 - hw.headroom)
    rollout_peak, loss_peak = resident + parts["kv cache"], resident + parts["activations"]

    best = 0
    if items_per_micro_batch is None:  # the largest micro-batch that fits, by the same arithmetic
        per_item_kv = parts["kv cache"] / items
        per_item_act = parts["activations"] / items
        best = int(max(0.0, (usable - resident)) // max(per_item_kv, per_item_act))
    return Plan(parts, other + head, rollout_peak, loss_peak, usable, loss_images, best)
