"""A worker's input Gram matrices of each source's linear layers on the calibration prompts (RegMean's statistics)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evomerge.execution.worker import Worker
from evomerge.materialize.statistics import source_statistics, statistics_path
from evomerge.scoring.gram import calibration_tokens, gram_matrices


@pytest.fixture(scope="module")
def worker(spec) -> Worker:
    return Worker(spec)


def test_the_lm_head_gram_is_the_mean_outer_product_of_the_final_hidden_states(worker: Worker,
                                                                               scoreable_family) -> None:
    from transformers import LlamaForCausalLM

    grams = worker.source_statistics("gram", 1)
    model = LlamaForCausalLM.from_pretrained(scoreable_family["b"]).eval()
    total, tokens = torch.zeros(32, 32, dtype=torch.float64), 0
    with torch.no_grad():
        for seq in calibration_tokens(worker.scorer("calibration")):  # one at a time: no padding at all
            hidden = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0].double()
            total += hidden.T @ hidden
            tokens += len(seq)
    torch.testing.assert_close(grams["lm_head.weight"].double(), total / tokens, rtol=1e-5, atol=1e-7)


def test_every_linear_weight_gets_a_square_gram_of_its_inputs(worker: Worker) -> None:
    grams = worker.source_statistics("gram", 0)
    linear = {n for n, t in worker.pool.sources[0].tensors.items() if t.dim() == 2 and "embed" not in n}
    assert set(grams) == linear
    for name, gram in grams.items():
        width = worker.pool.sources[0].tensors[name].shape[1]
        assert gram.shape == (width, width) and gram.dtype == torch.float32 and torch.equal(gram, gram.T), name


def test_padding_a_batch_does_not_change_the_grams(worker: Worker) -> None:
    sequences = calibration_tokens(worker.scorer("calibration"))[:12]
    assert len({len(s) for s in sequences}) > 1  # batches mix lengths
    one, padded = (gram_matrices(worker.model, sequences, batch_size=b) for b in (1, 5))
    for name in one:
        torch.testing.assert_close(padded[name], one[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["gram", "fisher"])
def test_the_live_model_is_merged_again_after_the_statistics(worker: Worker, make_recipe, kind: str) -> None:
    recipe = make_recipe((0.5, 0.3, 0.2))
    before = worker.evaluate(recipe).scores
    worker.source_statistics(kind, 2)
    assert worker.evaluate(recipe).scores == before


def test_a_resumed_run_reads_the_statistics_back_instead_of_computing_them(spec, tmp_path: Path) -> None:
    first = Worker(spec)
    stored = source_statistics(tmp_path, "gram", 0, "sha-of-source-0", first.calibration_fingerprint,
                               lambda: first.source_statistics("gram", 0))
    written = statistics_path(tmp_path, "gram", 0).stat().st_mtime_ns
    resumed = Worker(spec)  # a new session builds its workers afresh: the same prompts, the same fingerprint

    def refuse() -> dict:
        raise AssertionError("recomputed statistics the run folder holds")

    again = source_statistics(tmp_path, "gram", 0, "sha-of-source-0", resumed.calibration_fingerprint, refuse)
    assert statistics_path(tmp_path, "gram", 0).stat().st_mtime_ns == written
    assert set(again) == set(stored) and all(torch.equal(again[n], stored[n]) for n in stored)


def test_statistics_texts_takes_that_many_calibration_texts_spread_over_all_of_them(spec, worker: Worker) -> None:
    every = worker.calibration_tokens
    capped = Worker(replace(spec, scoring=replace(spec.scoring, statistics_texts=5)))
    step = len(every) / 5
    assert capped.calibration_tokens == [every[int(i * step)] for i in range(5)] and len(every) > 10
    assert capped.calibration_fingerprint != worker.calibration_fingerprint  # other data: other statistics files


def test_evomerge_statistics_then_merge_make_a_regmean_recipe(worker: Worker, scoreable_family, tmp_path: Path,
                                                              capsys) -> None:
    import yaml
    from safetensors.torch import load_file

    from evomerge.cli import main
    from evomerge.materialize.statistics import load_statistics
    from evomerge.merge.methods.regmean import regmean

    from .conftest import TASK

    folder, pool = tmp_path / "statistics", worker.pool
    recipe = tmp_path / "recipe.yaml"
    body = {"method": "regmean", "sources": [{"model": str(s.path)} for s in pool.sources],
            "parameters": {"alpha": 0.8}}
    recipe.write_text(yaml.safe_dump(body))
    assert main(["merge", str(recipe), "--out", str(tmp_path / "nothing")]) == 2  # without statistics: one line
    assert "set 'statistics:' in the recipe" in capsys.readouterr().err and not (tmp_path / "nothing").exists()
    assert main(["statistics", str(recipe), "--tasks", TASK, "--task-path", str(scoreable_family["tasks"]),
                 "--out", str(folder)]) == 0
    recipe.write_text(yaml.safe_dump({**body, "statistics": str(folder)}))
    assert main(["merge", str(recipe), "--out", str(tmp_path / "out")]) == 0
    merged = load_file(tmp_path / "out" / "model.safetensors")
    linear = "model.layers.1.mlp.down_proj.weight"
    grams = load_statistics(folder, "gram", pool).of(linear)
    want = regmean(None, [s.tensors[linear] for s in pool.sources], alpha=0.8, grams=grams)
    assert torch.equal(merged[linear], want)
    assert not torch.equal(merged[linear], sum(s.tensors[linear] for s in pool.sources) / 3)
    norm = "model.norm.weight"
    torch.testing.assert_close(merged[norm], sum(s.tensors[norm] for s in pool.sources) / 3)
    assert yaml.safe_load((tmp_path / "out" / "evomerge_recipe.yaml").read_text())["statistics"] == str(folder)
