"""uniform_draws: U[0,1) float32, a pure function of (seed, tensor name, source index)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from evomerge.merge.draws import uniform_draws


def test_same_keys_give_the_same_draws() -> None:
    assert torch.equal(uniform_draws(3, "a.weight", 1, (4, 5)), uniform_draws(3, "a.weight", 1, (4, 5)))


@pytest.mark.parametrize("other", [(4, "a.weight", 1), (3, "b.weight", 1), (3, "a.weight", 2)],
                         ids=["seed", "name", "source"])
def test_each_key_changes_the_draws(other) -> None:
    assert not torch.equal(uniform_draws(3, "a.weight", 1, (50,)), uniform_draws(*other, (50,)))


def test_keys_are_not_confused_by_concatenation() -> None:
    assert not torch.equal(uniform_draws(1, "2.w", 3, (50,)), uniform_draws(12, ".w", 3, (50,)))
    assert not torch.equal(uniform_draws(1, "w1", 2, (50,)), uniform_draws(1, "w", 12, (50,)))


def test_draws_have_the_requested_shape_as_float32() -> None:
    u = uniform_draws(0, "x", 0, torch.Size([3, 4, 2]))
    assert u.shape == (3, 4, 2) and u.dtype == torch.float32 and u.device.type == "cpu"


def test_draws_are_uniform_in_the_unit_interval() -> None:
    u = uniform_draws(0, "x", 0, (20000,))
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float((u < 0.25).double().mean()) - 0.25) < 0.01


def test_draws_leave_the_global_generator_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    uniform_draws(1, "w", 0, (100,))
    assert torch.equal(torch.rand(3), expected)


def test_draws_do_not_depend_on_the_global_rng_or_the_process() -> None:
    torch.manual_seed(123)
    here = uniform_draws(7, "layers.0.w", 2, (6,))
    code = "from evomerge.merge.draws import uniform_draws; print(uniform_draws(7, 'layers.0.w', 2, (6,)).tolist())"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert here.tolist() == eval(there)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_draws_on_a_gpu_equal_the_cpu_draws() -> None:
    assert torch.equal(uniform_draws(2, "w", 1, (64, 3), device="cuda").cpu(), uniform_draws(2, "w", 1, (64, 3)))
