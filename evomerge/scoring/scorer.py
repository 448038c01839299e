"""Scoring with lm-eval, built once and reused for every candidate.

``simple_evaluate`` rebuilds the model wrapper, the task objects and every request on each call
(docs/DESIGN.md, "Scoring": about 7× a bare forward pass). A Scorer does that work once; per candidate
only the weights of the wrapped model change (they are overwritten in place). ``FastHFLM`` answers
the requests from plans built on the first call (docs/SCORING.md), and lm-eval's own filters,
``process_results`` and aggregations still produce the metrics.

Prompt options (few-shot, chat template, multi-turn few-shot, system instruction) reach the tasks
exactly as ``simple_evaluate`` passes them, so a score here is the score lm-eval reports.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.config.search import ScoringConfig
from evomerge.env import set_offline_env
from evomerge.errors import EvomergeError
from evomerge.scoring.partial import LOG_LIKELIHOOD_POOL, pool_of
from evomerge.scoring.result import TaskScore, result_key

set_offline_env()


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


def count_items(names: Sequence[str], task_path: str | Path | None = None) -> dict[str, int]:
    """Each task's number of documents (the items a Scorer scores), in the order of ``names``."""
    tasks = load_tasks(names, task_path)
    return {n: sum(1 for _ in tasks[n].doc_iterator(rank=0, world_size=1)) for n in names}


class Scorer:
    """Scores the current weights of ``model`` on lm-eval tasks (from ``load_tasks``); requests are built once.

    The keyword options are ``simple_evaluate``'s: ``num_fewshot`` overrides each task's own
    (except a task that fixes 0), few-shot examples are drawn with ``fewshot_seed``, and the chat
    template, multi-turn few-shot and system instruction shape the prompts as lm-eval shapes them.
    """

    def __init__(self, model: Any, tokenizer: Any, tasks: dict[str, Any], *, batch_size: int = ScoringConfig.batch_size,
                 num_fewshot: int | None = None, fewshot_seed: int = ScoringConfig.fewshot_seed,
                 apply_chat_template: bool = False, fewshot_as_multiturn: bool = False,
                 system_instruction: str | None = None):
        from evomerge.scoring.fastlm import FastHFLM

        check_prompt_options(tokenizer, num_fewshot, apply_chat_template, fewshot_as_multiturn)
        self.lm = FastHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        self.tasks = tasks
        self.requests: dict[str, list[Any]] = defaultdict(list)
        for task in self.tasks.values():
            _set_fewshot(task, num_fewshot, fewshot_seed)
            _keep_document_fields(task)
            with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # a per-task bar with no off switch
                task.build_all_requests(
                    rank=0, world_size=1, system_instruction=system_instruction,
                    apply_chat_template=apply_chat_template, fewshot_as_multiturn=fewshot_as_multiturn,
                    chat_template=self.lm.apply_chat_template if apply_chat_template else None,
                    tokenizer_name=self.lm.tokenizer_name if apply_chat_template else "",
                )
            for instance in task.instances:
                self.requests[instance.request_type].append(instance)
        # Documents never change: list them once instead of re-reading the dataset per candidate.
        self.docs = {name: list(task.doc_iterator(rank=0, world_size=1)) for name, task in self.tasks.items()}
        self.doc_tokens: dict[tuple[str, int], int] = defaultdict(int)  # (task, document id) -> its requests' tokens
        for instances in self.requests.values():
            for instance in instances:
                self.doc_tokens[(instance.task_name, instance.doc_id)] += (instance.repeats
                                                                           * request_tokens(self.lm, instance))

    def tokens(self, items: Mapping[str, Sequence[int]] | None = None) -> int:
        """Tokens of the requests ``score(items)`` sends the model (every document's when None): the cost figure
        status and reports count (the prompt and answer of each request; stems shared between requests and the
        tokens a generation produces are not counted)."""
        if items is None:
            return sum(self.doc_tokens[(name, doc_id)] for name in self.tasks for doc_id, _ in self.docs[name])
        return sum(self.doc_tokens[(name, self.docs[name][p][0])] for name, ps in items.items() for p in ps)

    def score(self, items: Mapping[str, Sequence[int]] | None = None) -> dict[str, TaskScore]:
        """Every task on all its documents; or, with ``items`` (task -> positions in its document list), only
        those documents, in that order, and only the metrics a subset estimates (``partial.POOLED_AGGREGATIONS``).
        A subset's requests get their own plan, built on its first call, so a chunk costs its own forwards."""
        chosen = None if items is None else {(name, self.docs[name][p][0]) for name, ps in items.items() for p in ps}
        for reqtype, all_instances in self.requests.items():
            instances = all_instances if chosen is None else [i for i in all_instances
                                                              if (i.task_name, i.doc_id) in chosen]
            for instance in instances:
                instance.resps = []
                instance.filtered_resps = {}
            cloned = [inst for inst in instances for _ in range(inst.repeats)]
            if not cloned:
                continue
            for response, inst in zip(getattr(self.lm, reqtype)(cloned, disable_tqdm=True), cloned, strict=True):
                inst.resps.append(response)
        if items is None:
            return {name: self._collect(name, task, self.docs[name]) for name, task in self.tasks.items()}
        return {name: self._collect(name, task, [self.docs[name][p] for p in items[name]], pooled_only=True)
                for name, task in self.tasks.items() if items.get(name)}

    def table(self, scores: Mapping[str, TaskScore]) -> str:
        """lm-eval's results table (markdown): a row per task, filter and metric, with n-shot and direction."""
        from lm_eval.utils import make_table

        return make_table({
            "results": {name: {"alias": name, **s.metrics} for name, s in scores.items()},
            "versions": {name: self.tasks[name].VERSION for name in scores},
            "n-shot": {name: self.tasks[name].get_config("num_fewshot") or 0 for name in scores},
            "higher_is_better": {name: dict(s.higher_is_better) for name, s in scores.items()},
        })

    @staticmethod
    def _collect(name: str, task: Any, docs: list[tuple[int, Any]], pooled_only: bool = False) -> TaskScore:
        """lm-eval's own filters, ``process_results`` and aggregations, under every filter of the task, on ``docs``."""
        from lm_eval.api.metrics import mean

        ids = {doc_id for doc_id, _ in docs}
        instances = [inst for inst in task.instances if inst.doc_id in ids]
        for ensemble in task._filters:  # Task.apply_filters, on these documents' instances only
            ensemble.apply(instances)
        by_doc = defaultdict(list)
        for inst in instances:
            by_doc[inst.doc_id].append(inst)
        filters = list(instances[0].filtered_resps)
        raw: dict[str, list[Any]] = defaultdict(list)
        for doc_id, doc in docs:
            insts = sorted(by_doc[doc_id], key=lambda i: i.idx)
            for filter_name in filters:
                for metric, value in task.process_results(doc, [i.filtered_resps[filter_name] for i in insts]).items():
                    raw[result_key(metric, filter_name)].append(value)
        aggregations = task.aggregation()
        # the first of the task's metric_list
        primary = next(m for m in aggregations if result_key(m, filters[0]) in raw)
        per_item = {key: tuple(float(v) for v in values) for key, values in raw.items()
                    if all(isinstance(v, numbers.Real) for v in values)}
        if pooled_only:
            raw = {key: values for key, values in raw.items() if key in per_item and _pools(key, aggregations)}
        # lm-eval aggregates a metric it has no aggregation for with the mean
        metrics = {key: float(aggregations.get(key.split(",")[0], mean)(values)) for key, values in raw.items()}
        return TaskScore(
            task=name,
            metric=primary,
            filter=filters[0],
            higher_is_better={m: bool(task.higher_is_better().get(m, True)) for m in aggregations},
            metrics=metrics,
            per_item={key: values for key, values in per_item.items() if key in metrics},
        )


def request_tokens(lm: Any, instance: Any) -> int:
    """Tokens of one request as the model reads it: context and continuation of a log-likelihood (as
    ``TemplateLM.loglikelihood`` encodes them), the text of a rolling log-likelihood, a generation's prompt."""
    if instance.request_type == "loglikelihood":
        context, continuation = instance.args
        if not context:
            return 1 + len(lm.tok_encode(continuation))  # lm-eval puts the prefix token before an empty context
        return sum(len(part) for part in lm._encode_pair(context, continuation))
    return len(lm.tok_encode(instance.args[0]))


def _pools(key: str, aggregations: Mapping[str, Any]) -> bool:
    """Whether lm-eval aggregates this metric as ``partial.pooled`` does (so a subset of items estimates it)."""
    from lm_eval.api import metrics

    metric = key.split(",")[0]
    expected = metrics.perplexity if pool_of(metric) == LOG_LIKELIHOOD_POOL else metrics.mean
    return aggregations.get(metric, metrics.mean) is expected


def check_prompt_options(tokenizer: Any, num_fewshot: int | None, apply_chat_template: bool,
                         fewshot_as_multiturn: bool) -> None:
    """The prompt options' user mistakes, as lm-eval's own command line refuses them."""
    if num_fewshot is not None and num_fewshot < 0:
        raise EvomergeError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if fewshot_as_multiturn and not apply_chat_template:
        raise EvomergeError("fewshot_as_multiturn needs apply_chat_template: few-shot turns exist only in a chat")
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise EvomergeError("apply_chat_template: this model's tokenizer has no chat template (give it one, or leave "
                            "the option off)")


def _keep_document_fields(task: Any) -> None:
    """Render each document's text, target and choices once: documents never change, and lm-eval
    compiles the field's Jinja template on every call (per document, per filter, per candidate)."""
    for field in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        setattr(task, field, _per_document(getattr(task, field)))


def _per_document(render: Any) -> Any:
    kept: dict[int, tuple[Any, Any]] = {}  # id(doc) -> (doc, value); holding the doc keeps its id its own

    def field(doc: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:  # a few-shot config's own template: rendered as lm-eval renders it
            return render(doc, *args, **kwargs)
        if id(doc) not in kept:
            kept[id(doc)] = (doc, render(doc))
        return kept[id(doc)][1]

    return field


def _set_fewshot(task: Any, num_fewshot: int | None, seed: int) -> None:
    """simple_evaluate's rule: ``num_fewshot`` replaces the task's own unless the task fixes 0; unset means 0."""
    if num_fewshot is not None:
        if task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=seed)
