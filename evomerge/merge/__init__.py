"""Merging: pure tensor operators (methods/), their registry, recipes, and the recipe -> tensor plan."""
