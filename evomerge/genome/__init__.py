"""The search space: genes, bounds, the unit-box encoding and genome -> recipe decoding."""
