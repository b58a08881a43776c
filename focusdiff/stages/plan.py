"""`focusdiff plan`: will this recipe fit these GPUs? Wires a recipe (or params.yaml's train
block), the shape of its policy and the hardware into the memory planner (focusdiff/train/plan.py).

The policy's shape comes from where the policy is: a hub id of a released Janus-Pro is its
real shape (focusdiff/model/real_shapes.py, nothing downloaded); a local directory is read from
its config.json (transformers or DeepSeek format); `shape` overrides both (e.g. to plan a
recipe whose policy is a fine-tuned 7B on a volume this machine cannot see).
"""

from __future__ import annotations

from pathlib import Path

from focusdiff.errors import ConfigError
from focusdiff.train.configs import GRPOConfig
from focusdiff.train.plan import GiB, Hardware, ModelShape, Plan, plan

__all__ = ["GiB", "Hardware", "policy_config", "run_plan"]  # the CLI's view of the planner


def policy_config(policy: str, shape: str | None = None, layers: int | None = None):
    """The JanusConfig of `policy` (see the module docstring), without loading any weights."""
    from focusdiff.model.convert import convert_config, is_deepseek_config, read_json
    from focusdiff.model.loading import SHAPES_BASE, SHAPES_BASE_DIR
    from focusdiff.model.real_shapes import real_shape_config, shape_of_policy

    name = shape or shape_of_policy(policy)
    if name is not None:
        return real_shape_config(name, layers)
    directory = SHAPES_BASE_DIR if policy == SHAPES_BASE else Path(policy).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"cannot plan for policy {policy!r}: not a released Janus-Pro hub id and not a local "
                          f"directory; give its shape with --shape (janus-pro-1b or janus-pro-7b)")
    raw = read_json(directory / "config.json")
    if is_deepseek_config(raw):
        config = convert_config(raw, source=str(directory / "config.json"))
    else:
        from transformers import JanusConfig

        config = JanusConfig.from_pretrained(directory, local_files_only=True)
    if layers is not None:
        config.text_config.num_hidden_layers = layers
    return config


def run_plan(cfg: GRPOConfig, hardware: Hardware, shape: str | None = None, layers: int | None = None) -> tuple[ModelShape, Plan]:
    """The planner's estimate for `cfg` on `hardware`, with the largest micro-batch that fits."""
    model_shape = ModelShape.from_config(policy_config(cfg.policy, shape, layers))
    try:
        return model_shape, plan(model_shape, cfg, hardware)
    except ValueError as e:
        raise ConfigError(f"cannot plan {cfg.policy}: {e}") from None
