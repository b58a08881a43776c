"""Paired data: the canonical dataset layout, importers and validation."""
