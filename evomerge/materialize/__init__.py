"""Materialization: a recipe made into tensors from the loaded sources.

``plan``: the recipe resolved against the sources' tensor names (each tensor's method and
parameters); ``fused``: the per-worker fast path (source-only work once, one pass per candidate).
The merge math itself lives in ``evomerge.merge`` and never reads a file.
"""
