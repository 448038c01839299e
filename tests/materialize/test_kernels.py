"""A machine where torch.compile fails still merges: the eager kernels take over, with one warning, same tensors."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import pytest
import torch

import evomerge.materialize.kernels as kernels
from evomerge.materialize.fused import merge_tensors
from evomerge.materialize.plan import MergePlan, TensorStep
from evomerge.merge.registry import get_method
from evomerge.sources.pool import SourcePool


def pool_and_plans() -> tuple[SourcePool, list[MergePlan]]:
    g = torch.Generator().manual_seed(0)
    base = {"model.layers.0.w": torch.randn(300, generator=g), "model.layers.1.w": torch.randn(40, 5, generator=g)}
    pool = SourcePool.of([base, *({n: t + 0.1 * torch.randn(t.shape, generator=g) for n, t in base.items()}
                                  for _ in range(2))])
    plans = []
    for method, per in (("ties", {"weight": (1.0, 0.5), "density": (0.3, 0.6)}),
                        ("dare_linear", {"weight": (1.0, 0.5), "density": (0.3, 0.6)}),
                        ("linear", {"weight": (0.6, 0.4)})):
        m = get_method(method)
        plans.append(MergePlan(tuple(TensorStep(n, "g", m, per, {}) for n in pool.tensor_names), seed=1, dtype=None))
    return pool, plans


@pytest.mark.parametrize("where", ["every compile", "the kernels only"])
def test_a_failing_compile_falls_back_to_the_eager_kernels_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                                            where: str) -> None:
    monkeypatch.setattr(kernels, "_compile_broken", False)
    monkeypatch.setattr(kernels, "_PROBED", {})
    monkeypatch.setattr(kernels, "_COMPILED", {})
    real_compile = torch.compile

    def compile(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        if where == "the kernels only" and fn.__name__ == "<lambda>":  # the probe compiles; the kernels will not
            return real_compile(fn, **options)

        def broken(*args: Any) -> Any:
            raise RuntimeError("InductorError: CppCompileError: no working C++ compiler")

        return broken

    monkeypatch.setattr(torch, "compile", compile)
    pool, plans = pool_and_plans()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        merged = [merge_tensors(plan, pool, compile=True) for plan in plans]
    fallbacks = [w for w in seen if issubclass(w.category, RuntimeWarning) and "torch.compile" in str(w.message)]
    assert len(fallbacks) == 1 and "eager kernels" in str(fallbacks[0].message)
    for plan, got in zip(plans, merged, strict=True):
        reference = plan.materialize(pool)
        for name, want in reference.items():
            torch.testing.assert_close(got[name], want, rtol=1e-6, atol=1e-7)


def test_an_error_of_the_inputs_is_not_taken_for_a_broken_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "_compile_broken", False)
    call = kernels._with_fallback("probe", lambda x: x.no_such_method(), lambda x: x.no_such_method())
    with pytest.raises(AttributeError):
        call(torch.ones(2))
    assert kernels._compile_broken is False
