"""Scoring models with lm-eval, requests built once per worker."""
