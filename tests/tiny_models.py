"""Tiny random-initialised models of real architectures, for testing the loading and scoring
code that users run with real weights (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

from focusdiff.judge.base import question


def save_tiny_world(root: Path, pairs_per_category: dict[str, int], prompts: dict[str, int]) -> Path:
    """A small ShapesWorld dataset (`root/data`) and a tiny random Janus policy (`root/policy`,
    transformers format, 2 layers of 64) built on the ShapesWorld tokenizer; returns `root`."""
    import torch
    from transformers import JanusForConditionalGeneration

    from focusdiff.model.configs import VQTrainConfig
    from focusdiff.model.shapes_model import build_config, build_tokenizer
    from focusdiff.model.vq import vq_config
    from focusdiff.shapes.build import build_shapes_dataset
    from focusdiff.shapes.configs import ShapesDataConfig

    build_shapes_dataset(ShapesDataConfig(pairs_per_category=pairs_per_category, prompts=prompts), root / "data")
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = JanusForConditionalGeneration(build_config(tok, vq_config(VQTrainConfig()), hidden=64, layers=2))
    model.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    return root


def bpe_tokenizer(corpus: list[str], special: list[str], eos: str, pad: str, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained here on `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)


# --------------------------------------------------------------------------- a tiny VLM judge
# A LLaVA (CLIP vision tower + Qwen2 text model) of some 50k parameters, with a byte-level BPE
# tokenizer trained here so that yes/no appear in several spellings next to decoys. LLaVA rather
# than Qwen2-VL: in transformers 5 the Qwen2-VL/InternVL processors carry a video processor,
# which needs torchvision, which this project does not install.
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
YES_NO_CORPUS = ["yes", "Yes", "YES", "no", "No", "NO", "yes no Yes No YES NO", "yesterday nothing",
                 question("a red circle"), question("two blue squares on a black background")]
PLAIN_CORPUS = ["a red circle", "two blue squares", "the letter A"]


def llava_tokenizer(corpus: list[str]):
    return bpe_tokenizer(corpus, SPECIAL, eos="<|im_end|>", pad="<|endoftext|>")


def save_llava_processor(tokenizer, out: Path, chat_template: str | None = TEMPLATE) -> None:
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=4, vision_feature_select_strategy="default",
        chat_template=chat_template, num_additional_image_tokens=1,  # CLIP's CLS token
    ).save_pretrained(out)


def save_llava_model(tokenizer, out: Path, head_std: float = 2.0) -> None:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    config = LlavaConfig(
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=None,
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, image_size=16, patch_size=4, projection_dim=16,
        ),
        image_token_index=ids["<image>"], image_seq_length=16, vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    # Random init gives every token about the same logit; spread them so yes/no mass is not ~uniform.
    with torch.no_grad():
        model.lm_head.weight.normal_(0, head_std)
    model.save_pretrained(out)


def save_tiny_llava(out: Path, head_std: float = 2.0) -> Path:
    """The tiny LLaVA judge (model, processor and tokenizer) in `out`, for the `hf` backend;
    `head_std` spreads its output logits (small: yes/no probabilities near 0.5 that vary by image)."""
    tokenizer = llava_tokenizer(YES_NO_CORPUS)
    save_llava_model(tokenizer, out, head_std)
    save_llava_processor(tokenizer, out)
    return out


def save_tiny_mask2former(out: Path, num_labels: int = 80, image_size: int = 64) -> Path:
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    torch.manual_seed(0)
    backbone = SwinConfig(image_size=image_size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=backbone, num_labels=num_labels, hidden_dim=32, mask_feature_size=32,
                            feature_size=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            encoder_feedforward_dim=64, dim_feedforward=64, num_queries=10, common_stride=4)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(out)
    Mask2FormerImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def save_tiny_clip(out: Path, corpus: list[str]) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    tok = bpe_tokenizer(corpus, ["<|startoftext|>", "<|endoftext|>"], eos="<|endoftext|>", pad="<|endoftext|>")
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=len(tok), max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def save_tiny_blip_vqa(out: Path, corpus: list[str]) -> Path:
    import torch
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessor

    torch.manual_seed(0)
    tok = bpe_tokenizer(corpus + ["yes", "no"], ["[PAD]", "[DEC]", "[SEP]"], eos="[SEP]", pad="[PAD]")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("[PAD]", "[DEC]", "[SEP]")}
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         encoder_hidden_size=32, max_position_embeddings=64, pad_token_id=ids["[PAD]"],
                         bos_token_id=ids["[DEC]"], sep_token_id=ids["[SEP]"], eos_token_id=ids["[SEP]"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    BlipForQuestionAnswering(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def save_tiny_owlv2(out: Path, corpus: list[str]) -> Path:
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    torch.manual_seed(0)
    tok = bpe_tokenizer(corpus, ["<|startoftext|>", "<|endoftext|>", "!"], eos="<|endoftext|>", pad="!")
    cfg = Owlv2Config(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=len(tok), max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32)  # OWLv2's class head compares text projections with vision features
    Owlv2ForObjectDetection(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    Owlv2ImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
    return out
