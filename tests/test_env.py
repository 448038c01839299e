"""The one offline-environment helper: every entry point sets the same variables, and a user's own value wins.
The reproducible-math runner: a child process under the builders' variables, whatever the caller's."""

from __future__ import annotations

import os

import pytest

from evomerge.env import OFFLINE, QUIET, REPRODUCIBLE, offline_env, run_reproducibly, set_offline_env
from evomerge.errors import EvomergeError


def test_set_offline_env_sets_what_is_missing_and_keeps_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    set_offline_env()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "0"
    assert "TOKENIZERS_PARALLELISM" not in os.environ
    set_offline_env(quiet=True)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_ray_workers_get_the_same_variables() -> None:
    from evomerge.execution.ray_cluster import WORKER_ENV

    assert offline_env(quiet=True) == {**OFFLINE, **QUIET}
    assert {k: WORKER_ENV[k] for k in offline_env(quiet=True)} == offline_env(quiet=True)


def test_run_reproducibly_runs_under_the_builders_variables_and_leaves_the_callers_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MKL_CBWR", "AUTO")  # a user's own choice: the child must not see it
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert {name: run_reproducibly(os.getenv, name) for name in REPRODUCIBLE} == REPRODUCIBLE
    assert os.environ["MKL_CBWR"] == "AUTO" and "ATEN_CPU_CAPABILITY" not in os.environ


def test_run_reproducibly_runs_torchs_avx2_kernels_on_an_avx2_or_avx512_cpu() -> None:
    import torch

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"this CPU runs torch's {torch.backends.cpu.get_cpu_capability()} kernels, below AVX2")
    assert run_reproducibly(torch.backends.cpu.get_cpu_capability) == "AVX2"


def test_run_reproducibly_raises_the_childs_error() -> None:
    from evomerge.zoo.model import check_arch

    with pytest.raises(EvomergeError, match="unknown zoo arch 'transformer-xl'"):
        run_reproducibly(check_arch, "transformer-xl")
