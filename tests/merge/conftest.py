"""Fixtures of the merge tests: FusionBench's functions, loaded from their files without its training stack."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest

FusionBenchFile = Callable[[str, Mapping[str, Mapping[str, Any]]], types.ModuleType]


@pytest.fixture
def fusion_bench_file() -> FusionBenchFile:
    """``load(path, stubs)``: the module at ``path`` inside the installed fusion_bench package, executed with the
    modules ``stubs`` names (name -> its attributes) standing in for the imports it needs (its package imports
    far more than these tests have: hydra, lightning, omegaconf). Skips where fusion-bench (dev-only) is absent."""
    spec = importlib.util.find_spec("fusion_bench")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fusion-bench is not installed (dev-only)")
    root = Path(list(spec.submodule_search_locations)[0])

    def load(path: str, stubs: Mapping[str, Mapping[str, Any]]) -> types.ModuleType:
        name = "fusion_bench." + path.removesuffix(".py").replace("/", ".")
        packages = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        fakes = {p: types.ModuleType(p) for p in [*packages, *stubs]}
        for fake_name, attributes in stubs.items():
            for key, value in attributes.items():
                setattr(fakes[fake_name], key, value)
        saved = {p: sys.modules.get(p) for p in [*fakes, name]}
        sys.modules.update(fakes)
        try:
            module_spec = importlib.util.spec_from_file_location(name, root / path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        finally:
            for p, old in saved.items():
                if old is None:
                    sys.modules.pop(p, None)
                else:
                    sys.modules[p] = old
        return module

    return load
