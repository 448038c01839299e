"""Scoring uses private lm-eval names: a version that moved them fails here by name, and at run time in one line."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
from lm_eval.models.huggingface import HFLM
from packaging.specifiers import SpecifierSet

from evomerge.errors import EvomergeError
from evomerge.scoring.lmeval import LM_EVAL_VERSIONS, missing_internals, require_internals

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_private_lm_eval_names_scoring_uses_are_there() -> None:
    assert missing_internals() == [], f"lm-eval {version('lm_eval')} moved what evomerge's scoring uses"


def test_the_installed_lm_eval_is_a_supported_version() -> None:
    assert version("lm_eval") in SpecifierSet(LM_EVAL_VERSIONS)


def test_pyproject_requires_the_supported_versions() -> None:
    assert f'"lm-eval[hf]{LM_EVAL_VERSIONS}"' in PYPROJECT.read_text()


def test_a_moved_internal_is_one_line_naming_it_and_the_supported_versions(monkeypatch) -> None:
    monkeypatch.setattr(HFLM, "_loglikelihood_tokens", lambda self, requests: [])
    require_internals.cache_clear()
    try:
        with pytest.raises(EvomergeError) as info:
            require_internals()
    finally:
        require_internals.cache_clear()
    message = str(info.value)
    assert "HFLM._loglikelihood_tokens" in message and "\n" not in message
    assert re.search(re.escape(f"pip install 'lm-eval[hf]{LM_EVAL_VERSIONS}'") + "$", message)
