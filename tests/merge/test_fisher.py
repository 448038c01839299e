"""Fisher-weighted averaging against a float64 reference of the paper's formula written here, apart from evomerge's
code: entry by entry over flat lists, the precisions w_k (F_k + ε) summed in Python. Where FusionBench is
installed (dev-only), against its ``merging_with_fisher_weights`` on the same tensors.
"""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.merge.registry import get_method

F64 = torch.float64
REL = 1e-5  # the bar for float32 against the float64 reference


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def problem(shape: tuple[int, ...], k: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """K tensors near a common point and K diagonal Fishers spread over six orders of magnitude, as squared
    gradients are (a few entries carry most of the information)."""
    base = rand(*shape, seed=seed)
    tensors = [base + 0.3 * rand(*shape, seed=seed + 10 + i) for i in range(k)]
    fishers = [torch.exp(3.0 * rand(*shape, seed=seed + 20 + i)) * 1e-3 for i in range(k)]
    return tensors, fishers


def ref_fisher(tensors: list[torch.Tensor], fishers: list[torch.Tensor], weights: list[float],
               epsilon: float) -> torch.Tensor:
    """Paper: θ* = Σ_k λ_k F_k θ_k / Σ_k λ_k F_k per entry, with F_k floored by ε as FusionBench floors it."""
    flat = [t.flatten().tolist() for t in tensors]
    info = [f.flatten().tolist() for f in fishers]
    merged = []
    for i in range(len(flat[0])):
        precisions = [w * (info[k][i] + epsilon) for k, w in enumerate(weights)]
        merged.append(sum(p * flat[k][i] for k, p in enumerate(precisions)) / sum(precisions))
    return torch.tensor(merged, dtype=F64).reshape(tensors[0].shape)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(got.double() - want) / torch.linalg.vector_norm(want))


@pytest.mark.parametrize("shape,weights", [
    ((6, 5), [1.0, 1.0]), ((4, 9), [0.2, 1.0, 0.5]), ((11,), [1.0, 0.0, 2.0, 0.7])])
@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 1e-2])
def test_fisher_matches_the_reference(shape, weights, epsilon) -> None:
    tensors, fishers = problem(shape, len(weights))
    want = ref_fisher(tensors, fishers, weights, epsilon)
    got = get_method("fisher")(None, tensors, weight=weights, epsilon=epsilon, fishers=fishers)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got32 = get_method("fisher")(None, [t.float() for t in tensors], weight=weights, epsilon=epsilon,
                                 fishers=[f.float() for f in fishers])
    assert got32.dtype == torch.float32 and relative_error(got32, want) <= REL


def test_fisher_of_equal_fishers_is_the_weighted_mean() -> None:
    tensors, fishers = problem((5, 3), 3, seed=1)
    got = get_method("fisher")(None, tensors, weight=[1.0, 2.0, 1.0], fishers=[fishers[0]] * 3)
    torch.testing.assert_close(got, (tensors[0] + 2 * tensors[1] + tensors[2]) / 4)


def test_an_entry_only_one_source_informs_takes_that_sources_value() -> None:
    tensors, fishers = problem((4, 4), 2, seed=2)
    fishers[1][1, 2] = 0.0
    fishers[0][1, 2] = 1e3
    got = get_method("fisher")(None, tensors, weight=[1.0, 1.0], epsilon=0.0, fishers=fishers)
    assert float(got[1, 2]) == pytest.approx(float(tensors[0][1, 2]), rel=1e-12)


def test_an_entry_no_source_informs_takes_the_weighted_mean_at_epsilon_zero() -> None:
    tensors, fishers = problem((3, 5), 2, seed=3)
    for f in fishers:
        f[:, 4] = 0.0
    got = get_method("fisher")(None, tensors, weight=[3.0, 1.0], epsilon=0.0, fishers=fishers)
    torch.testing.assert_close(got[:, 4], (3 * tensors[0][:, 4] + tensors[1][:, 4]) / 4)
    assert torch.isfinite(got).all()


def test_a_tensor_without_fishers_is_the_weighted_mean() -> None:
    biases = [rand(7, seed=60 + i) for i in range(3)]
    got = get_method("fisher")(rand(7), biases, weight=[1.0, 0.5, 0.5])
    torch.testing.assert_close(got, (2 * biases[0] + biases[1] + biases[2]) / 4)


def test_fisher_of_bfloat16_sources_computes_in_float32() -> None:
    tensors, fishers = problem((8, 8), 2, seed=4)
    got = get_method("fisher")(None, [t.bfloat16() for t in tensors], fishers=[f.float() for f in fishers])
    want = ref_fisher([t.bfloat16().double() for t in tensors], [f.float().double() for f in fishers], [1.0, 1.0], 1e-6)
    assert got.dtype == torch.float32 and relative_error(got, want) <= REL


@pytest.mark.parametrize("normalize", [False, True])
def test_fisher_equals_fusion_bench(fusion_bench_file, normalize) -> None:
    """FusionBench's normalization divides each model's Fisher by its norm over every merged tensor: here the
    same as weighting each source by the inverse of that norm."""

    class Stub:
        pass

    module = fusion_bench_file("method/fisher_merging/fisher_merging.py", {
        "tqdm.autonotebook": {"tqdm": lambda iterable, **_: iterable},
        "fusion_bench.method": {"BaseAlgorithm": type("BaseAlgorithm", (), {})},
        "fusion_bench.mixins": {"SimpleProfilerMixin": Stub, "auto_register_config": lambda cls: cls},
        "fusion_bench.modelpool": {"BaseModelPool": Stub},
    })
    (weights, fishers), (biases, bias_fishers) = problem((6, 8), 3, seed=6), problem((6,), 3, seed=7)
    coefficients = [0.5, 1.0, 0.25]
    theirs = module.merging_with_fisher_weights(
        {"fc.weight": weights, "fc.bias": biases},
        [{"fc.weight": f, "fc.bias": b} for f, b in zip(fishers, bias_fishers, strict=True)],
        torch.tensor(coefficients, dtype=F64), normalize_fisher_weight=normalize, minimal_fisher_weight=1e-6)
    scale = [1.0 / (float(torch.cat([f.flatten(), b]).norm()) + 1e-6) if normalize else 1.0
             for f, b in zip(fishers, bias_fishers, strict=True)]
    ours = [c * s for c, s in zip(coefficients, scale, strict=True)]
    method = get_method("fisher")
    for name, tensors, info in (("fc.weight", weights, fishers), ("fc.bias", biases, bias_fishers)):
        got = method(None, tensors, weight=ours, epsilon=1e-6, fishers=info)
        assert relative_error(got, theirs[name]) <= 1e-12, name


# ---- declaration and bad input -------------------------------------------------------------------------


def test_fisher_is_declared_as_a_method_of_fisher_statistics_without_a_mergekit_equivalent() -> None:
    method = get_method("fisher")
    assert method.statistics == "fisher" and not method.needs_base and not method.mergekit
    assert method.globals == {"epsilon": 1e-6} and method.per_source == {"weight": 1.0} and method.searchable


@pytest.mark.parametrize("per_source,params,message", [
    ({}, {"epsilon": -1e-3}, "fisher: 'epsilon' = -0.001 is outside [0, inf]"),
    ({"weight": [1.0, -0.5]}, {}, "fisher: 'weight' = -0.5 is outside [0, inf]"),
    ({"weight": [1.0]}, {}, "'weight' has 1 value(s) but there are 2 source(s): give one per source"),
])
def test_bad_parameters_are_refused_in_one_line(per_source, params, message) -> None:
    with pytest.raises(EvomergeError) as error:
        get_method("fisher").validate(2, per_source, params)
    assert str(error.value) == message


@pytest.mark.parametrize("fishers,message", [
    ([torch.ones(3, 5, dtype=F64)], "fisher: 1 Fisher tensors for 2 sources; give one per source"),
    ([torch.ones(3, 5, dtype=F64), torch.ones(5, 3, dtype=F64)],
     "fisher: source 1's Fisher has shape [5, 3], but the tensor has shape [3, 5]; recompute the statistics for "
     "these models"),
])
def test_fishers_that_do_not_fit_the_tensor_are_refused_in_one_line(fishers, message) -> None:
    with pytest.raises(EvomergeError) as error:
        get_method("fisher")(None, [rand(3, 5), rand(3, 5, seed=1)], fishers=fishers)
    assert str(error.value) == message

