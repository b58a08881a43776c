"""The ShapesWorld policy's architecture: a word-level tokenizer and a tiny JanusConfig.

The tokenizer knows ShapesWorld's vocabulary plus Janus's special tokens (BOS, pad,
the chat markers, begin/end-of-image, the image placeholder), so prompts use the
real Janus-Pro generation format. The model is transformers'
`JanusForConditionalGeneration`, small: a 4-layer Llama with 256 hidden units, the
(unused for generation, but part of the architecture) understanding tower, and the
ShapesWorld VQ (8x8 image tokens per 32 px image).
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig, PreTrainedTokenizerFast

from focusdiff.shapes import grammar
from focusdiff.shapes.font import GLYPH_CHARS
from focusdiff.shapes.world import BACKGROUNDS, COLORS, SHAPES, SIZES

BOS, EOS, PAD, UNK = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<unk>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"
BOI, EOI, IMAGE = "<begin_of_image>", "<end_of_image>", "<image_placeholder>"
SPECIAL = [UNK, BOS, EOS, PAD, USER, ASSISTANT, BOI, EOI, IMAGE]


def shapes_vocabulary() -> list[str]:
    """Every word and mark the ShapesWorld grammar can produce, in a stable order."""
    words: set[str] = set()
    texts = [*grammar.PREFIXES, *grammar.GLYPH_TEMPLATES, *grammar.NUMBERS.values(), "and", "background", "on", "a", "an"]
    texts += [p for ps in grammar.RELATION_PHRASES.values() for p in ps]
    for text in texts:
        words.update(text.replace("{", " ").replace("}", " ").replace('"', " ").split())
    words -= {"kind", "c", "color"}  # template fields
    words.update(["letter", "digit", *COLORS, *BACKGROUNDS, *SIZES, *SHAPES, *(s + "s" for s in SHAPES), *GLYPH_CHARS])
    return sorted(words) + ['"', ":", ",", "."]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL + shapes_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
    )


def build_config(tokenizer: PreTrainedTokenizerFast, vq: JanusVQVAEConfig, hidden: int = 256, layers: int = 4) -> JanusConfig:
    vocab_size = -(-len(tokenizer) // 64) * 64  # rounded up for tidy matmuls
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_size = vq.num_patches * 2 ** (len(vq.channel_multiplier) - 1)
    vision = JanusVisionConfig(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=image_size // vq.num_patches,
        num_image_tokens=vq.num_patches**2,
        projection_dim=hidden,
        mlp_ratio=2.0,
    )
    vq_dict = vq.to_dict()
    vq_dict.update(projection_dim=hidden, image_token_embed_dim=hidden)
    return JanusConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        vq_config=vq_dict,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
    )
