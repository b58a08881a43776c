"""Config of the `bootstrap_vq` stage (torch-free, so params.yaml loads fast). A file of
its own: the stage's DVC dependencies are exactly the code that trains the VQ."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class VQTrainConfig(BaseModel):
    """The ShapesWorld VQ tokenizer (focusdiff/model/vq.py) and how it is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    init: Path | None = Field(None, description="start from this trained VQ (a fine-tune: its weights and "
                              "codebook) instead of a random initialisation; its architecture must match")
    canvas: int = Field(32, ge=32, description="image side in pixels (latents are canvas/4)")
    codebook_size: int = Field(1024, ge=16, description="number of image tokens")
    embed_dim: int = Field(8, ge=2, description="code vector size (cosine codebook)")
    base_channels: int = Field(32, ge=32, multiple_of=32, description="GroupNorm needs multiples of 32")
    latent_channels: int = Field(64, ge=32, multiple_of=32)
    num_res_blocks: int = Field(1, ge=1)
    steps: int = Field(6000, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(200, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    beta: float = Field(0.25, ge=0, description="commitment weight")
    foreground_weight: float = Field(8.0, ge=0, description="extra loss weight on object pixels")
    restart_every: int = Field(100, ge=0, description="steps between dead-code restarts (0: none, e.g. in a "
                               "fine-tune, where a restarted code lands among the used ones)")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    edit_weight: float = Field(0.0, ge=0, description="edit-consistency loss: on scene pairs that differ in one "
                                                      "object, the squared change of the normalized latent in the "
                                                      "blocks the edit does not touch (0: off)")
    stability_weight: float = Field(0.0, ge=0, description="code-stability loss: on scene pairs that differ in one "
                                    "object, the cross-entropy between the two images' soft code assignments in the "
                                    "blocks the edit does not touch (0: off); makes the tokenizer local")
    stability_temperature: float = Field(0.01, gt=0, description="softmax temperature of the soft code assignment "
                                         "(cosine similarity / temperature)")
    seed: int = Field(0, ge=0)
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")
    eval_every: int = Field(1000, ge=1)
    eval_pairs_per_category: int = Field(50, ge=1)
    checkpoint_every: int = Field(500, ge=1, description="steps between resumable training checkpoints (beside out)")
    min_accuracy: float = Field(0.97, ge=0, le=1, description="gate: checker clause accuracy on reconstructions")
    out: Path = Field(Path("focusdiff/model/weights/shapes-vq"), description="where the trained VQ is written")
