"""Fixtures for executor tests: a tiny scoreable family (models + tokenizer + lm-eval task), and one
local Ray cluster shared by the in-process Ray tests (2 CPUs, as on the CI machine).

The family is built in code in a second: a 2-layer Llama over a character vocabulary, three
noisy 'fine-tunes', and a loglikelihood task whose primary metric is ``acc`` and whose second,
``perplexity``, moves with every weight (so equal scores mean equal merged models).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from evomerge.config.search import ScoringConfig
from evomerge.execution.worker import WorkerSpec
from evomerge.recipes.recipe import GroupSpec, Recipe

CHARS = "abcdefghijklmnopqrstuvwxyz=>."  # + <pad> <eos> <unk>: 32 tokens
TASK = "ex_rev"


def _tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   bos_token="<eos>")


def _save(path: Path, model: torch.nn.Module, tokenizer) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def scoreable_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'base', 'a', 'b', 'c', 'tasks'}: model folders with a tokenizer, and a task folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("scoreable")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    base = LlamaForCausalLM(cfg)
    family = {"base": _save(root / "base", base, tokenizer)}
    for i, name in enumerate("abc", start=1):
        torch.manual_seed(i)
        model = LlamaForCausalLM.from_pretrained(family["base"])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        family[name] = _save(root / name, model, tokenizer)

    tasks = root / "tasks"
    tasks.mkdir()
    g = torch.Generator().manual_seed(0)
    with open(tasks / "rev.jsonl", "w") as f:
        for _ in range(200):
            word = "".join(CHARS[int(j)]
                           for j in torch.randint(0, 26, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g))
            f.write(json.dumps({"q": word, "a": word[::-1]}) + "\n")
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'rev.jsonl'}\n"
        "test_split: test\n"
        "output_type: loglikelihood\n"
        'doc_to_text: "{{q}}>"\n'
        'doc_to_target: "{{a}}."\n'
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: perplexity, aggregation: perplexity, higher_is_better: false}\n"
    )
    family["tasks"] = tasks
    return family


@pytest.fixture(scope="session")
def spec(scoreable_family: dict[str, Path]) -> WorkerSpec:
    f = scoreable_family
    return WorkerSpec(
        base=f["base"], sources=(f["a"], f["b"], f["c"]), calibration_tasks=(TASK,), heldout_tasks=(TASK,),
        scoring=ScoringConfig(task_path=f["tasks"], batch_size=64), threads=1,
    )


@pytest.fixture(scope="session")
def make_recipe(spec: WorkerSpec):
    """make_recipe(weights, method='task_arithmetic') -> a whole-model recipe over the spec's sources."""

    def make(weights: tuple[float, ...], method: str = "task_arithmetic") -> Recipe:
        return Recipe(
            base=spec.base, sources=spec.sources,
            default=GroupSpec(method=method, source_params={"weight": tuple(weights)}, params={}),
        )

    return make


WEIGHTS = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.5), (0.3, 0.9, 0.1), (1.2, 0.2, 0.7)]


@pytest.fixture(scope="session")
def local_scores(spec: WorkerSpec, make_recipe) -> dict[int, dict]:
    """Job index -> scores of WEIGHTS[index], evaluated in process: what every executor must return."""
    from evomerge.execution.executor import Job, LocalExecutor

    ex = LocalExecutor(spec)
    for i, w in enumerate(WEIGHTS):
        ex.submit(Job(i, make_recipe(w)))
    results = [ex.next_result() for _ in WEIGHTS]
    assert all(r.outcome.error is None for r in results), [r.outcome.error for r in results]
    return {r.job.index: r.outcome.scores for r in results}


# record fields that must be equal between runs of the same config: everything but timing and worker
SAME = ("index", "key", "x", "parents", "operator", "generation", "scores", "error", "objectives", "cached_from",
        "chunks", "items")


def comparable(records: list) -> list[dict]:
    from evomerge.run.records import CandidateRecord

    return [{k: getattr(r, k) for k in SAME} for r in records if isinstance(r, CandidateRecord)]


@pytest.fixture(scope="session")
def weights() -> list[tuple[float, ...]]:
    return WEIGHTS


@pytest.fixture(scope="session")
def candidates_of():
    """candidates_of(run_dir) -> the run's candidate records without timing and worker fields."""
    from evomerge.run.log import RunLog

    return lambda root: comparable(RunLog.open(Path(root)).records)


@pytest.fixture(scope="session")
def search_config_file(scoreable_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A search config over the scoreable family: 3 sources, per-layer genes, CMA-ES, 24 candidates: the
    12 seed points, then 3 generations of 4 (three CMA-ES updates, each told in ask order).
    The objective is perplexity (continuous), so every genome gets its own score."""
    f = scoreable_family
    path = tmp_path_factory.mktemp("cfg") / "search.yaml"
    path.write_text(
        "name: ex\n"
        "seed: 0\n"
        f"sources: {{base: {f['base']}, models: [{f['a']}, {f['b']}, {f['c']}]}}\n"
        "genome: {methods: [task_arithmetic], bounds: {weight: [0.0, 1.5]}}\n"
        f"scoring: {{task_path: {f['tasks']}, batch_size: 64}}\n"
        f"objectives: [{{task: {TASK}, metric: perplexity}}]\n"
        "strategy: {name: cmaes, options: {popsize: 4}}\n"
        "budget: {max_evals: 24}\n"
        "execution: {backend: local, workers: 1, in_flight: 2, threads: 1}\n"
    )
    return path


@pytest.fixture(scope="session")
def reference_log(search_config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The uninterrupted local-backend run of search_config_file: what every other run must log."""
    from evomerge.config.search import load_config
    from evomerge.execution.executor import LocalExecutor
    from evomerge.run.log import RunLog
    from evomerge.run.search import Search

    run = RunLog.create(tmp_path_factory.mktemp("reference") / "run", load_config(search_config_file), {})
    Search(run, LocalExecutor, quiet=True).run_to_budget()
    records = comparable(RunLog.open(run.root).records)
    assert len(records) == 24 and max(r["generation"] for r in records) == 3
    return records


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray (2 CPUs, no GPU: on a GPU machine too, so a cuda worker is refused everywhere) for the
    in-process tests; executors that find Ray running reuse it."""
    import logging

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp = Path("/tmp") / f"evm-test-{os.getpid()}"
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             _temp_dir=str(temp), object_store_memory=128 * 2**20)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
