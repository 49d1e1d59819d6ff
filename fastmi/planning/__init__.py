"""What a run will cost and whether it fits, from a model's config and the corpus alone."""
