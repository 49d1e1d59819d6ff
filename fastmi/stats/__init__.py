"""From probe scores to statements: the bounds, held-out scores, paired comparisons and the paper's claims."""
