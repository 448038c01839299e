"""Preflight of a cuda device: refused where CUDA is missing (on any machine), planned from the GPU's memory where
it is there (run when a GPU is present)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from evomerge.config.search import ExecutionConfig, SearchConfig
from evomerge.errors import EvomergeError
from evomerge.materialize.memory import plan_for_config
from evomerge.run.preflight import check_execution

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (reads its memory)")


def on(cfg: SearchConfig, **execution: object) -> SearchConfig:
    return replace(cfg, execution=ExecutionConfig(**execution))  # type: ignore[arg-type]


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine without CUDA, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_a_local_cuda_run_without_cuda_is_refused(tiny_config: SearchConfig, no_cuda: None) -> None:
    with pytest.raises(EvomergeError, match="execution.device' is cuda:1 but this machine has no CUDA device"):
        check_execution(on(tiny_config, device="cuda:1"))


def test_a_ray_cuda_run_without_cuda_here_needs_a_memory_budget(tiny_config: SearchConfig, no_cuda: None) -> None:
    """The driver may have no GPU while the cluster's workers do: then the budget cannot be read, only given."""
    with pytest.raises(EvomergeError, match="memory_budget is needed: there is no CUDA device here"):
        check_execution(on(tiny_config, backend="ray", device="cuda"))
    assert plan_for_config(on(tiny_config, backend="ray", device="cuda", memory_budget="2GB")).budget == 2 * 10**9


@cuda
@pytest.mark.parametrize("share", [1.0, 0.5])
def test_a_cuda_run_passes_preflight_with_a_budget_from_the_gpus_memory(tiny_config: SearchConfig,
                                                                       share: float) -> None:
    cfg = on(tiny_config, device="cuda:0", gpus_per_worker=share)
    check_execution(cfg)
    plan = plan_for_config(cfg)
    total = torch.cuda.get_device_properties(0).total_memory
    assert plan.budget_from == "device" and 0.5 * share * total < plan.budget <= share * total
    assert plan.sources == "resident"  # the tiny models fit on any GPU
