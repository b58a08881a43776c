"""Judges: "does this image match the description?" as a probability, from any backend."""
