"""Scoring with lm-eval, built once and reused for every candidate.

``simple_evaluate`` rebuilds the model wrapper, the task objects and every request on each call
(DESIGN.md §6 measured it at 7× a bare forward pass). A Scorer does that work once; per candidate
only the weights of the wrapped model change (they are overwritten in place), and lm-eval's own
request methods, filters, ``process_results`` and aggregations still produce the metrics.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from evomerge.errors import EvomergeError
from evomerge.scoring.result import TaskScore, result_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def load_tasks(names: Sequence[str], task_path: str | Path | None = None) -> dict[str, Any]:
    """lm-eval task objects by name, from a local folder of task YAMLs (and lm-eval's own when no folder)."""
    import datasets
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    if task_path is not None and not Path(task_path).is_dir():
        raise EvomergeError(f"task folder not found: {task_path}")
    manager = TaskManager(include_path=str(task_path) if task_path else None, include_defaults=task_path is None)
    missing = [n for n in names if n not in manager.all_tasks]
    if missing:
        where = f"in {task_path}" if task_path else "among lm-eval's tasks"
        raise EvomergeError(f"unknown lm-eval task '{missing[0]}' {where}; check --tasks / --task-path")
    return dict(manager.load(list(names))["tasks"])


class Scorer:
    """Scores the current weights of ``model`` on lm-eval tasks (from ``load_tasks``); requests are built once."""

    def __init__(self, model: Any, tokenizer: Any, tasks: dict[str, Any], *, batch_size: int = 64):
        self.lm = _reusing_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        self.lm._max_length = self.lm.max_length  # the property re-walks the model config on every request
        self.tasks = tasks
        self.requests: dict[str, list[Any]] = defaultdict(list)
        for task in self.tasks.values():
            with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # a per-task bar with no off switch
                task.build_all_requests(rank=0, world_size=1)
            for instance in task.instances:
                self.requests[instance.request_type].append(instance)
        # Documents never change: list them once instead of re-reading the dataset per candidate.
        self.docs = {name: list(task.doc_iterator(rank=0, world_size=1)) for name, task in self.tasks.items()}

    def score(self) -> dict[str, TaskScore]:
        for reqtype, instances in self.requests.items():
            for instance in instances:
                instance.resps = []
                instance.filtered_resps = {}
            cloned = [inst for inst in instances for _ in range(inst.repeats)]
            for response, inst in zip(getattr(self.lm, reqtype)(cloned, disable_tqdm=True), cloned, strict=True):
                inst.resps.append(response)
        return {name: self._collect(name, task, self.docs[name]) for name, task in self.tasks.items()}

    @staticmethod
    def _collect(name: str, task: Any, docs: list[tuple[int, Any]]) -> TaskScore:
        """lm-eval's own filters, ``process_results`` and aggregations, under every filter of the task."""
        task.apply_filters()
        by_doc = defaultdict(list)
        for inst in task.instances:
            by_doc[inst.doc_id].append(inst)
        filters = list(task.instances[0].filtered_resps)
        raw: dict[str, list[Any]] = defaultdict(list)
        for doc_id, doc in docs:
            insts = sorted(by_doc[doc_id], key=lambda i: i.idx)
            for filter_name in filters:
                for metric, value in task.process_results(doc, [i.filtered_resps[filter_name] for i in insts]).items():
                    raw[result_key(metric, filter_name)].append(value)
        aggregations = task.aggregation()
        metrics = {key: float(aggregations[key.split(",")[0]](values)) for key, values in raw.items()}
        primary = next(m for m in aggregations if result_key(m, filters[0]) in raw)  # the first of the task's metric_list
        return TaskScore(
            task=name,
            metric=primary,
            filter=filters[0],
            higher_is_better={m: bool(task.higher_is_better().get(m, True)) for m in aggregations},
            metrics=metrics,
            per_item={key: tuple(float(v) for v in values) for key, values in raw.items() if all(_is_number(v) for v in values)},
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, complex)


@functools.cache
def _reusing_hflm() -> type:
    """HFLM that tokenizes each (context, continuation) pair once per worker, not once per candidate."""
    from lm_eval.models.huggingface import HFLM

    class ReusingHFLM(HFLM):
        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            pairs = self.__dict__.setdefault("_evomerge_pairs", {})
            if (context, continuation) not in pairs:
                pairs[(context, continuation)] = super()._encode_pair(context, continuation)
            return pairs[(context, continuation)]

    return ReusingHFLM
