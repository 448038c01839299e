"""uniform_draws: a pure function of (seed, tensor name, source index)."""

from __future__ import annotations

import subprocess
import sys

import torch

from evomerge.merge.draws import uniform_draws


def test_same_keys_give_the_same_draws() -> None:
    assert torch.equal(uniform_draws(3, "a.weight", 1, (4, 5)), uniform_draws(3, "a.weight", 1, (4, 5)))


def test_each_key_changes_the_draws() -> None:
    ref = uniform_draws(3, "a.weight", 1, (50,))
    for other in (uniform_draws(4, "a.weight", 1, (50,)), uniform_draws(3, "b.weight", 1, (50,)), uniform_draws(3, "a.weight", 2, (50,))):
        assert not torch.equal(ref, other)


def test_draws_are_uniform_in_the_unit_interval() -> None:
    u = uniform_draws(0, "x", 0, (20000,))
    assert u.dtype == torch.float32 and 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01


def test_draws_do_not_depend_on_the_global_rng_or_the_process() -> None:
    torch.manual_seed(123)
    here = uniform_draws(7, "layers.0.w", 2, (6,))
    code = "import torch; from evomerge.merge.draws import uniform_draws; print(uniform_draws(7, 'layers.0.w', 2, (6,)).tolist())"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert here.tolist() == eval(there)
