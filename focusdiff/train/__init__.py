"""Pair-GRPO: groups, curriculum, advantages, loss, the training loop, checkpoints."""
