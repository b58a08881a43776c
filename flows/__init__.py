"""Prefect flows: orchestration only. Every task calls one library function."""
