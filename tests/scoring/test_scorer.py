"""Scorer: lm-eval's own metrics for every output type, requests built once, weights changed in place.

The reference is ``lm_eval.simple_evaluate`` on the same model and task files (conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.scoring.scorer import Scorer, load_tasks
from evomerge.zoo.build import N_CALIBRATION
from evomerge.zoo.tasks import KINDS

from .conftest import ALL_NAMES, load_float64, names, prompts, simple_evaluate

pytestmark = pytest.mark.slow  # every test here scores the zoo's models: the first run of a checkout builds the zoo

# Role letters and separators the zoo's tokenizer knows: system 's:', user 'u:', assistant 'a:'.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}={% endfor %}"
                 "{% if add_generation_prompt %}a:{% endif %}")


def assert_same_metrics(ours: dict, reference: dict) -> None:
    assert set(ours) == set(reference)
    for task, metrics in reference.items():
        assert ours[task].metrics == pytest.approx(metrics, rel=1e-9, abs=1e-12), task


@pytest.mark.parametrize("kind", KINDS)
def test_scores_equal_simple_evaluate(kind: str, base_float64, zoo_tasks: Path) -> None:
    model, tok = base_float64
    ours = Scorer(model, tok, load_tasks(names(kind), zoo_tasks), batch_size=16).score()
    assert_same_metrics(ours, simple_evaluate(model, tok, names(kind), zoo_tasks)["metrics"])


def test_tasks_of_every_kind_score_together_as_lm_eval_scores_them(zoo_tasks: Path) -> None:
    """Another architecture (GPT-2: learned positions), random weights, and one plan for all log-likelihood requests."""
    from evomerge.zoo.model import new_model
    from evomerge.zoo.tokenizer import hf_tokenizer

    model, tok = new_model("gpt2", seed=3).double().eval(), hf_tokenizer()
    ours = Scorer(model, tok, load_tasks(ALL_NAMES, zoo_tasks), batch_size=16).score()
    assert_same_metrics(ours, simple_evaluate(model, tok, ALL_NAMES, zoo_tasks)["metrics"])


PROMPT_OPTIONS = {
    "few-shot": {"num_fewshot": 2, "fewshot_seed": 7},
    "chat template with a system instruction": {"apply_chat_template": True, "system_instruction": "sys"},
    "few-shot as a multi-turn chat": {"apply_chat_template": True, "num_fewshot": 2, "fewshot_seed": 7,
                                      "fewshot_as_multiturn": True},
}


@pytest.mark.parametrize("options", PROMPT_OPTIONS.values(), ids=PROMPT_OPTIONS)
def test_prompt_options_shape_prompts_and_scores_as_simple_evaluate_does(options: dict, base_float64,
                                                                         zoo_tasks: Path) -> None:
    model, tok = base_float64
    tok.chat_template = CHAT_TEMPLATE
    tasks = names("loglikelihood") + names("multiple_choice") + names("generate_until")
    scorer = Scorer(model, tok, load_tasks(tasks, zoo_tasks), batch_size=16, **options)
    ours = scorer.score()
    lm_eval_options = {("fewshot_random_seed" if k == "fewshot_seed" else k): v for k, v in options.items()}
    reference = simple_evaluate(model, tok, tasks, zoo_tasks, **lm_eval_options)
    for task in tasks:
        instances = scorer.tasks[task].instances
        assert instances[0].args[0] != instances[0].doc["prompt"]  # the options did reach the prompt
        assert prompts(inst.args for inst in instances) == reference["prompts"][task]
    assert_same_metrics(ours, reference["metrics"])


@pytest.mark.parametrize("options, fragment", [
    ({"num_fewshot": -1}, "num_fewshot"),
    ({"fewshot_as_multiturn": True}, "apply_chat_template"),
    ({"apply_chat_template": True}, "no chat template"),
])
def test_impossible_prompt_options_are_one_line_user_errors(options: dict, fragment: str, base_float64,
                                                            zoo_tasks: Path) -> None:
    model, tok = base_float64
    with pytest.raises(EvomergeError, match=fragment) as error:
        Scorer(model, tok, load_tasks(names("loglikelihood"), zoo_tasks), **options)
    assert "\n" not in str(error.value)


def test_a_multi_filter_task_is_scored_under_every_filter(base_float64, zoo_tasks: Path) -> None:
    model, tok = base_float64
    score = Scorer(model, tok, load_tasks(names("generate_until")[:1], zoo_tasks)).score()[names("generate_until")[0]]
    assert set(score.metrics) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert all(len(score.per_item[key]) == N_CALIBRATION for key in score.metrics)


def test_primary_metric_and_filter_are_the_first_of_the_task_lists(base_float64, zoo_tasks: Path) -> None:
    model, tok = base_float64
    scores = Scorer(model, tok, load_tasks([names("loglikelihood")[0], names("generate_until")[0]], zoo_tasks)).score()
    loglikelihood, generation = scores[names("loglikelihood")[0]], scores[names("generate_until")[0]]
    assert (loglikelihood.metric, loglikelihood.filter) == ("acc", "none")
    assert loglikelihood.higher_is_better == {"acc": True, "perplexity": False}
    assert (generation.metric, generation.filter) == ("exact_match", "strict-match")


def test_a_filter_the_task_lacks_is_a_one_line_error_naming_the_known_ones(base_float64, zoo_tasks: Path) -> None:
    model, tok = base_float64
    score = Scorer(model, tok, load_tasks(names("generate_until")[:1], zoo_tasks)).score()[names("generate_until")[0]]
    assert score.key("exact_match", "flexible-extract") == "exact_match,flexible-extract"
    with pytest.raises(EvomergeError, match="'loose'.*exact_match,flexible-extract") as error:
        score.key("exact_match", "loose")
    assert "\n" not in str(error.value)


def test_changing_weights_in_place_changes_the_next_score(zoo_dir: Path, zoo_tasks: Path) -> None:
    model, tok = load_float64(zoo_dir / "models" / "base")
    scorer = Scorer(model, tok, load_tasks(ALL_NAMES, zoo_tasks), batch_size=16)
    before = scorer.score()
    expert, _ = load_float64(zoo_dir / "models" / "rev")
    with torch.no_grad():
        for p, q in zip(model.parameters(), expert.parameters(), strict=True):
            p.copy_(q)
    after = scorer.score()
    fresh = Scorer(expert, tok, load_tasks(ALL_NAMES, zoo_tasks), batch_size=16).score()
    assert after["zoo_rev_gen"].value > before["zoo_rev_gen"].value
    for task in ALL_NAMES:
        assert after[task].metrics == pytest.approx(fresh[task].metrics, rel=1e-12)


def test_generation_the_fast_path_lacks_is_left_to_lm_eval(base_float64, tmp_path: Path, zoo_tasks: Path) -> None:
    """A decoding option other than plain greedy (here a repetition penalty) goes through HFLM's own generate."""
    model, tok = base_float64
    spec = (zoo_tasks / "zoo_rev_gen.yaml").read_text().replace("task: zoo_rev_gen", "task: zoo_rev_penalized")
    (tmp_path / "zoo_rev_penalized.yaml").write_text(spec.replace("do_sample: false",
                                                                  "do_sample: false\n  repetition_penalty: 5.0"))
    ours = Scorer(model, tok, load_tasks(["zoo_rev_penalized"], tmp_path)).score()
    reference = simple_evaluate(model, tok, ["zoo_rev_penalized"], tmp_path)["metrics"]
    assert_same_metrics(ours, reference)
    # the penalty did change the answers
    assert reference != simple_evaluate(model, tok, ["zoo_rev_gen"], zoo_tasks)["metrics"]


def test_scorer_table_has_a_row_per_task_filter_and_metric(base_float64, zoo_tasks: Path) -> None:
    model, tok = base_float64
    scorer = Scorer(model, tok, load_tasks([names("loglikelihood")[0], names("generate_until")[0]], zoo_tasks))
    rows = [line.split("|") for line in scorer.table(scorer.score()).splitlines()[2:]]
    assert [(r[3].strip(), r[5].strip()) for r in rows] == [
        ("none", "acc"), ("none", "perplexity"), ("flexible-extract", "exact_match"), ("strict-match", "exact_match")]


def test_unknown_task_names_the_task(zoo_tasks: Path) -> None:
    with pytest.raises(EvomergeError, match="no_such_task"):
        load_tasks(["no_such_task"], zoo_tasks)


def test_evaluate_prints_lm_evals_table_with_every_filter(zoo_dir: Path, zoo_tasks: Path, capsys) -> None:
    from evomerge.cli import main

    assert main(["evaluate", str(zoo_dir / "models" / "rev"), "--tasks", "zoo_rev_gen", "--task-path",
                 str(zoo_tasks)]) == 0
    header, _, *rows = [line.split("|") for line in capsys.readouterr().out.strip().splitlines()]
    assert [c.strip() for c in header[1:6]] == ["Tasks", "Version", "Filter", "n-shot", "Metric"]
    assert [(r[3].strip(), r[5].strip(), float(r[7])) for r in rows] == [
        ("flexible-extract", "exact_match", 1.0), ("strict-match", "exact_match", 1.0)]


def test_a_chunk_of_items_scores_those_items_as_the_full_run_does(zoo_tasks: Path) -> None:
    """Cheap fitness scores candidates chunk by chunk: each chunk's per-item values are the full run's, in the
    chunk's order, and its metrics are those items' pooled values (only the metrics a subset estimates)."""
    from evomerge.scoring.partial import pool_of, pooled
    from evomerge.zoo.model import new_model
    from evomerge.zoo.tokenizer import hf_tokenizer

    model, tok = new_model("gpt2", seed=3).double().eval(), hf_tokenizer()
    scorer = Scorer(model, tok, load_tasks(ALL_NAMES, zoo_tasks), batch_size=16)
    full = scorer.score()
    chunk = {name: (5, 0, 17) for name in ALL_NAMES[::2]}
    part = scorer.score(chunk)
    assert set(part) == set(chunk)
    assert all(part[name].per_item for name in chunk if "rolling" not in name)  # rolling: corpus-level metrics only
    for name, positions in chunk.items():
        assert set(part[name].per_item) <= set(full[name].per_item)
        for key, values in part[name].per_item.items():
            assert values == pytest.approx([full[name].per_item[key][p] for p in positions], rel=1e-9)
            assert part[name].metrics[key] == pytest.approx(pooled(pool_of(key.split(",")[0]), values), rel=1e-12)
    assert scorer.score() == full  # the full plan is unchanged by the chunks'


def test_tokens_are_the_requests_tokens_and_chunks_add_up_to_every_item(zoo_tasks: Path) -> None:
    """The cost figure status and reports count: a chunk's tokens are its documents' requests' (context and answer
    of a log-likelihood, as lm-eval encodes them), and disjoint chunks add up to every item's."""
    from evomerge.zoo.model import new_model
    from evomerge.zoo.tokenizer import hf_tokenizer

    model, tok = new_model("gpt2", seed=3).eval(), hf_tokenizer()
    task = names("loglikelihood")[0]
    scorer = Scorer(model, tok, load_tasks([task], zoo_tasks), batch_size=16)
    n = len(scorer.docs[task])
    halves = [{task: tuple(range(0, n, 2))}, {task: tuple(range(1, n, 2))}]
    assert scorer.tokens(halves[0]) + scorer.tokens(halves[1]) == scorer.tokens() > 0
    first = [i for i in scorer.requests["loglikelihood"] if i.doc_id == scorer.docs[task][0][0]]
    assert scorer.tokens({task: (0,)}) == sum(len(tok(c + a, add_special_tokens=False).input_ids) for c, a in
                                             (i.args for i in first))
