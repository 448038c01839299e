"""What scoring one task produces: every metric under every filter, and their per-item values.

Keys follow lm-eval's result dictionaries: ``"<metric>,<filter>"`` (``"acc,none"``,
``"exact_match,strict-match"``). A task without a ``filter_list`` has the single filter ``none``.
The *primary* metric and filter are the first of the task's ``metric_list`` and ``filter_list``;
an objective that names neither uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from evomerge.errors import EvomergeError


def result_key(metric: str, filter_name: str) -> str:
    return f"{metric},{filter_name}"


@dataclass(frozen=True)
class TaskScore:
    """One task's scores for one model; plain data with an exact JSON round trip."""

    task: str
    metric: str  # primary metric
    filter: str  # primary filter
    higher_is_better: Mapping[str, bool]  # metric -> direction, as the task declares it
    metrics: Mapping[str, float]  # "metric,filter" -> aggregated value
    per_item: Mapping[str, tuple[float, ...]]  # "metric,filter" -> one number per document, where the metric has one

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

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric, "filter": self.filter,
                "higher_is_better": dict(self.higher_is_better), "metrics": dict(self.metrics),
                "per_item": {k: list(v) for k, v in self.per_item.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TaskScore":
        return cls(task=data["task"], metric=data["metric"], filter=data["filter"],
                   higher_is_better=dict(data["higher_is_better"]), metrics=dict(data["metrics"]),
                   per_item={k: tuple(v) for k, v in data["per_item"].items()})
