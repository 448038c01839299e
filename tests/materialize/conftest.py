"""Fixtures of the materialize tests: a check that a "compiled" test really ran compiled kernels."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import pytest

import evomerge.materialize.kernels as kernels


@pytest.fixture
def ran_compiled() -> Callable[..., None]:
    """``ran_compiled(*kernel names)`` at the end of a test asserts that each of those kernels ran compiled during it.

    A failing torch.compile swaps in the eager kernels with a warning and the same results, so a test comparing
    compiled output with a reference passes either way; this makes it fail instead."""
    before = Counter(kernels.compiled_calls)

    def check(*names: str) -> None:
        ran = kernels.compiled_calls - before
        eager = [name for name in names if not ran[name]]
        assert not eager, f"kernels {eager} never ran compiled (compiled calls in this test: {dict(ran)})"

    return check
