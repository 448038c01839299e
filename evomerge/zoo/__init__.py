"""The offline tiny model zoo: a character-level base, skill experts, their data and lm-eval tasks."""

from evomerge.zoo.build import SkillFiles, Zoo, build_zoo, load_zoo

__all__ = ["SkillFiles", "Zoo", "build_zoo", "load_zoo"]
