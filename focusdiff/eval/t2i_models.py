"""T2I-CompBench's real-image scorers in transformers, plus spaCy noun chunks.

* `BlipVQA`: BLIP-VQA (`Salesforce/blip-vqa-capfilt-large`); P(yes)/(P(yes)+P(no)) from the
  answer decoder's first-token distribution (case variants summed where the vocabulary has them).
* `OwlDetector`: OWLv2, an open-vocabulary detector standing in for UniDet (not in
  transformers): a named deviation. OWLv2 pads images to a square, so boxes are scaled
  to the padded side.
* `ClipSimilarity`: CLIPScore as T2I-CompBench computes it, the raw cosine of CLIP B/32's
  image and text embeddings.
* `SpacyParser`: `en_core_web_sm` noun chunks and nouns, and the complex mode's nouns around
  the preposition and adjective-free prompt; a missing model is an error that says how to
  install it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from focusdiff.errors import ConfigError
from focusdiff.eval.configs import OFFICIAL_VQA_IMAGE_SIZE
from focusdiff.eval.geneval import Detection
from focusdiff.eval.t2i_compbench import T2IScorers


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(what: str, model: str | Path, loader):
    try:
        return loader(model)
    except OSError as exc:
        raise ConfigError(f"cannot load the {what} from {model}: {exc}") from None


class SpacyParser:
    def __init__(self, model: str = "en_core_web_sm", nlp=None):
        """`nlp`: an already built spaCy pipeline (tests build a small one); else `model` is loaded."""
        if nlp is None:
            import spacy

            try:
                nlp = spacy.load(model)
            except OSError:
                raise ConfigError(f"the spaCy model {model!r} is not installed; install it with "
                                  f"`python -m spacy download {model}` (T2I-CompBench's noun chunks need it)") from None
        # a prompt is read for every one of its 10 images, and up to three ways each (chunks,
        # nouns, complex mode): parse it once
        self._doc = functools.lru_cache(maxsize=4096)(nlp)

    def chunks(self, prompt: str) -> list[str]:
        return [c.text for c in self._doc(prompt).noun_chunks]

    def nouns(self, prompt: str) -> list[str]:
        return [t.text for t in self._doc(prompt) if t.pos_ == "NOUN"]

    def objects_around(self, prompt: str, start: int, end: int) -> list[str]:
        doc = self._doc(prompt)
        before = [t.text for t in doc if t.idx + len(t.text) <= start and t.pos_ in ("NOUN", "PROPN")]
        after = [t.text for t in doc if t.idx >= end and t.pos_ == "NOUN"]
        return before[-1:] + after[:1]

    def without_adjectives(self, prompt: str) -> str:
        return " ".join(t.text for t in self._doc(prompt) if t.pos_ != "ADJ")


class BlipVQA:
    def __init__(self, model: str | Path, image_size: int = OFFICIAL_VQA_IMAGE_SIZE):
        """`image_size`: the side images are resized to; the official runs BLIP at 480 px, a
        size the checkpoint was not trained at, so its position embeddings are interpolated
        (as BLIP's own loader interpolates them)."""
        self.image_size = image_size
        from transformers import AutoImageProcessor, AutoTokenizer, BlipForQuestionAnswering

        self.model = _load("BLIP-VQA model", model, BlipForQuestionAnswering.from_pretrained).to(_device()).eval()
        self.tokenizer = _load("BLIP-VQA tokenizer", model, AutoTokenizer.from_pretrained)
        self.processor = _load("BLIP-VQA image processor", model, AutoImageProcessor.from_pretrained)
        vocab = self.tokenizer.get_vocab()
        self.yes = [vocab[w] for w in ("yes", "Yes", "YES") if w in vocab]
        self.no = [vocab[w] for w in ("no", "No", "NO") if w in vocab]
        if not self.yes or not self.no:
            raise ConfigError(f"{model}: the tokenizer has no single 'yes'/'no' token "
                              f"(yes: {bool(self.yes)}, no: {bool(self.no)})")
        self.name = f"blip-vqa:{model}"

    @torch.no_grad()
    def yes_probability(self, image: np.ndarray, question: str) -> float:
        m = self.model
        pixels = self.processor(images=[Image.fromarray(image).convert("RGB")], return_tensors="pt",
                                size={"height": self.image_size, "width": self.image_size})["pixel_values"]
        text = self.tokenizer([question], return_tensors="pt")
        image_embeds = m.vision_model(pixel_values=pixels.to(m.device), interpolate_pos_encoding=True)[0]
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=m.device)
        q = m.text_encoder(input_ids=text["input_ids"].to(m.device), attention_mask=text["attention_mask"].to(m.device),
                           encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask, return_dict=False)[0]
        q_mask = torch.ones(q.shape[:-1], dtype=torch.long, device=m.device)
        start = torch.full((1, 1), m.decoder_start_token_id, device=m.device)
        logits = m.text_decoder(input_ids=start, encoder_hidden_states=q, encoder_attention_mask=q_mask).logits[:, -1]
        probs = logits.float().softmax(-1)[0]
        p_yes, p_no = float(probs[self.yes].sum()), float(probs[self.no].sum())
        if p_yes + p_no <= 0:
            raise ValueError(f"BLIP-VQA gave yes and no zero probability for {question!r}")
        return p_yes / (p_yes + p_no)


class OwlDetector:
    def __init__(self, model: str | Path):
        from transformers import AutoImageProcessor, AutoTokenizer, Owlv2ForObjectDetection

        self.model = _load("OWLv2 detector", model, Owlv2ForObjectDetection.from_pretrained).to(_device()).eval()
        self.tokenizer = _load("OWLv2 tokenizer", model, AutoTokenizer.from_pretrained)
        self.processor = _load("OWLv2 image processor", model, AutoImageProcessor.from_pretrained)
        self.name = f"owlv2:{model}"

    @torch.no_grad()
    def detect(self, image: np.ndarray, names: list[str]) -> list[Detection]:
        queries = [f"a photo of a {n}" for n in names]
        text = self.tokenizer(queries, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        pixels = self.processor(images=[Image.fromarray(image).convert("RGB")], return_tensors="pt")["pixel_values"]
        out = self.model(input_ids=text["input_ids"].to(self.model.device),
                         attention_mask=text["attention_mask"].to(self.model.device), pixel_values=pixels.to(self.model.device))
        side = max(image.shape[:2])  # OWLv2 pads to a square: boxes are relative to it
        (result,) = self.processor.post_process_object_detection(out, threshold=0.0, target_sizes=[(side, side)])
        return [Detection(names[int(label)], float(score), tuple(float(v) for v in box))
                for score, label, box in zip(result["scores"], result["labels"], result["boxes"])]


class ClipSimilarity:
    def __init__(self, model: str | Path):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.model = _load("CLIP model", model, CLIPModel.from_pretrained).to(_device()).eval()
        self.tokenizer = _load("CLIP tokenizer", model, AutoTokenizer.from_pretrained)
        self.processor = _load("CLIP image processor", model, AutoImageProcessor.from_pretrained)
        self.name = f"clip:{model}"

    @torch.no_grad()
    def similarity(self, image: np.ndarray, text: str) -> float:
        pixels = self.processor(images=[Image.fromarray(image).convert("RGB")], return_tensors="pt")["pixel_values"]
        tokens = self.tokenizer([text], padding=True, truncation=True, max_length=77, return_tensors="pt")
        img = self.model.get_image_features(pixel_values=pixels.to(self.model.device)).pooler_output
        txt = self.model.get_text_features(**tokens.to(self.model.device)).pooler_output
        return float(torch.nn.functional.cosine_similarity(img, txt).item())


def transformers_scorers(cfg) -> T2IScorers:
    return T2IScorers(SpacyParser(cfg.spacy_model), BlipVQA(cfg.vqa_model, cfg.vqa_image_size), OwlDetector(cfg.detector_model),
                      ClipSimilarity(cfg.clip_model))
