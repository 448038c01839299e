"""RegMean against a float64 reference of the paper's formula written here, apart from evomerge's code.

The reference works in the paper's convention (h = x W, W in × out: the transpose of torch's weight), builds
G̃ entry by entry and inverts Σ G̃ explicitly, where evomerge solves in torch's orientation. Its least-squares
meaning is checked from the calibration inputs themselves, and where FusionBench is installed (dev-only),
against its ``merging_with_regmean_weights`` on the same tensors.
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


def inputs(tokens: int, features: int, seed: int) -> torch.Tensor:
    """Calibration inputs with correlated, unequally scaled features, as a layer's activations are."""
    mixing = torch.eye(features, dtype=F64) + 0.4 * rand(features, features, seed=seed + 100)
    return rand(tokens, features, seed=seed) @ mixing * torch.linspace(0.5, 3.0, features, dtype=F64)


def problem(out: int, features: int, k: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """K weights (out × in, torch's orientation) and the Gram matrices XᵀX of K sets of inputs."""
    base = rand(out, features, seed=seed)
    weights = [base + 0.3 * rand(out, features, seed=seed + 10 + i) for i in range(k)]
    xs = [inputs(3 * features, features, seed=seed + 20 + i) for i in range(k)]
    return weights, [x.T @ x for x in xs]


def ref_regmean(weights: list[torch.Tensor], grams: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """Paper: W_M = (Σ_k G̃_k)⁻¹ Σ_k G̃_k W_k, W_k = weightᵀ; G̃ = G with off-diagonal entries times α."""
    n = grams[0].shape[0]
    reduced = []
    for gram in grams:
        g = gram.clone()
        for i in range(n):
            for j in range(n):
                if i != j:
                    g[i, j] = alpha * gram[i, j]
        reduced.append(g)
    merged = torch.linalg.inv(sum(reduced)) @ sum(g @ w.T for g, w in zip(reduced, weights, strict=True))
    return merged.T


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(got.double() - want) / torch.linalg.vector_norm(want))


@pytest.mark.parametrize("out,features,k", [(6, 5, 2), (4, 9, 3), (12, 7, 4)])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
def test_regmean_matches_the_reference(out, features, k, alpha) -> None:
    weights, grams = problem(out, features, k)
    want = ref_regmean(weights, grams, alpha)
    got = get_method("regmean")(None, weights, alpha=alpha, grams=grams)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    got32 = get_method("regmean")(None, [w.float() for w in weights], alpha=alpha, grams=[g.float() for g in grams])
    assert got32.dtype == torch.float32 and relative_error(got32, want) <= REL


def test_regmean_at_alpha_one_is_the_least_squares_fit_of_every_sources_outputs() -> None:
    weights, _ = problem(5, 6, 3, seed=1)
    xs = [inputs(20, 6, seed=40 + i) for i in range(3)]
    stacked_x = torch.cat(xs)
    stacked_y = torch.cat([x @ w.T for x, w in zip(xs, weights, strict=True)])  # y = x Wᵀ, as nn.Linear
    fit = torch.linalg.lstsq(stacked_x, stacked_y).solution.T
    got = get_method("regmean")(None, weights, alpha=1.0, grams=[x.T @ x for x in xs])
    torch.testing.assert_close(got, fit, rtol=1e-9, atol=1e-10)


def test_regmean_of_one_source_is_that_source() -> None:
    weights, grams = problem(4, 5, 1, seed=2)
    torch.testing.assert_close(get_method("regmean")(None, weights, grams=grams), weights[0], rtol=1e-10, atol=1e-10)


def test_regmean_with_equal_gram_matrices_is_the_mean() -> None:
    weights, grams = problem(4, 5, 3, seed=3)
    got = get_method("regmean")(None, weights, alpha=0.7, grams=[grams[0]] * 3)
    torch.testing.assert_close(got, sum(weights) / 3, rtol=1e-10, atol=1e-10)


def test_regmean_at_alpha_zero_averages_each_input_column_by_its_energy() -> None:
    weights, grams = problem(3, 4, 2, seed=4)
    energy = [torch.diagonal(g) for g in grams]
    want = (weights[0] * energy[0] + weights[1] * energy[1]) / (energy[0] + energy[1])
    torch.testing.assert_close(get_method("regmean")(None, weights, alpha=0.0, grams=grams), want)


def test_an_input_feature_no_source_saw_takes_the_sources_mean_column() -> None:
    weights, _ = problem(4, 5, 2, seed=5)
    xs = [inputs(15, 5, seed=50 + i) for i in range(2)]
    for x in xs:
        x[:, 2] = 0.0
    got = get_method("regmean")(None, weights, alpha=0.9, grams=[x.T @ x for x in xs])
    torch.testing.assert_close(got[:, 2], (weights[0][:, 2] + weights[1][:, 2]) / 2)
    seen = [0, 1, 3, 4]
    want = ref_regmean([w[:, seen] for w in weights], [(x.T @ x)[seen][:, seen] for x in xs], 0.9)
    torch.testing.assert_close(got[:, seen], want)


def test_a_tensor_without_gram_matrices_is_the_sources_mean() -> None:
    biases = [rand(7, seed=60 + i) for i in range(3)]
    torch.testing.assert_close(get_method("regmean")(rand(7), biases), sum(biases) / 3)


def test_regmean_equals_fusion_bench(fusion_bench_file) -> None:
    class Stub:
        pass

    module = fusion_bench_file("method/regmean/regmean.py", {
        "fusion_bench.method": {"BaseAlgorithm": type("BaseAlgorithm", (), {})},
        "fusion_bench.mixins": {"SimpleProfilerMixin": Stub, "auto_register_config": lambda cls: cls},
        "fusion_bench.modelpool": {"BaseModelPool": Stub},
        "fusion_bench.method.regmean.utils": {"get_modules_to_merge": None, "get_param_names_to_merge": None},
    })
    weights, grams = problem(6, 8, 3, seed=6)
    biases = [rand(6, seed=70 + i) for i in range(3)]
    theirs = module.merging_with_regmean_weights({"fc.weight": weights, "fc.bias": biases},
                                                 [{"fc": g} for g in grams], reduce_non_diagonal_ratio=0.9)
    regmean = get_method("regmean")
    torch.testing.assert_close(regmean(None, weights, alpha=0.9, grams=grams), theirs["fc.weight"])
    torch.testing.assert_close(regmean(None, biases), theirs["fc.bias"])


# ---- declaration and bad input -------------------------------------------------------------------------


def test_regmean_is_declared_as_a_method_of_gram_statistics_without_a_mergekit_equivalent() -> None:
    method = get_method("regmean")
    assert method.statistics == "gram" and not method.needs_base and not method.mergekit
    assert method.globals == {"alpha": 0.9} and not method.per_source and method.searchable


@pytest.mark.parametrize("alpha,message", [
    (1.5, "regmean: 'alpha' = 1.5 is outside [0, 1]"),
    (-0.1, "regmean: 'alpha' = -0.1 is outside [0, 1]"),
])
def test_an_alpha_outside_the_unit_interval_is_refused_in_one_line(alpha, message) -> None:
    with pytest.raises(EvomergeError) as error:
        get_method("regmean").validate(2, {}, {"alpha": alpha})
    assert str(error.value) == message


@pytest.mark.parametrize("grams,message", [
    ([torch.eye(5, dtype=F64)], "regmean: 1 Gram matrices for 2 sources; give one per source"),
    ([torch.eye(5, dtype=F64), torch.eye(4, dtype=F64)],
     "regmean: source 1's Gram matrix has shape [4, 4], but the weight [3, 5] takes 5 inputs; "
     "recompute the statistics for these models"),
])
def test_gram_matrices_that_do_not_fit_the_weight_are_refused_in_one_line(grams, message) -> None:
    with pytest.raises(EvomergeError) as error:
        get_method("regmean")(None, [rand(3, 5), rand(3, 5, seed=1)], grams=grams)
    assert str(error.value) == message


def test_gram_matrices_for_a_vector_are_refused_in_one_line() -> None:
    with pytest.raises(EvomergeError) as error:
        get_method("regmean")(None, [rand(5)], grams=[torch.eye(5, dtype=F64)])
    assert str(error.value) == "regmean: Gram matrices are for 2-D linear weights, not a tensor of shape [5]"
