"""Merge recipes: the data (``recipe``), evomerge's YAML form (``evomerge_yaml``), mergekit's (``mergekit_yaml``);
layer stacks (``stack``) in both forms."""

from __future__ import annotations

from pathlib import Path

from evomerge.config.search import read_yaml_mapping
from evomerge.recipes.evomerge_yaml import parse_recipe, recipe_data, to_yaml
from evomerge.recipes.mergekit_yaml import parse_mergekit
from evomerge.recipes.recipe import GroupSpec, Recipe
from evomerge.recipes.stack import LayerStack, parse_stack

__all__ = ["GroupSpec", "LayerStack", "Recipe", "load_recipe", "parse_recipe", "recipe_data", "to_yaml"]


def load_recipe(path: str | Path) -> Recipe | LayerStack:
    """Read an evomerge or mergekit YAML recipe (a file with ``merge_method:``) and validate it; a recipe with
    ``slices`` in evomerge's form is a layer stack."""
    path = Path(path)
    data = read_yaml_mapping(path, what="recipe")
    root = path.parent.resolve()
    recipe: Recipe | LayerStack
    if "merge_method" in data:
        recipe = parse_mergekit(data, root)
    else:
        recipe = parse_stack(data, root) if "slices" in data else parse_recipe(data, root)
    recipe.validate()
    return recipe
