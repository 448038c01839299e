"""lm-eval task YAMLs of every output type for one zoo skill, written from its JSONL items.

An item is ``{"prompt": "rev:abc=", "answer": "cba."}``. Each kind asks the same question another way,
so a search (or a test) can pick what it needs:

- ``loglikelihood`` (``zoo_<skill>``): ``acc`` is greedy exact match of the answer in one forward
  pass; ``perplexity`` is the answer's likelihood, a smooth signal where accuracy ties.
- ``multiple_choice`` (``zoo_<skill>_mc``): the answer against what the other experts' skills give for
  the same letters (``rev:abc=`` → ``cba.`` vs ``abc.``, ``ABC.``, ``abcabc.``); ``acc`` and ``acc_norm``.
- ``generate_until`` (``zoo_<skill>_gen``): greedy generation up to the terminator, scored by
  ``exact_match`` under two filters: ``strict-match`` (the text as generated) and ``flexible-extract``
  (the first run of letters in it), as lm-eval's gsm8k scores a strict and a lenient reading.
- ``loglikelihood_rolling`` (``zoo_<skill>_rolling``): the whole item as text; byte perplexity and
  bits per byte (an item is one word: lm-eval's word perplexity would say nothing).

Held-out tasks add ``_heldout``. Few-shot examples come from the task's own split, never the
document itself (``fewshot_split: test``), joined without a delimiter: the zoo's tokenizer knows no
newline, and the answer's terminator already ends each example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from evomerge.errors import EvomergeError
from evomerge.zoo.skills import EXPERT_SKILLS, MAX_LEN, TERMINATOR

KINDS = ("loglikelihood", "multiple_choice", "generate_until", "loglikelihood_rolling")
SUFFIX = {"loglikelihood": "", "multiple_choice": "_mc", "generate_until": "_gen", "loglikelihood_rolling": "_rolling"}
# Each expert skill's transformation of the letters ``s`` as a Jinja expression: lm-eval renders the
# multiple-choice options from the document itself, so the data files stay as the builder wrote them.
JINJA = {"rev": "s[::-1]", "sort": "s|sort|join", "up": "s|upper", "dup": "s ~ s"}
MAX_GEN_TOKS = 2 * MAX_LEN + len(TERMINATOR)  # the longest answer (dup) with its terminator, one token per character


def task_name(skill: str, kind: str, split: str) -> str:
    return f"zoo_{skill}{SUFFIX[kind]}" + ("_heldout" if split == "heldout" else "")


def write_skill_tasks(skill: str, data_files: Mapping[str, Path], task_dir: Path) -> dict[str, dict[str, str]]:
    """One task YAML per kind and split of ``skill``; returns kind -> split -> task name.

    ``data_files`` maps a split (``calibration``, ``heldout``) to its JSONL file; the YAMLs hold the
    path as given, so pass absolute paths (lm-eval resolves them from wherever it runs).
    """
    if skill not in JINJA:
        raise EvomergeError(f"no zoo tasks for skill '{skill}': choose one of {', '.join(JINJA)}")
    task_dir.mkdir(parents=True, exist_ok=True)
    names: dict[str, dict[str, str]] = {}
    for kind in KINDS:
        for split, data_file in data_files.items():
            name = task_name(skill, kind, split)
            _write(task_dir / f"{name}.yaml", {**_common(name, Path(data_file)), **_BY_KIND[kind](skill)})
            names.setdefault(kind, {})[split] = name
    return names


def write_loglikelihood_task(path: Path, name: str, data_file: Path) -> None:
    """A ``loglikelihood`` task (``acc`` and ``perplexity``) over JSONL items ``{prompt, answer}`` of any
    family, not only the zoo's skills: the SmolLM2 family's chat-formatted items use it too."""
    _write(path, {**_common(name, Path(data_file)), **_loglikelihood(name)})


def _write(path: Path, spec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def _common(name: str, data_file: Path) -> dict[str, Any]:
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "fewshot_split": "test",
        "fewshot_delimiter": "",
    }


def _metric(name: str, aggregation: str, higher_is_better: bool, **kwargs: Any) -> dict[str, Any]:
    return {"metric": name, "aggregation": aggregation, "higher_is_better": higher_is_better, **kwargs}


def _loglikelihood(_: str) -> dict[str, Any]:
    return {
        "output_type": "loglikelihood",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",  # the prompt ends with '=' and the answer follows at once
        "metric_list": [_metric("acc", "mean", True), _metric("perplexity", "perplexity", False)],
    }


def _multiple_choice(skill: str) -> dict[str, Any]:
    options = ", ".join(["answer",
                         *(f"({JINJA[other]}) ~ '{TERMINATOR}'" for other in EXPERT_SKILLS if other != skill)])
    return {
        "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}",
        # the letters sit between ':' and '='; an option equal to another (a palindrome's reversal) is dropped
        "doc_to_choice": ("{% set s = prompt.split(':')[1][:-1] %}{{ [" + options
                          + "] | unique(case_sensitive=true) | list }}"), "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        "metric_list": [_metric("acc", "mean", True), _metric("acc_norm", "mean", True)],
    }


def _generate_until(skill: str) -> dict[str, Any]:
    exact = _metric("exact_match", "mean", True, ignore_case=False, ignore_punctuation=False)
    return {
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer[:-%d]}}" % len(TERMINATOR),  # lm-eval cuts the generation at the stop sequence
        "generation_kwargs": {"until": [TERMINATOR], "max_gen_toks": MAX_GEN_TOKS, "do_sample": False},
        "filter_list": [
            {"name": "strict-match", "filter": [{"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [
                {"function": "regex", "regex_pattern": "[A-Za-z]+", "group_select": 0, "fallback": "[invalid]"},
                {"function": "take_first"},
            ]},
        ],
        "metric_list": [exact],
    }


def _loglikelihood_rolling(skill: str) -> dict[str, Any]:
    return {
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{prompt}}{{answer}}",
        "metric_list": [
            _metric("byte_perplexity", "weighted_perplexity", False),
            _metric("bits_per_byte", "bits_per_byte", False),
        ],
    }


_BY_KIND = {
    "loglikelihood": _loglikelihood,
    "multiple_choice": _multiple_choice,
    "generate_until": _generate_until,
    "loglikelihood_rolling": _loglikelihood_rolling,
}
