"""Measuring a run: loss, perplexity and bits per byte (loss.py); an LLM judge of answers (judge.py)."""
