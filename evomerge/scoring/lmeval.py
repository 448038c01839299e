"""The private lm-eval names scoring relies on, checked in one place.

lm-eval has no public way to do two things evomerge needs: read a task's full YAML config without
building the task (``catalog``: a config's metrics and filters are checked before a run folder
exists, and building a task loads its dataset), and replace the token-level step under HFLM's
``loglikelihood`` (``FastHFLM`` runs plans built once per worker there). Both use private names, which
a release can move or re-sign without notice. ``require_internals`` turns that into one line naming
the lm-eval versions evomerge is tested with (``LM_EVAL_VERSIONS``, pyproject's requirement; a test
keeps the two equal and fails on a version whose internals moved).
"""

from __future__ import annotations

import functools
import inspect
from importlib.metadata import version
from typing import Any, Callable

from evomerge.errors import EvomergeError

LM_EVAL_VERSIONS = ">=0.4.13,<0.4.14"


def missing_internals() -> list[str]:
    """The private lm-eval names evomerge uses that the installed lm-eval lacks or signs differently."""
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._factory import TaskFactory

    checks = {
        "TaskManager._factory (set in TaskManager.__init__)": "_factory" in TaskManager.__init__.__code__.co_names,
        "TaskFactory._load_full_config(entry, overrides)":
            _takes(getattr(TaskFactory, "_load_full_config", None), ["self", "entry", "overrides"]),
        "HFLM._encode_pair(context, continuation)":
            _takes(getattr(HFLM, "_encode_pair", None), ["self", "context", "continuation"]),
        "HFLM._loglikelihood_tokens(requests, disable_tqdm, override_bs)":
            _takes(getattr(HFLM, "_loglikelihood_tokens", None), ["self", "requests", "disable_tqdm", "override_bs"]),
        "TemplateLM.loglikelihood calling _encode_pair and _loglikelihood_tokens":
            {"_encode_pair", "_loglikelihood_tokens"} <= set(TemplateLM.loglikelihood.__code__.co_names),
    }
    return [name for name, present in checks.items() if not present]


def _takes(fn: Callable[..., Any] | None, names: list[str]) -> bool:
    return fn is not None and list(inspect.signature(fn).parameters)[: len(names)] == names


@functools.cache
def require_internals() -> None:
    """Refuse, in one line, an lm-eval whose private names moved; once per process."""
    try:
        missing = missing_internals()
    except ImportError as e:  # a module moved
        missing = [f"the module {e.name}"]
    if missing:
        raise EvomergeError(f"lm-eval {version('lm_eval')} lacks {missing[0]}, which evomerge's scoring uses; "
                            f"install a supported version: pip install 'lm-eval[hf]{LM_EVAL_VERSIONS}'")


def task_config(manager: Any, entry: Any) -> dict[str, Any]:
    """A task's full YAML config (includes resolved), as ``manager`` reads it to build the task."""
    require_internals()
    config: dict[str, Any] = manager._factory._load_full_config(entry, None)
    return config
