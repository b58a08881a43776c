"""The CLI's tools that are not pipeline stages: import or validate a dataset, render a caption,
measure the exact checker or a policy, generate images, convert a checkpoint, serve a judge.

Each is one call into its domain package, here so that the CLI imports only stages. The
imports sit inside the functions on purpose: `focusdiff shapes render` should not load torch,
nor `focusdiff data validate` FastAPI.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from focusdiff.errors import ConfigError


def import_pairs(pairs_file: Path, out: Path, unpaired_file: Path | None, fmt: str, val_fraction: float,
                 test_fraction: float, max_image_pixels: int, drop_duplicates: bool):
    """Import FocusDiff-Data pairs into a canonical dataset directory (atomic); returns its report."""
    from focusdiff.data.imports import import_dataset

    return import_dataset(pairs_file, out, unpaired_file=unpaired_file, fmt=fmt, val_fraction=val_fraction,
                          test_fraction=test_fraction, max_image_pixels=max_image_pixels,
                          drop_duplicates=drop_duplicates)


def validate_pairs(root: Path, max_image_pixels: int):
    """Check every record and image of a dataset; returns its statistics."""
    from focusdiff.data.validate import validate_dataset

    return validate_dataset(root, max_image_pixels=max_image_pixels)


def checker_report(pairs_per_category: int, canvas: int, seed: int):
    """The exact checker's clause accuracy on clean and perturbed renders, one result per condition."""
    from focusdiff.shapes.accuracy import checker_accuracy

    return checker_accuracy(pairs_per_category, canvas, seed)


def render_caption(caption: str, out: Path, canvas: int, seed: int) -> dict:
    """Render one ground-truth image for `caption` (unsaid attributes sampled) to `out` (PNG,
    atomic); returns the scene drawn."""
    import numpy as np

    from focusdiff.io import atomic_write_bytes
    from focusdiff.shapes.generate import ShapesSampler
    from focusdiff.shapes.grammar import parse_caption
    from focusdiff.shapes.render import render_pil

    scene = ShapesSampler(canvas, np.random.default_rng(seed)).realize(parse_caption(caption))
    buf = io.BytesIO()
    render_pil(scene).save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    return scene.to_dict()


def policy_quality(policy: str, pairs_per_category: int, seed: int, cfg_weight: float):
    """How well `policy` draws ShapesWorld prompts (sampled, read by the exact checker):
    (the loaded policy, its quality report)."""
    from focusdiff.model.loading import load_policy
    from focusdiff.model.quality import policy_quality as measure
    from focusdiff.model.sampler import SamplingConfig

    loaded = load_policy(policy)
    return loaded, measure(loaded, pairs_per_category, seed, SamplingConfig(cfg_weight=cfg_weight))


def tokenizer_locality(loaded, pairs_per_category: int, seed: int):
    """How local the loaded policy's image tokenizer is: tokens vs pixel blocks a pair's edit changes."""
    from focusdiff.model.quality import edit_locality
    from focusdiff.shapes.accuracy import sample_pairs

    return edit_locality(loaded, sample_pairs(pairs_per_category, loaded.image_size, seed))


def load_for_generation(policy: str, device: str, cfg_weight: float | None, temperature: float, top_k: int,
                        top_p: float):
    """The policy and its sampling settings for `generate`; `cfg_weight` None is the policy's own
    guidance scale. A bad setting is a ConfigError."""
    from focusdiff.model.loading import load_policy
    from focusdiff.model.sampler import SamplingConfig

    loaded = load_policy(policy, device=device)
    try:
        sampling = SamplingConfig(cfg_weight=loaded.guidance_scale if cfg_weight is None else cfg_weight,
                                  temperature=temperature, top_k=top_k, top_p=top_p)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return loaded, sampling


def generate(loaded, sampling, prompts: list[str], out: Path, images_per_prompt: int, seed: int, batch_size: int,
             on_batch: Callable[[int], None]) -> None:
    """Images for `prompts`, as PNGs and a grid under `out`."""
    from focusdiff.model.generate import generate_images

    generate_images(loaded, prompts, out, images_per_prompt=images_per_prompt, seed=seed, sampling=sampling,
                    batch_size=batch_size, on_batch=on_batch)


def convert(src: Path, dst: Path) -> Path:
    """Convert a DeepSeek-format Janus checkpoint into transformers format; returns where it went."""
    from focusdiff.model.convert import convert_checkpoint

    return convert_checkpoint(src, dst)


def serve_judge(backend: str, model: str | None, host: str, port: int, model_name: str, max_body_bytes: int,
                max_image_pixels: int) -> None:
    """Serve the judge `backend` as an OpenAI-compatible chat-completions endpoint (until stopped)."""
    from focusdiff.judge.server import make_backend, serve

    serve(make_backend(backend, model), host=host, port=port, model_name=model_name,
          max_body_bytes=max_body_bytes, max_image_pixels=max_image_pixels)
