"""Janus policies: loading and converting checkpoints, prompting, the CFG sampler,
VQ encode/decode, and the ShapesWorld bootstrap (VQ + SFT) with its shipped weights."""
