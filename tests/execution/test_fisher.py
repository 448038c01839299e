"""A worker's diagonal Fisher of each source on the calibration prompts (Fisher merging's statistics)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evomerge.execution.worker import Worker
from evomerge.materialize.statistics import statistics_path, stored_metadata
from evomerge.scoring.fisher import fisher_diagonals
from evomerge.scoring.gram import calibration_tokens


@pytest.fixture(scope="module")
def worker(spec) -> Worker:
    return Worker(spec)


@pytest.fixture(scope="module")
def sequences(worker: Worker) -> list[list[int]]:
    return calibration_tokens(worker.scorer("calibration"))[:16]


def test_the_fisher_is_the_mean_over_sequences_of_squared_log_likelihood_gradients(scoreable_family, sequences) -> None:
    """By hand: each sequence's gradient of its summed log-likelihood (transformers' own mean loss times the
    tokens it predicts), squared, summed over sequences, divided by their number."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(scoreable_family["b"]).eval()
    got = fisher_diagonals(model, sequences)
    params = dict(model.named_parameters())
    want = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
    for seq in sequences:
        ids = torch.tensor([seq])
        loss = model(input_ids=ids, labels=ids).loss * (len(seq) - 1)
        for name, grad in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            want[name] += grad.double() ** 2
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name].double(), want[name] / len(sequences), rtol=1e-4, atol=1e-12)


def test_a_sequence_of_one_token_predicts_nothing_and_is_not_counted(worker: Worker, sequences) -> None:
    alone = fisher_diagonals(worker.model, sequences[:3])
    with_one = fisher_diagonals(worker.model, [sequences[0], [5], sequences[1], sequences[2]])
    for name in alone:
        torch.testing.assert_close(with_one[name], alone[name], rtol=1e-6, atol=0.0)


def test_the_model_is_left_as_it_was(worker: Worker, sequences) -> None:
    before = {name: (p.detach().clone(), p.requires_grad) for name, p in worker.model.named_parameters()}
    worker.model.requires_grad_(False)
    fisher_diagonals(worker.model, sequences[:2])
    assert all(not p.requires_grad and p.grad is None for p in worker.model.parameters())
    worker.model.requires_grad_(True)
    fisher_diagonals(worker.model, sequences[:2])
    for name, p in worker.model.named_parameters():
        assert p.requires_grad and p.grad is None and torch.equal(p.detach(), before[name][0]), name


def test_every_parameter_of_a_source_gets_a_float32_fisher_of_its_shape(worker: Worker) -> None:
    fishers = worker.source_statistics("fisher", 0)
    assert set(fishers) == {name for name, _ in worker.model.named_parameters()}
    for name, information in fishers.items():
        tensor = worker.pool.sources[0].tensors[name]
        assert information.shape == tensor.shape and information.dtype == torch.float32, name
        assert bool((information >= 0).all()) and bool(information.any()), name


def test_a_workers_fisher_is_reused_and_recomputed_when_the_calibration_data_change(spec, tmp_path: Path) -> None:
    first = Worker(spec)
    first.ensure_statistics(tmp_path, "fisher")
    written = [statistics_path(tmp_path, "fisher", k).stat().st_mtime_ns for k in range(3)]
    resumed = Worker(spec)  # a new session: the same prompts, the same fingerprint
    resumed.ensure_statistics(tmp_path, "fisher")
    assert [statistics_path(tmp_path, "fisher", k).stat().st_mtime_ns for k in range(3)] == written
    resumed.__dict__["calibration_fingerprint"] = "sha-of-other-prompts"  # as if the tasks had changed
    resumed.ensure_statistics(tmp_path, "fisher")
    assert all(stored_metadata(statistics_path(tmp_path, "fisher", k))["data_sha256"] == "sha-of-other-prompts"
               for k in range(3))


def test_evomerge_statistics_then_merge_make_a_fisher_recipe(worker: Worker, scoreable_family, tmp_path: Path) -> None:
    import yaml
    from safetensors.torch import load_file

    from evomerge.cli import main
    from evomerge.materialize.statistics import load_statistics
    from evomerge.merge.methods.fisher import fisher

    from .conftest import TASK

    folder, pool, weights = tmp_path / "statistics", worker.pool, [1.0, 0.5, 2.0]
    recipe = tmp_path / "recipe.yaml"
    body = {"method": "fisher", "sources": [{"model": str(s.path), "parameters": {"weight": w}}
                                            for s, w in zip(pool.sources, weights, strict=True)]}
    recipe.write_text(yaml.safe_dump(body))
    assert main(["statistics", str(recipe), "--tasks", TASK, "--task-path", str(scoreable_family["tasks"]),
                 "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"fisher-source{k}.safetensors" for k in range(3)]
    recipe.write_text(yaml.safe_dump({**body, "statistics": str(folder)}))
    assert main(["merge", str(recipe), "--out", str(tmp_path / "out")]) == 0
    merged = load_file(tmp_path / "out" / "model.safetensors")
    files = load_statistics(folder, "fisher", pool)
    for name in ("model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        sources = [s.tensors[name] for s in pool.sources]
        assert torch.equal(merged[name], fisher(None, sources, weight=weights, fishers=files.of(name)))
        assert not torch.allclose(merged[name], sum(w * s for w, s in zip(weights, sources, strict=True)) / 3.5)
