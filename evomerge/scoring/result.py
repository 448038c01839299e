"""What scoring one task produces: every metric under every filter, and their per-item values.

Keys follow lm-eval's result dictionaries: ``"<metric>,<filter>"`` (``"acc,none"``,
``"exact_match,strict-match"``). A task without a ``filter_list`` has the single filter ``none``.
The *primary* metric and filter are the first of the task's ``metric_list`` and ``filter_list``;
an objective that names neither uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from evomerge.errors import EvomergeError


def result_key(metric: str, filter_name: str) -> str:
    return f"{metric},{filter_name}"


@dataclass(frozen=True)
class TaskScore:
    """One task's scores for one model (plain data: it travels from Ray workers and into run logs)."""

    task: str
    metric: str  # primary metric
    filter: str  # primary filter
    higher_is_better: Mapping[str, bool]  # metric -> direction, as the task declares it
    metrics: Mapping[str, float] = field(metadata={"nonfinite": True})  # "metric,filter" -> aggregated value
    # "metric,filter" -> one number per document, for the metrics whose per-document values are numbers
    per_item: Mapping[str, tuple[float, ...]] = field(metadata={"nonfinite": True})

    @property
    def value(self) -> float:
        """The primary metric under the primary filter."""
        return self.metrics[result_key(self.metric, self.filter)]

    def key(self, metric: str | None = None, filter_name: str | None = None) -> str:
        """The result key of ``metric`` under ``filter_name`` (the primary ones where None); a user error if absent."""
        key = result_key(metric or self.metric, filter_name or self.filter)
        if key not in self.metrics:
            known = ", ".join(sorted(self.metrics))
            raise EvomergeError(f"task '{self.task}' has no metric '{metric or self.metric}' under filter "
                                f"'{filter_name or self.filter}' (it has: {known})")
        return key
