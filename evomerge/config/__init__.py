"""Typed configuration: one schema mechanism (``schema``) and the search config's sections (``search``)."""

from evomerge.config.search import (
    BudgetConfig,
    ExecutionConfig,
    GenomeConfig,
    ObjectiveConfig,
    ScoringConfig,
    SearchConfig,
    SourcesConfig,
    StrategyConfig,
    TrackerConfig,
    load_config,
)

__all__ = [
    "BudgetConfig", "ExecutionConfig", "GenomeConfig", "ObjectiveConfig", "ScoringConfig", "SearchConfig",
    "SourcesConfig", "StrategyConfig", "TrackerConfig", "load_config",
]
