"""The text side: corpora, bag-of-tokens targets, the alphabet of T and the train/validation/held-out split."""
