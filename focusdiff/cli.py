"""The `focusdiff` command line: thin entry points to the stage functions.

`dvc.yaml` stages call these commands; the Prefect flows call the same library
functions. Errors the user can fix are printed as one clear message (exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from focusdiff.errors import FocusdiffError, TrainingPaused
from focusdiff.redact import redact_urls

EX_TEMPFAIL = 75  # a paused bounded invocation (sysexits.h): run the same command again

app = typer.Typer(
    help="FocusDiff Pair-GRPO: data, training, evaluation and promotion.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # let FocusdiffError reach main() and print as one line
)
data_app = typer.Typer(help="Paired datasets: build, import, validate.", no_args_is_help=True)
shapes_app = typer.Typer(help="ShapesWorld, the embedded default world.", no_args_is_help=True)
bootstrap_app = typer.Typer(help="Train the ShapesWorld base model (VQ tokenizer, then LM).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(shapes_app, name="shapes")
app.add_typer(bootstrap_app, name="bootstrap")
judge_app = typer.Typer(help="Judges: serve one behind the OpenAI-compatible API; calibrate one.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")

console = Console()
err_console = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="parameter file")]


def _params(path: Path, overrides: list[str] | None = None, example_block: str = "train"):
    """Load the parameter file with `-S` overrides (full dotted keys)."""
    from focusdiff.config import load_params, parse_overrides

    return load_params(path, overrides=parse_overrides(overrides, example_block))


@data_app.command("build")
def data_build(params: ParamsOpt = Path("params.yaml")) -> None:
    """Build (ShapesWorld) or import (data.source: import) the dataset at data.out, and track it."""
    from focusdiff.stages.data import run_data_stage

    result = run_data_stage(_params(params))
    _print_counts(result.counts, title=f"dataset {result.out}")
    console.print(f"MLflow run: {result.mlflow_run_id}")


@data_app.command("import")
def data_import(
    pairs_file: Annotated[Path, typer.Argument(help="pairs: .json list, .jsonl, or .parquet (HF datasets layout)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="dataset directory to write")],
    unpaired: Annotated[Optional[Path], typer.Option(help="text file of unpaired prompts, one per line")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto|json|jsonl|parquet")] = "auto",
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    drop_duplicates: bool = False,
    max_image_pixels: int = 64_000_000,
) -> None:
    """Import FocusDiff-Data pairs into a canonical dataset directory (atomic)."""
    from focusdiff.stages.tools import import_pairs

    report = import_pairs(pairs_file, out, unpaired_file=unpaired, fmt=fmt, val_fraction=val_fraction,
                          test_fraction=test_fraction, max_image_pixels=max_image_pixels,
                          drop_duplicates=drop_duplicates)
    console.print(report.model_dump_json(indent=2))


@data_app.command("validate")
def data_validate(
    root: Annotated[Path, typer.Argument(help="dataset directory")],
    max_image_pixels: int = 64_000_000,
) -> None:
    """Check every record and image of a dataset; print its statistics."""
    from focusdiff.stages.tools import validate_pairs

    report = validate_pairs(root, max_image_pixels=max_image_pixels)
    console.print(report.model_dump_json(indent=2))


@shapes_app.command("checker-report")
def checker_report(
    pairs_per_category: int = 200,
    canvas: int = 32,
    seed: int = 0,
) -> None:
    """Measure the exact checker's clause accuracy on clean and perturbed renders."""
    from focusdiff.stages.tools import checker_report as measure_checker

    results = measure_checker(pairs_per_category, canvas, seed)
    title = f"exact checker: {pairs_per_category} pairs x 6 categories, {canvas}px, seed {seed}"
    table = Table(title=title)
    for col in ("condition", "clauses", "accuracy", "gate", "ms/image"):
        table.add_column(col)
    for r in results:
        gate = "stress, not gated" if r.gate is None else f">= {r.gate:.1%} {'ok' if r.passed else 'FAIL'}"
        table.add_row(r.condition, str(r.clauses), f"{r.accuracy:.2%}", gate, f"{r.seconds_per_image * 1e3:.2f}")
    console.print(table)
    categories = sorted(results[0].by_category)
    per_cat = Table(title="clause accuracy per category (%)")
    per_cat.add_column("condition")
    for cat in categories:
        per_cat.add_column(cat.replace("_", " "), justify="right")
    for r in results:
        per_cat.add_row(r.condition, *(f"{100 * r.by_category[c][0] / r.by_category[c][1]:.1f}" for c in categories))
    console.print(per_cat)
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@shapes_app.command("render")
def shapes_render(
    caption: Annotated[str, typer.Argument(help="a ShapesWorld caption")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("shape.png"),
    canvas: int = 32,
    seed: int = 0,
) -> None:
    """Render one ground-truth image for a caption (unsaid attributes sampled)."""
    from focusdiff.stages.tools import render_caption

    scene = render_caption(caption, out, canvas, seed)
    console.print(f"wrote {out}: {scene}")


MaxMinutesOpt = Annotated[Optional[float], typer.Option(
    min=0, help="a bounded invocation: stop at the first checkpoint past this many minutes (exit 75); "
                "the same command continues from it")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-S", help="dotted.key=value override (full key, as dvc exp run -S: train.beta=0.05)")]


def _train_vq(block: str, params: Path, set_: Optional[list[str]], max_minutes: Optional[float]) -> None:
    from focusdiff.stages.bootstrap import run_vq_stage

    result = run_vq_stage(_params(params, set_, example_block=f"bootstrap.{block}"), block, max_minutes=max_minutes)
    console.print(f"VQ reconstructions keep {result.accuracy:.2%} of checker clauses; a one-object edit changes "
                  f"{result.tokens_per_block:.2f} tokens per pixel block it touches; wrote {result.out}")
    console.print(f"MLflow run: {result.mlflow_run_id}")


@bootstrap_app.command("vq")
def bootstrap_vq(params: ParamsOpt = Path("params.yaml"), max_minutes: MaxMinutesOpt = None, set_: SetOpt = None) -> None:
    """Train the ShapesWorld VQ tokenizer; writes bootstrap.vq.out if it passes its gate."""
    _train_vq("vq", params, set_, max_minutes)


@bootstrap_app.command("vq-local")
def bootstrap_vq_local(params: ParamsOpt = Path("params.yaml"), max_minutes: MaxMinutesOpt = None,
                       set_: SetOpt = None) -> None:
    """Fine-tune the VQ (bootstrap.vq_local.init) to be local; writes bootstrap.vq_local.out if it passes its gate."""
    _train_vq("vq_local", params, set_, max_minutes)


@bootstrap_app.command("lm")
def bootstrap_lm(
    params: ParamsOpt = Path("params.yaml"),
    max_minutes: Annotated[Optional[float], typer.Option(
        min=0, help="a bounded invocation: stop at the first checkpoint past this many minutes (exit 75); "
                    "the same command continues from it")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-S", help="dotted.key=value override (full key, as dvc exp run -S: train.beta=0.05)")] = None,
) -> None:
    """Fine-tune the tiny Janus LM on ShapesWorld; writes bootstrap.lm.out (the shipped base) if it passes its gate."""
    from focusdiff.stages.bootstrap import run_lm_stage

    result = run_lm_stage(_params(params, set_, example_block="bootstrap.lm"), max_minutes=max_minutes)
    q = result.quality
    console.print(f"base: single objects {q['single_object_accuracy']:.1%}, all images {q['image_accuracy']:.1%}, "
                  f"pairs {q['pair_accuracy']:.1%}; wrote {result.out}")
    console.print(f"MLflow run: {result.mlflow_run_id}")


@bootstrap_app.command("report")
def bootstrap_report(
    policy: Annotated[str, typer.Option(help="shapes-base, a checkpoint directory, or a hub id")] = "shapes-base",
    pairs_per_category: Annotated[Optional[int], typer.Option(
        min=1, help="default: bootstrap.lm.eval_pairs_per_category (the stage's own quality set)")] = None,
    seed: Annotated[int, typer.Option(help="the stage measures with 4321")] = 4321,
    cfg_weight: Annotated[Optional[float], typer.Option(help="default: bootstrap.lm.cfg_weight")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Measure how well a policy draws ShapesWorld prompts (sampled, read by the exact checker).
    With the defaults this repeats the bootstrap_lm stage's measurement (its record's figures).
    Also: how local its image tokenizer is (tokens vs pixel blocks a pair's edit changes)."""
    from focusdiff.stages.tools import policy_quality, tokenizer_locality

    if pairs_per_category is None or cfg_weight is None:
        lm = _params(params).bootstrap.lm
        pairs_per_category = pairs_per_category or lm.eval_pairs_per_category
        cfg_weight = lm.cfg_weight if cfg_weight is None else cfg_weight
    loaded, report = policy_quality(policy, pairs_per_category, seed, cfg_weight)
    rows = [(cat, f"{acc:.1%}", f"{report.pair_by_category[cat]:.1%}") for cat, acc in report.by_category.items()]
    console.print(_category_table(f"{policy}: {report.images} images, {pairs_per_category} pairs per category, seed {seed}",
                                  ("images right", "pairs right"),
                                  rows + [("all", f"{report.image_accuracy:.1%}", f"{report.pair_accuracy:.1%}")]))
    console.print(f"single-object prompts right: {report.single_object_accuracy:.1%}; "
                  f"clause accuracy: {report.clause_accuracy:.1%}")
    locality = tokenizer_locality(loaded, pairs_per_category, seed)
    console.print(_category_table(
        f"the image tokenizer: what a pair's edit changes, of {locality.tokens} (mean per pair)", ("pixel blocks", "tokens"),
        [(cat, f"{locality.blocks_changed[cat]:.1f}", f"{changed:.1f}") for cat, changed in locality.tokens_changed.items()]))
    console.print(f"tokens changed per pixel block touched, over the in-place edits (color, appearance, text): "
                  f"{locality.ratio():.2f} (a local tokenizer: about 1)", highlight=False)


def _category_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    """One row per category (slug shown with spaces), right-aligned figures."""
    table = Table(title=title)
    table.add_column("category")
    for column in columns:
        table.add_column(column, justify="right")
    for cat, *cells in rows:
        table.add_row(cat.replace("_", " "), *cells)
    return table


@app.command("generate")
def generate(
    prompts: Annotated[Optional[list[str]], typer.Argument(help="prompts (or --prompts-file)")] = None,
    policy: Annotated[str, typer.Option(help="shapes-base, a checkpoint directory, or a hub id")] = "shapes-base",
    prompts_file: Annotated[Optional[Path], typer.Option(help="one prompt per line")] = None,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("outputs/generate"),
    n: Annotated[int, typer.Option("--n", help="images per prompt")] = 4,
    seed: int = 0,
    cfg_weight: Annotated[Optional[float], typer.Option(help="default: the policy's generation_config.guidance_scale")] = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 16,
    device: str = "cpu",
) -> None:
    """Generate images for prompts with any loadable policy; writes PNGs and a grid."""
    from focusdiff.errors import ConfigError
    from focusdiff.progress import Reporter

    texts = list(prompts or [])
    if prompts_file is not None:
        try:
            texts += [line.strip() for line in prompts_file.read_text("utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{prompts_file}: cannot read prompts: {exc}") from None
    if not texts:
        raise ConfigError("no prompts: pass them as arguments or with --prompts-file")
    # torch: only once the arguments are valid
    from focusdiff.stages.tools import generate as generate_images, load_for_generation

    loaded, sampling = load_for_generation(policy, device, cfg_weight, temperature, top_k, top_p)
    with Reporter("generate", len(texts) * n, unit="images") as progress:
        generate_images(loaded, sampling, texts, out, images_per_prompt=n, seed=seed, batch_size=batch_size,
                        on_batch=progress.advance)
    console.print(f"wrote {len(texts) * n} images and {out / 'grid.png'}")


@app.command("train")
def train(
    params: ParamsOpt = Path("params.yaml"),
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="a recipe (recipes/*.yaml) instead of params.yaml's train block")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-S", help="dotted.key=value override (full key, as dvc exp run -S: train.beta=0.05)")] = None,
    restart: Annotated[bool, typer.Option(
        "--restart", help="checkpoints of a run with other parameters are moved aside (<dir>.old-<time>) and "
        "training starts over, instead of being refused (train.restart=true)")] = False,
) -> None:
    """Pair-GRPO (or vanilla GRPO) training; resumes from its last checkpoint. Also runs under
    `accelerate launch` / torchrun for DDP and DeepSpeed (configs in infra/accelerate/)."""
    from focusdiff.stages.train import run_train_stage, train_inputs

    cfg, tracking, registry = train_inputs(params, config, set_, restart)
    result = run_train_stage(cfg, tracking, command="focusdiff train", registry=registry)
    if result.out is not None:
        console.print(f"{cfg.algorithm}: {result.steps} steps (resumed from {result.resumed_from}); wrote {result.out}")
        console.print(f"MLflow run: {result.mlflow_run_id}")


@app.command("plan")
def plan_memory(
    params: ParamsOpt = Path("params.yaml"),
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="a recipe (recipes/*.yaml) instead of params.yaml's train block")] = None,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs the run uses")] = 1,
    gpu_mem: Annotated[float, typer.Option("--gpu-mem", min=1, help="memory of one GPU, GiB")] = 80.0,
    zero: Annotated[Optional[int], typer.Option(
        help="DeepSpeed ZeRO stage: 0 (none), 2 or 3; default 2 with several GPUs (the recipes' launch), else 0")] = None,
    shape: Annotated[Optional[str], typer.Option(help="plan this real shape (janus-pro-1b, janus-pro-7b) whatever the policy")] = None,
    layers: Annotated[Optional[int], typer.Option(min=1, help="only this many language-model layers")] = None,
    prompt_tokens: Annotated[int, typer.Option(min=1, help="tokens of a padded prompt")] = 80,
    set_: SetOpt = None,
) -> None:
    """Per-GPU memory of a Pair-GRPO run by part (weights, gradients, optimizer, reference,
    rollout KV cache, activations with and without gradient checkpointing), whether it fits,
    and the largest items_per_micro_batch that does. Nothing is loaded or downloaded."""
    from rich.table import Table

    from focusdiff.stages.plan import GiB, Hardware, run_plan
    from focusdiff.stages.train import train_inputs

    stage = (2 if gpus > 1 else 0) if zero is None else zero
    if stage not in (0, 2, 3):
        raise typer.BadParameter(f"--zero must be 0, 2 or 3, got {stage}")
    cfg, _, _ = train_inputs(params, config, set_)
    hw = Hardware(gpus=gpus, gpu_mem_gib=gpu_mem, zero=stage, prompt_tokens=prompt_tokens)
    model_shape, p = run_plan(cfg, hw, shape, layers)
    mode = "LoRA r=%d" % cfg.lora.rank if cfg.lora else "full fine-tuning"
    table = Table(title=f"{cfg.policy}: {model_shape.total_params / 1e9:.2f}B parameters, {mode}, "
                        f"{cfg.mixed_precision}, ZeRO-{stage} on {gpus} x {gpu_mem:g} GiB; "
                        f"{p.images_per_micro_batch} images per micro-batch")
    table.add_column("part")
    table.add_column("GiB per GPU", justify="right")
    for part, value in p.parts.items():
        label = part
        if part == "activations":
            label += " (gradient checkpointing)" if cfg.gradient_checkpointing else " (no checkpointing)"
        table.add_row(label, f"{value / GiB:.2f}")
    other = "without" if cfg.gradient_checkpointing else "with"
    table.add_row(f"[dim]activations {other} checkpointing[/dim]", f"[dim]{p.activations_other / GiB:.2f}[/dim]")
    table.add_row("peak: rollout / loss", f"{p.rollout_peak / GiB:.2f} / {p.loss_peak / GiB:.2f}")
    table.add_row("usable (GPU less headroom)", f"{p.usable / GiB:.2f}")
    console.print(table)
    verdict = "fits" if p.fits else "does NOT fit"
    console.print(f"{verdict}: peak {p.peak / GiB:.1f} GiB of {p.usable / GiB:.1f}; the largest items_per_micro_batch "
                  f"that fits is {p.max_items_per_micro_batch} (the recipe has {cfg.items_per_micro_batch})")


@app.command("submit-training")
def submit_training(
    params: ParamsOpt = Path("params.yaml"),
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="names and labels the job; pass a previous id to re-attach to its job (default: a new id)")] = None,
    nodes: Annotated[Optional[int], typer.Option(help="overrides cluster.pytorchjob.nodes")] = None,
) -> None:
    """Multi-node Pair-GRPO on Kubernetes: submit cluster.pytorchjob's PyTorchJob, watch it to
    the end, and print the version it registered (the pipeline's train task, outside Prefect)."""
    import uuid

    from focusdiff.stages.cluster import train_on_cluster

    loaded = _params(params)
    run_id = run_id or str(uuid.uuid4())
    console.print(f"run id {run_id} (re-attach with --run-id {run_id})")
    registration = train_on_cluster(loaded, run_id, log=console.print, nodes=nodes)
    console.print(f"registered {registration.model_name} v{registration.version} ({registration.model_uri})")


@app.command("ablate")
def ablate(
    params: ParamsOpt = Path("params.yaml"),
    seeds: Annotated[list[int], typer.Option("--seed", help="training seeds (repeat; >= 3 for the table)")] = [0, 1, 2],
    variant: Annotated[Optional[list[str]], typer.Option(help="a variant of VARIANTS in focusdiff/stages/ablate.py (repeat; default: grpo, pair-grpo-no-injection, pair-grpo); an unknown name is refused with the list")] = None,
    out: Annotated[Path, typer.Option(help="trained policies and their images (scratch, not committed)")] = Path("outputs/ablate"),
    results: Annotated[Path, typer.Option(help="one committed record per cell (scores, configuration hash, git "
                                               "commit, wall time) and table.md")] = Path("results/ablation"),
    eval_repeats: Annotated[int, typer.Option(min=1, help="PairComp draws per policy, averaged (one draw's s_g is noisy)")] = 3,
    report: Annotated[bool, typer.Option("--report", help="only rebuild the tables from the records in --results")] = False,
    add_pair_means: Annotated[bool, typer.Option("--add-pair-means", help="fill in the per-pair a (for s_a's paired "
                                                 "differences) of records written without it, from their evaluations "
                                                 "still under --out, then rebuild the tables")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-S", help="dotted.key=value override (full key, as dvc exp run -S: train.beta=0.05)")] = None,
) -> None:
    """Base vs vanilla GRPO vs Pair-GRPO without injection vs Pair-GRPO at an equal rollout budget,
    over seeds; PairComp s_a/s_g by the reward judge and by the exact checker. Runs cell by cell
    (`--variant grpo --seed 0` is one cell); a cell whose record holds every score is skipped."""
    if report or add_pair_means:
        from focusdiff.stages.ablate import add_pair_means as fill_pair_means
        from focusdiff.stages.ablate import report as rebuild_tables

        if add_pair_means:
            console.print(f"filled in per-pair a: {', '.join(fill_pair_means(results, out)) or 'none'}")
        console.print(rebuild_tables(results))
        console.print(f"wrote {results / 'table.md'}")
        return
    from focusdiff.stages.ablate import run_ablate_stage

    text = run_ablate_stage(params, seeds, out, variant, eval_repeats, set_, results)
    console.print(text)
    console.print(f"wrote the cells' records and {results / 'table.md'}")


@app.command("evaluate")
def evaluate(
    benchmark: Annotated[list[str], typer.Option("--benchmark", "-b", help="paircomp, geneval, t2i_compbench, dpg_bench (repeat for several)")],
    policy: Annotated[Optional[str], typer.Option(help="override evaluate.policy: a directory, hub id or shapes-base")] = None,
    version: Annotated[Optional[str], typer.Option(
        help="evaluate a registered version of promote.model_name instead (a number or an alias, e.g. champion) "
             "and write the evidence on it; outputs in outputs/eval/<name>-v<n>/")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-S", help="dotted.key=value override (full key: evaluate.seed=3)")] = None,
) -> None:
    """Generate, score and aggregate benchmarks for a policy; writes metrics/eval/<benchmark>.json."""
    from focusdiff.progress import Reporter

    from focusdiff.config import updated

    if policy is not None and version is not None:
        raise typer.BadParameter("give --policy or --version, not both", param_hint="--version")
    loaded = _params(params, set_, example_block="evaluate")
    if policy is not None:
        loaded = updated(loaded, evaluate=updated(loaded.evaluate, policy=policy))
    from focusdiff.stages.evaluate import evaluation_target, run_benchmark

    registration, cfg, tags = evaluation_target(loaded, Path.cwd(), version)
    for name in benchmark:
        with Reporter(f"{name}: generating", None, unit="images") as progress:
            result = run_benchmark(name, cfg, loaded.tracking, progress=progress.advance, registration=registration,
                                   tags=tags)
        table = Table(title=f"{name}: {cfg.policy}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("95% interval", justify="right")
        for key, value in result.metrics.items():
            ci = result.intervals.get(key)
            table.add_row(key, f"{value:.4g}", f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")
        console.print(table)
        for d in result.deviations:
            console.print(f"deviation: {d}")
        console.print("time: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in result.seconds.items()),
                      highlight=False)
        console.print(f"wrote {result.metrics_file} and {result.folder}; MLflow run {result.mlflow_run_id}")


@app.command("baseline")
def baseline_cmd(
    params: ParamsOpt = Path("params.yaml"),
    record: Annotated[Optional[Path], typer.Option(help="also write what it did to this JSON file (DVC metrics)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-S", help="dotted.key=value override (full key: promote.first_champion=none)")] = None,
) -> None:
    """With no champion yet: register the starting policy (train.policy), evaluate it on the gate's
    benchmarks under the current protocol and make it the first champion, so the first trained
    policy is compared with it pair by pair. With a champion, nothing changes."""
    from focusdiff.stages.baseline import run_baseline_stage

    outcome = run_baseline_stage(_params(params, set_, example_block="promote"), Path.cwd(), record)
    console.print(f"baseline: {outcome.action}: {outcome.reason}", highlight=False)
    for key, value in outcome.metrics.items():
        console.print(f"  {key}: {value:.4g}")


@app.command("promote")
def promote_cmd(
    params: ParamsOpt = Path("params.yaml"),
    version: Annotated[str, typer.Option(help="the challenger: a version number or an alias")] = "challenger",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the decision without writing it")] = False,
    record: Annotated[Optional[Path], typer.Option(help="also write the decision to this JSON file (DVC metrics)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-S", help="dotted.key=value override (full key: promote.margin=2)")] = None,
) -> None:
    """The promotion gate: move the `champion` alias to the challenger only if PairComp s_g wins
    pair by pair (margin and paired-bootstrap lower bound) and nothing else regresses."""
    from focusdiff.stages.promote import run_promote_stage

    decision = run_promote_stage(_params(params, set_, example_block="promote"), version, dry_run, record)
    console.print(("[dry run] " if dry_run else "") + decision.summary(), highlight=False)
    for key, value in decision.numbers.items():
        console.print(f"  {key}: {value}")


@app.command("convert")
def convert(
    src: Annotated[Path, typer.Argument(help="DeepSeek-format Janus checkpoint directory (e.g. Janus-Pro-7B, Janus-FocusDiff-7B)")],
    dst: Annotated[Path, typer.Argument(help="transformers-format directory to write (replaced atomically)")],
) -> None:
    """Convert a DeepSeek-format Janus checkpoint into transformers format (safetensors)."""
    from focusdiff.stages.tools import convert as convert_checkpoint

    out = convert_checkpoint(src, dst)
    console.print(f"converted {src} -> {out}")


@app.command("pipeline")
def pipeline(
    project_dir: Annotated[Path, typer.Option(help="project checkout holding dvc.yaml and params.yaml")] = Path("."),
    push: Annotated[bool, typer.Option(help="push versioned outputs to the default DVC remote")] = True,
) -> None:
    """Run the whole pipeline as a Prefect flow (the embedded default needs no servers)."""
    import os

    # The ephemeral Prefect server otherwise phones home (this machine may be offline) and
    # logs a traceback when its telemetry write races the flow's writes to its sqlite file.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.pipeline import focusdiff_pipeline

    summary = focusdiff_pipeline(project_dir=str(project_dir), push=push)
    table = Table(title="focusdiff pipeline")
    table.add_column("what")
    table.add_column("value")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if summary.get("registered_model"):
        console.print(f"registry: model {summary['registered_model']}, champion = version {summary.get('champion')}; "
                      f"load it with mlflow.pyfunc.load_model('models:/{summary['registered_model']}@champion')")
    console.print(f"look: mlflow ui --backend-store-uri {summary['tracking_uri']} (runs, registry); "
                  "dvc metrics show; dvc plots show; outputs/eval/<benchmark>/report.html", highlight=False)


JudgeBackendOpt = Annotated[str, typer.Option(help="judge backend (known: exact, shapes, hf)")]
JudgeModelOpt = Annotated[
    Optional[str], typer.Option(help="checkpoint directory or hub id, for backends that load a model "
                                     "(hf; shapes: default models/shapes-judge)")
]


@judge_app.command("train")
def judge_train(
    params: ParamsOpt = Path("params.yaml"),
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-S", help="dotted.key=value override (full key, as dvc exp run -S: train.beta=0.05)")] = None,
) -> None:
    """Train the ShapesWorld reward judge; writes judge.out if it agrees with the exact checker on the test pairs."""
    from focusdiff.stages.judge import run_judge_stage

    result = run_judge_stage(_params(params, set_, example_block="judge"))
    m = result.metrics
    console.print(f"shapes judge: {m['judge.test.agreement']:.2%} agreement with the exact checker on "
                  f"{m['judge.test.items']:.0f} test items (AUROC {m['judge.test.auroc']:.4f}), trained in "
                  f"{m['judge.train_seconds']:.0f} s; wrote {result.out}")
    console.print(f"MLflow run: {result.mlflow_run_id}")


@judge_app.command("serve")
def judge_serve(
    backend: JudgeBackendOpt = "exact",
    model: JudgeModelOpt = None,
    host: Annotated[str, typer.Option(help="interface to bind; loopback unless you mean to expose it")] = "127.0.0.1",
    port: int = 8000,
    model_name: Annotated[Optional[str], typer.Option(help="model id clients send (default: focusdiff-<backend>)")] = None,
    # The defaults are server.DEFAULT_MAX_BODY_BYTES and DEFAULT_MAX_IMAGE_PIXELS, spelled out: importing the
    # server module here would load FastAPI and Pillow for every command.
    max_body_bytes: Annotated[int, typer.Option(
        min=1, help="largest request body accepted; larger ones get a 413 before they are read")] = 8 * 1024 * 1024,
    max_image_pixels: Annotated[int, typer.Option(
        min=1, help="largest image (width x height) accepted; checked from its header before decoding (400)")] = 4096 * 4096,
) -> None:
    """Serve a judge as an OpenAI-compatible chat-completions endpoint (P(yes) in the log-probs)."""
    from focusdiff.stages.tools import serve_judge

    serve_judge(backend, model, host=host, port=port, model_name=model_name or f"focusdiff-{backend}",
                max_body_bytes=max_body_bytes, max_image_pixels=max_image_pixels)


@judge_app.command("report")
def judge_report(
    backend: JudgeBackendOpt = "exact",
    model: JudgeModelOpt = None,
    pairs_per_category: Annotated[int, typer.Option(min=1, help="held-out ShapesWorld pairs per category")] = 50,
    seed: Annotated[Optional[int], typer.Option(help="pair sampler seed (default: focusdiff.judge.report.DEFAULT_SEED)")] = None,
    canvas: int = 32,
    data: Annotated[Optional[Path], typer.Option(help="calibrate on this dataset's pairs instead of sampled ones")] = None,
    split: Annotated[str, typer.Option(help="with --data: the split")] = "test",
    policy: Annotated[Optional[str], typer.Option(
        help="judge this policy's own samples (labelled by the exact checker) instead of renders")] = None,
) -> None:
    """Calibrate a judge on held-out ShapesWorld pairs: accuracy, AUROC, agreement with the exact checker."""
    from focusdiff.stages.judge_report import judge_report as calibrate_judge

    report, source = calibrate_judge(backend, model, pairs_per_category, seed, canvas, data, split, policy)
    title = f"judge {backend}{f' ({model})' if model else ''}: {source}"
    table = Table(title=title)
    table.add_column("category")
    for col in ("items", "accuracy", "AUROC", "agrees with exact"):
        table.add_column(col, justify="right")
    rows = [*((cat.replace("_", " "), c) for cat, c in report.by_category.items()), ("all", report.overall)]
    for name, c in rows:
        table.add_row(name, str(c.items), f"{c.accuracy:.1%}", "n/a" if c.auroc != c.auroc else f"{c.auroc:.3f}",
                      f"{c.agreement:.1%}")
    console.print(table)


def _print_counts(counts: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("category")
    splits = sorted({s for c in counts["by_category"].values() for s in c})
    for s in splits:
        table.add_column(s, justify="right")
    for cat, by in counts["by_category"].items():
        table.add_row(cat, *(str(by.get(s, 0)) for s in splits))
    table.add_row("unpaired prompts", *(str(counts["by_split"].get(s, {}).get("prompts", 0)) for s in splits))
    console.print(table)


def main() -> None:
    from focusdiff.progress import log_to_stderr

    log_to_stderr()  # progress lines when stderr is not a terminal (a redirected log, `dvc repro` in the pipeline)
    try:
        app()  # standalone: typer reports usage errors itself
    except TrainingPaused as exc:  # a bounded invocation, not a failure: the same command continues
        err_console.print(f"[bold yellow]paused:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EX_TEMPFAIL)
    except FocusdiffError as exc:
        # redact_urls: a message may quote a configured URL (a judge's base_url, a tracking URI) with its credentials.
        err_console.print(f"[bold red]error:[/] {redact_urls(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
