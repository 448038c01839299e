"""TSV-M and PCB against float64 references of the papers' formulas written here, apart from evomerge's code.

The TSV-M reference finds singular components from the eigenvectors of τᵀτ and orthogonalizes by the
Procrustes formula A (AᵀA)^(-1/2) — other routes than the SVDs evomerge takes. The PCB reference is plain
Python over the flattened entries. Where FusionBench is installed (dev-only), TSV-M is also checked
against its ``compute_and_sum_svd_mem_reduction`` on the same tensors.
"""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.genome.space import GenomeSpace
from evomerge.merge.methods import pcb
from evomerge.merge.registry import get_method

F64 = torch.float64
REL = 1e-5  # the bar for float32 against the float64 reference


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def family(shape: tuple[int, ...], k: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    base = rand(*shape, seed=seed)
    return base, [base + 0.3 * rand(*shape, seed=seed + 10 + i) for i in range(k)]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(got.double() - want) / torch.linalg.vector_norm(want))


# ---- TSV-M reference ---------------------------------------------------------------------------------


def ref_components(tau: torch.Tensor, rank: int) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """The ``rank`` largest singular triplets (σ, u, v) of ``tau`` from the eigenvectors of τᵀτ; σ ≈ 0 left out."""
    values, vectors = torch.linalg.eigh(tau.T @ tau)
    order = sorted(range(len(values)), key=lambda i: -float(values[i]))[:rank]
    top = math.sqrt(max(float(values[order[0]]), 0.0)) if order else 0.0
    out = []
    for i in order:
        sigma = math.sqrt(max(float(values[i]), 0.0))
        if sigma > 1e-9 * top:
            out.append((sigma, tau @ vectors[:, i] / sigma, vectors[:, i]))
    return out


def procrustes(a: torch.Tensor) -> torch.Tensor:
    """A (AᵀA)^(-1/2): the nearest matrix with orthonormal columns."""
    values, vectors = torch.linalg.eigh(a.T @ a)
    return a @ vectors @ torch.diag(values.rsqrt()) @ vectors.T


def ref_tsvm(base: torch.Tensor, srcs: list[torch.Tensor], weight: list[float], lam: float) -> torch.Tensor:
    taus = [s - base for s in srcs]
    if base.dim() != 2:
        return base + lam * sum(w * t for w, t in zip(weight, taus, strict=True)) / len(srcs)
    rank = min(base.shape) // len(srcs)
    triplets = [(w * s, u, v) for w, t in zip(weight, taus, strict=True) for s, u, v in ref_components(t, rank)]
    if not triplets:
        return base.clone()
    u = procrustes(torch.stack([t[1] for t in triplets], dim=1))
    v = procrustes(torch.stack([t[2] for t in triplets], dim=1))
    return base + lam * u @ torch.diag(torch.tensor([t[0] for t in triplets], dtype=F64)) @ v.T


# ---- PCB reference -----------------------------------------------------------------------------------


def minmax(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    return [0.0 if high == low else (x - low) / (high - low) for x in values]


def ref_pcb(base: torch.Tensor, srcs: list[torch.Tensor], weight: list[float], density: list[float],
            lam: float) -> torch.Tensor:
    k = len(srcs)
    taus = [(s - base).flatten().tolist() for s in srcs]
    n = len(taus[0])
    total = [sum(t[i] for t in taus) for i in range(n)]
    clipped, scales = [], []
    for tau, d in zip(taus, density, strict=True):
        ascending = sorted(abs(x) for x in tau)
        low, high = ascending[int(n * 1e-4)], ascending[max(0, int(n * (1 - 1e-4)) - 1)]
        magnitude = [min(max(abs(x), low), high) for x in tau]
        clipped.append([math.copysign(m, x) if x != 0 else 0.0 for m, x in zip(magnitude, tau, strict=True)])
        balance = [math.exp(k * a * a) * math.tanh(x * s)
                   for a, x, s in zip(minmax(magnitude), tau, total, strict=True)]
        cut = sorted(balance)[min(int(n * (1 - d)), n - 1)]
        scales.append(minmax([max(b, cut) for b in balance]))
    merged = [sum(w * sc[i] * c[i] for w, sc, c in zip(weight, scales, clipped, strict=True))
              / max(sum(sc[i] for sc in scales), 1e-12) for i in range(n)]
    return base + lam * torch.tensor(merged, dtype=F64).reshape(base.shape)


# ---- TSV-M -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,k", [((12, 9), 3), ((7, 16), 2), ((10, 10), 4)])
@pytest.mark.parametrize("weight_lam", [(1.0, 1.0), (0.6, 0.8), (-0.5, 1.3)])
def test_tsvm_matches_the_reference(shape, k, weight_lam) -> None:
    base, srcs = family(shape, k)
    first, lam = weight_lam
    weight = [first] + [1.0 - 0.2 * i for i in range(1, k)]
    want = ref_tsvm(base, srcs, weight, lam)
    torch.testing.assert_close(get_method("tsvm")(base, srcs, weight=weight, lam=lam), want, rtol=1e-9, atol=1e-11)
    got32 = get_method("tsvm")(base.float(), [s.float() for s in srcs], weight=weight, lam=lam)
    assert relative_error(got32, want) <= REL


def test_tsvm_adds_the_weighted_mean_task_vector_to_a_vector() -> None:
    base, srcs = family((9,), 3)
    got = get_method("tsvm")(base, srcs, weight=[1.0, 0.5, -1.0], lam=0.7)
    want = base + 0.7 * ((srcs[0] - base) + 0.5 * (srcs[1] - base) - (srcs[2] - base)) / 3
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_tsvm_of_one_source_at_lambda_one_is_that_source() -> None:
    base, srcs = family((8, 5), 1)
    torch.testing.assert_close(get_method("tsvm")(base, srcs, weight=[1.0]), srcs[0], rtol=1e-10, atol=1e-10)


def test_tsvm_keeps_the_top_one_over_k_components_of_each_task_matrix() -> None:
    base = torch.zeros(6, 6, dtype=F64)
    tau = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], dtype=F64))
    merged = get_method("tsvm")(base, [tau, torch.zeros(6, 6, dtype=F64), torch.zeros(6, 6, dtype=F64)],
                                weight=[1.0, 1.0, 1.0])
    torch.testing.assert_close(merged, torch.diag(torch.tensor([5.0, 4.0, 0, 0, 0, 0], dtype=F64)))


def test_tsvm_leaves_a_source_equal_to_the_base_out_of_the_decorrelation() -> None:
    base, srcs = family((12, 9), 2)
    with_still = get_method("tsvm")(base, [srcs[0], srcs[1], base], weight=[1.0, 1.0, 1.0])
    torch.testing.assert_close(with_still, ref_tsvm(base, [srcs[0], srcs[1], base], [1.0] * 3, 1.0))
    assert torch.isfinite(with_still).all()


def test_tsvm_decomposes_only_the_task_matrices_that_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fine-tune that left a matrix as the base's (an untouched embedding) costs that matrix no SVD."""
    base, srcs = family((12, 9), 2)
    shapes, svd = [], torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda a, **kw: shapes.append(tuple(a.shape)) or svd(a, **kw))
    merged = get_method("tsvm")(base, [srcs[0], base, srcs[1]], weight=[1.0] * 3)
    assert shapes[0] == (2, 12, 9)  # the task matrices of sources 0 and 2, then the two polar factors' SVDs
    torch.testing.assert_close(merged, ref_tsvm(base, [srcs[0], base, srcs[1]], [1.0] * 3, 1.0))


def test_tsvm_of_a_matrix_narrower_than_the_source_count_is_the_base() -> None:
    base, srcs = family((2, 30), 3)
    assert torch.equal(get_method("tsvm")(base, srcs, weight=[1.0] * 3), base)


def test_tsvm_weight_zero_keeps_that_source_out_of_the_sum_but_in_the_decorrelation() -> None:
    base, srcs = family((12, 9), 3)
    got = get_method("tsvm")(base, srcs, weight=[1.0, 0.0, 1.0])
    nearly = get_method("tsvm")(base, srcs, weight=[1.0, 1e-9, 1.0])
    torch.testing.assert_close(got, nearly, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("weight", [[1.0, 1.0, 1.0], [0.7, 1.4, -0.5]])
def test_tsvm_equals_fusion_bench_with_per_task_alphas(weight, capsys, fusion_bench_file) -> None:
    compute = fusion_bench_file("method/task_singular_vector/utils/TSVM_utils.py",
                                {"fusion_bench.utils.type": {"StateDictType": dict}}).compute_and_sum_svd_mem_reduction
    base, srcs = family((24, 18), 3, seed=4)
    bias_base, bias_srcs = family((18,), 3, seed=5)
    task_vectors = [{"w": w * (s - base), "b": w * (bs - bias_base)}
                    for w, s, bs in zip(weight, srcs, bias_srcs, strict=True)]
    theirs = compute(task_vectors, accelerator="cpu")
    capsys.readouterr()  # it prints progress
    torch.testing.assert_close(get_method("tsvm")(base, srcs, weight=weight), base + theirs["w"], rtol=1e-9, atol=1e-10)
    # FusionBench averages the (weighted) vectors of 1-D tensors, as the paper does
    torch.testing.assert_close(get_method("tsvm")(bias_base, bias_srcs, weight=weight), bias_base + theirs["b"])


# ---- PCB ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(12, 9), (40,), (3, 7, 5)])
@pytest.mark.parametrize("density,weight,lam", [
    ([0.1, 0.1, 0.1], [1.0, 1.0, 1.0], 1.0),
    ([0.3, 0.7, 1.0], [1.2, 0.8, 1.0], 0.9),
    ([0.5, 0.05, 0.5], [1.0, -0.5, 2.0], 1.4),
])
def test_pcb_matches_the_reference(shape, density, weight, lam) -> None:
    base, srcs = family(shape, 3, seed=2)
    srcs = [base + 0.1 * (s - base) for s in srcs]  # |τ| ~ 0.03 as fine-tuning leaves it: tanh is not saturated
    want = ref_pcb(base, srcs, weight, density, lam)
    got = get_method("pcb")(base, srcs, weight=weight, density=density, lam=lam)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    got32 = get_method("pcb")(base.float(), [s.float() for s in srcs], weight=weight, density=density, lam=lam)
    assert relative_error(got32 - base.float(), want - base) <= REL


def test_pcb_clips_the_largest_magnitude_to_the_second_on_small_tensors() -> None:
    base = torch.zeros(5, dtype=F64)
    tau = torch.tensor([0.1, -0.2, 0.3, 0.4, 4.0], dtype=F64)
    merged = get_method("pcb")(base, [tau], weight=[1.0], density=[1.0])
    assert float(merged[4]) == pytest.approx(0.4) and float(merged[0]) == 0.0  # the least balanced entry is dropped


def test_pcb_keeps_the_fraction_density_of_each_task_vector() -> None:
    base, srcs = family((1000,), 2, seed=3)
    balance_kept = get_method("pcb")(base, srcs[:1], weight=[1.0], density=[0.25]) != base
    assert int(balance_kept.sum()) == 1000 - int(1000 * 0.75) - 1  # the entry at the cut maps to 0 too


def test_pcb_of_a_tensor_no_source_changed_is_the_base() -> None:
    base = rand(6, 4)
    merged = get_method("pcb")(base, [base.clone(), base.clone()], weight=[1.0, 1.0], density=[0.5, 0.5])
    assert torch.equal(merged, base)


def test_pcb_balances_entries_that_oppose_the_sources_sum_below_every_agreeing_entry() -> None:
    tau = torch.tensor([[0.05, 0.06, 0.07, 0.08, 0.02],
                        [0.01, -0.09, 0.02, -0.08, 0.03],  # its largest entries oppose the other two
                        [0.08, 0.07, 0.06, 0.05, 0.04]], dtype=F64)
    _, balance = pcb.balances(tau)
    assert float(balance[1, [1, 3]].max()) < float(balance[1, [0, 2, 4]].min())


# ---- declarations ------------------------------------------------------------------------------------


def test_tsvm_and_pcb_are_genes_without_a_mergekit_equivalent() -> None:
    for name in ("tsvm", "pcb"):
        method = get_method(name)
        assert method.searchable and not method.mergekit and method.family is None and not method.random
    assert set(get_method("pcb").per_source) == {"weight", "density"} and get_method("pcb").per_source["density"] == 0.1
    assert set(get_method("tsvm").per_source) == {"weight"} and get_method("tsvm").globals == {"lam": 1.0}


def test_a_genome_can_choose_between_tsvm_pcb_and_ties() -> None:
    space = GenomeSpace(["layers.0", "layers.1"], base="b", sources=["x", "y"], methods=["tsvm", "pcb", "ties"])
    recipe = space.to_recipe(space.encode(method="pcb", weight=[1.0, 0.5], density=[0.2, 0.9]))
    spec = recipe.spec_for("layers.0", "mlp")
    assert spec.method == "pcb" and spec.source_params["density"] == pytest.approx((0.2, 0.9))


@pytest.mark.parametrize("name,params,message", [
    ("tsvm", {"lambda": "big"}, "tsvm: 'lambda' must be a number, got 'big'"),
    ("tsvm", {"alpha": 1.0}, "method 'tsvm' has no parameter 'alpha' (it takes: weight, lambda)"),
    ("pcb", {"lambda": math.inf}, "pcb: 'lambda' must be finite, got inf"),
])
def test_a_bad_parameter_is_refused_in_one_line(name, params, message) -> None:
    with pytest.raises(EvomergeError) as error:
        get_method(name).validate(2, {}, params)
    assert str(error.value) == message


@pytest.mark.parametrize("density,message", [
    (0.0, "pcb: 'density' = 0.0 is outside (0, 1]"),
    (1.5, "pcb: 'density' = 1.5 is outside (0, 1]"),
])
def test_pcb_refuses_a_density_outside_its_domain_in_one_line(density, message) -> None:
    with pytest.raises(EvomergeError) as error:
        get_method("pcb").validate(2, {"density": [0.5, density]}, {})
    assert str(error.value) == message
