"""Extraction of every layer's pooled sentence embeddings into the resumable safetensors cache."""
