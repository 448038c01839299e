"""The environment variables evomerge's processes run under, set in one place.

Hugging Face offline: models, tokenizers and data sets come from local folders, never the network
(a missing file is an error, not a download). Libraries read these once, when they are imported,
so each entry point sets them first; a value the user exported wins (``setdefault``).

Reproducible math (the zoo builders): the same bytes on every x86-64 CPU with AVX2 (docs/ZOO.md).
These variables must be in a process's environment before torch loads, so the work runs in a fresh
child process (``run_reproducibly``); here the builder's values win over the user's.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any, Callable, Iterator, Mapping, TypeVar

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # huggingface_hub and datasets: local files only
QUIET = {"TOKENIZERS_PARALLELISM": "false"}  # no warning from tokenizers when a process forks
# The math libraries choose kernels by the CPU they run on, and kernels of other vector widths sum in
# another order: on one seed an AVX-512 machine and an AVX2 one trained other zoos. Each is pinned to a
# branch every x86-64 CPU with AVX2 runs alike (measured: docs/ZOO.md, "Same bytes on every machine").
REPRODUCIBLE = {
    # MKL's matrix products: conditional numerical reproducibility on its SSE2 branch. Its AVX2 branch
    # is for Intel CPUs only (an AMD CPU silently gets AUTO, the CPU's own branch), so COMPATIBLE is the
    # one that Intel and AMD CPUs compute alike; it makes training steps ~1.8x slower.
    "MKL_CBWR": "COMPATIBLE",
    # torch's own kernels (norms, softmax, activations, the optimizer, reductions): the AVX2 build, not
    # AVX-512 where the CPU has it (a CPU without AVX2 falls back to the default build: other bytes).
    "ATEN_CPU_CAPABILITY": "avx2",
    # oneDNN's JIT kernels, capped at the same ISA; the zoo's operations do not reach oneDNN today.
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
T = TypeVar("T")


def offline_env(*, quiet: bool = False) -> dict[str, str]:
    """The offline variables, and with ``quiet`` the tokenizers' too: for a process started elsewhere (a Ray actor)."""
    return {**OFFLINE, **(QUIET if quiet else {})}


def set_offline_env(*, quiet: bool = False) -> None:
    """Set ``offline_env(quiet=quiet)`` in this process, keeping any value already set."""
    for name, value in offline_env(quiet=quiet).items():
        os.environ.setdefault(name, value)


def run_reproducibly(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a fresh (spawned) process under ``REPRODUCIBLE``: its result, or its exception.

    ``fn`` must be a module-level function, and its arguments and result picklable. Worker processes it
    starts inherit the variables; its output goes to this process's stdout and stderr.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        with _environ(REPRODUCIBLE):
            pool.submit(os.getpid).result()  # the one worker starts now, copying the environment as it is here
        return pool.submit(fn, *args, **kwargs).result()


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block (what a child process started in it inherits), then as before."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
