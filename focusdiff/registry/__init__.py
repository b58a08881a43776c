"""The model registry: registration of trained policies, evaluation evidence, the promotion gate."""
