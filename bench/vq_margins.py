"""Why a VQ's codes flip under a one-object edit: background blocks, latent shift, code margins.

For the color, appearance and text pairs of the VQ stage's held-out quality pairs, counts the
pixel blocks that change code among (a) blocks that are pure background in both scenes
(identical pixels), (b) other untouched blocks, (c) touched blocks; and prints the median
movement of a background block's normalised latent between the two scenes against the median
cosine margin between its nearest and second-nearest code. With `--kmeans 256,64`, also the
locality and reconstruction accuracy when the codebook is replaced by that many spherical
k-means centres of the latents (no retraining): whether fewer codes alone make it local.

    python bench/vq_margins.py focusdiff/model/weights/shapes-vq [--kmeans 256,128,64,32]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from transformers import JanusVQVAE

from focusdiff.model.vq import (LOCAL_EDITS, SceneStream, _encode_normalized, block_any, quality_pairs, reconstruct,
                                to_pixels, tokenizer_locality, touched_blocks)
from focusdiff.model.vq_config import VQTrainConfig
from focusdiff.shapes.accuracy import clause_accuracy
from focusdiff.shapes.render import render


def flips(vq: JanusVQVAE, pairs) -> None:
    codebook = vq.quantize.embedding.weight.data
    counts = {"background": [0, 0], "other untouched": [0, 0], "touched": [0, 0]}
    shift, margin = [], []
    with torch.no_grad():
        for pair in pairs:
            a, b = render(pair.scene1), render(pair.scene2)
            z = _encode_normalized(vq, to_pixels(np.stack([a, b])))
            n = z.shape[0] // 2
            side = int(round(n**0.5))
            z = z.view(2, n, -1)
            sims = z @ codebook.T
            tokens = sims.argmax(-1)
            top2 = sims.topk(2, -1).values
            touched = touched_blocks(a, b, side)
            # a background block: every pixel of both images is the background colour
            background = ~block_any((a != a[0, 0]).any(-1), side) & ~block_any((b != b[0, 0]).any(-1), side)
            flipped = (tokens[0] != tokens[1]).numpy()
            for k in range(n):
                kind = "touched" if touched[k] else "background" if background[k] else "other untouched"
                counts[kind][0] += int(flipped[k])
                counts[kind][1] += 1
                if kind == "background":
                    shift.append(float((z[0, k] - z[1, k]).norm()))
                    margin.append(float(top2[0, k, 0] - top2[0, k, 1]))
    for kind, (changed, total) in counts.items():
        print(f"{kind:>16} blocks: {changed} of {total} change code ({changed / max(total, 1):.1%})")
    print(f"background latent movement (median L2 of the normalised latent): {np.median(shift):.4f}")
    print(f"background code margin (median cosine, nearest minus second-nearest): {np.median(margin):.4f}")


def kmeans_codebooks(vq: JanusVQVAE, pairs, sizes: list[int]) -> None:
    torch.manual_seed(0)
    stream = SceneStream(vq.config.num_patches * 4, seed=123)
    with torch.no_grad():
        z = torch.cat([_encode_normalized(vq, to_pixels(stream.batch(256))) for _ in range(8)])
    for k in sizes:
        centres = z[torch.randperm(len(z))[:k]].clone()
        for _ in range(30):
            assign = (z @ centres.T).argmax(-1)
            for c in range(k):
                members = z[assign == c]
                if len(members):
                    centres[c] = F.normalize(members.mean(0), dim=0)
        vq.quantize.embedding = torch.nn.Embedding(k, centres.shape[1])
        vq.quantize.embedding.weight.data.copy_(centres)
        vq.quantize.num_embeddings = k
        locality = tokenizer_locality(vq, pairs)
        accuracy = clause_accuracy("kmeans", pairs, lambda batch: reconstruct(vq, batch)).accuracy
        top2 = (z @ centres.T).topk(2, -1).values
        print(f"{k:>5} k-means codes: {locality.ratio():.2f} tokens per block touched, clause accuracy {accuracy:.1%}, "
              f"median margin {float((top2[:, 0] - top2[:, 1]).median()):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vq", help="a trained JanusVQVAE directory")
    parser.add_argument("--kmeans", default="", help="comma-separated codebook sizes to try (no retraining)")
    args = parser.parse_args()
    vq = JanusVQVAE.from_pretrained(args.vq).eval()
    pairs = quality_pairs(VQTrainConfig())
    print(f"{args.vq}: {tokenizer_locality(vq, pairs).ratio():.2f} tokens per block touched")
    flips(vq, [p for p in pairs if p.category in LOCAL_EDITS])
    if args.kmeans:
        kmeans_codebooks(vq, pairs, [int(k) for k in args.kmeans.split(",")])


if __name__ == "__main__":
    main()
