"""Evaluation: perplexity (the papers' protocol), zero-shot accuracy (lm-eval), efficiency."""
