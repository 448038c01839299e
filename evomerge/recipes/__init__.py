"""Merge recipes: the data (``recipe``), evomerge's YAML form (``evomerge_yaml``), mergekit's (``mergekit_yaml``)."""

from __future__ import annotations

from pathlib import Path

from evomerge.config.search import read_yaml_mapping
from evomerge.recipes.evomerge_yaml import parse_recipe, recipe_data, to_yaml
from evomerge.recipes.mergekit_yaml import parse_mergekit
from evomerge.recipes.recipe import GroupSpec, Recipe

__all__ = ["GroupSpec", "Recipe", "load_recipe", "parse_recipe", "recipe_data", "to_yaml"]


def load_recipe(path: str | Path) -> Recipe:
    """Read an evomerge or mergekit YAML recipe (a file with ``merge_method:``) and validate it."""
    path = Path(path)
    data = read_yaml_mapping(path, what="recipe")
    root = path.parent.resolve()
    recipe = parse_mergekit(data, root) if "merge_method" in data else parse_recipe(data, root)
    recipe.validate()
    return recipe
