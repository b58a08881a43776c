"""Real-image backends for GenEval: Mask2Former instance segmentation and a CLIP colour
classifier, in transformers (the official code uses mmdetection and open_clip).

* `Mask2FormerDetector`: `facebook/mask2former-swin-small-coco-instance` by default. The
  post-processing keeps everything above a near-zero score (GenEval's 0.3/0.9 thresholds
  are applied by the shared clause logic); boxes come from the masks; labels map to
  GenEval's class names by COCO index (transformers' names differ for a few classes).
* `ClipColorClassifier`: `openai/clip-vit-large-patch14`; each object is pasted by its mask
  on a #999999 background, cropped to its box and classified zero-shot over GenEval's ten
  colours with three templates (text embeddings averaged), as GenEval does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from focusdiff.errors import ConfigError
from focusdiff.eval.geneval import Detection

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
CROP_BACKGROUND = (0x99, 0x99, 0x99)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Mask2FormerDetector:
    name = "mask2former"

    def __init__(self, model: str | Path, class_names: list[str]):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        try:
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(model).to(_device()).eval()
            self.processor = AutoImageProcessor.from_pretrained(model)
        except OSError as exc:
            raise ConfigError(f"cannot load the Mask2Former detector from {model}: {exc}") from None
        if self.model.config.num_labels != len(class_names):
            raise ConfigError(f"{model} predicts {self.model.config.num_labels} classes but GenEval's object list has "
                              f"{len(class_names)}: labels map by COCO index, so the detector must be a COCO one")
        self.class_names = class_names
        self.name = f"mask2former:{model}"

    @torch.no_grad()
    def detect(self, image: np.ndarray, classes: list[str]) -> list[Detection]:
        inputs = self.processor(images=[image], return_tensors="pt").to(self.model.device)
        outputs = self.model(pixel_values=inputs["pixel_values"])
        (result,) = self.processor.post_process_instance_segmentation(
            outputs, threshold=1e-6, target_sizes=[image.shape[:2]], return_binary_maps=True)
        if not result["segments_info"]:
            return []
        masks = result["segmentation"].bool().cpu().numpy()
        out = []
        for info, mask in zip(result["segments_info"], masks):
            cls = self.class_names[info["label_id"]]
            if cls not in classes or not mask.any():
                continue
            rows, cols = np.nonzero(mask)
            box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
            out.append(Detection(cls, float(info["score"]), box, mask))
        return out


class ClipColorClassifier:
    name = "clip"

    def __init__(self, model: str | Path):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(model).to(_device()).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.processor = AutoImageProcessor.from_pretrained(model)
        except OSError as exc:
            raise ConfigError(f"cannot load the CLIP colour classifier from {model}: {exc}") from None
        self._classifiers: dict[str, torch.Tensor] = {}
        self.name = f"clip:{model}"

    @torch.no_grad()
    def classifier(self, cls: str) -> torch.Tensor:
        """(colours, dim): per colour, the normalised mean of its templates' normalised embeddings."""
        if cls not in self._classifiers:
            rows = []
            for c in COLORS:
                text = self.tokenizer([t.format(c=c, cls=cls) for t in TEMPLATES], padding=True, return_tensors="pt")
                emb = self.model.get_text_features(**text.to(self.model.device)).pooler_output
                emb = emb / emb.norm(dim=-1, keepdim=True)
                mean = emb.mean(0)
                rows.append(mean / mean.norm())
            self._classifiers[cls] = torch.stack(rows)
        return self._classifiers[cls]

    @torch.no_grad()
    def colors(self, image: np.ndarray, detections: list[Detection], cls: str) -> list[str]:
        if not detections:
            return []
        original = Image.fromarray(image).convert("RGB")
        blank = Image.new("RGB", original.size, CROP_BACKGROUND)
        crops = []
        for d in detections:
            pasted = original if d.mask is None else Image.composite(original, blank, Image.fromarray(d.mask))
            crops.append(pasted.crop(tuple(int(round(v)) for v in d.box)))
        pixels = self.processor(images=crops, return_tensors="pt")["pixel_values"].to(self.model.device)
        feats = self.model.get_image_features(pixel_values=pixels).pooler_output
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = 100.0 * feats @ self.classifier(cls).T
        return [COLORS[i] for i in logits.argmax(-1).tolist()]
