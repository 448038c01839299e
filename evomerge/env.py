"""The environment variables evomerge's processes run under, set in one place.

Hugging Face offline: models, tokenizers and data sets come from local folders, never the network
(a missing file is an error, not a download). Libraries read these once, when they are imported,
so each entry point sets them first; a value the user exported wins (``setdefault``).
"""

from __future__ import annotations

import os

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # huggingface_hub and datasets: local files only
QUIET = {"TOKENIZERS_PARALLELISM": "false"}  # no warning from tokenizers when a process forks


def offline_env(*, quiet: bool = False) -> dict[str, str]:
    """The offline variables, and with ``quiet`` the tokenizers' too: for a process started elsewhere (a Ray actor)."""
    return {**OFFLINE, **(QUIET if quiet else {})}


def set_offline_env(*, quiet: bool = False) -> None:
    """Set ``offline_env(quiet=quiet)`` in this process, keeping any value already set."""
    for name, value in offline_env(quiet=quiet).items():
        os.environ.setdefault(name, value)
