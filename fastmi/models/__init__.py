"""Models: loading (hub, local, GGUF, demo aliases), their shapes, placement, forward hooks and unembedding."""
