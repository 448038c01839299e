"""The one offline-environment helper: every entry point sets the same variables, and a user's own value wins."""

from __future__ import annotations

import os

import pytest

from evomerge.env import OFFLINE, QUIET, offline_env, set_offline_env


def test_set_offline_env_sets_what_is_missing_and_keeps_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    set_offline_env()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "0"
    assert "TOKENIZERS_PARALLELISM" not in os.environ
    set_offline_env(quiet=True)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_ray_workers_get_the_same_variables() -> None:
    from evomerge.execution.ray_cluster import WORKER_ENV

    assert offline_env(quiet=True) == {**OFFLINE, **QUIET}
    assert {k: WORKER_ENV[k] for k in offline_env(quiet=True)} == offline_env(quiet=True)
