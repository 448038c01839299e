"""Search config: every mistake names its field; paths resolve against the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge.errors import EvomergeError
from evomerge.run.config import SearchConfig, load_config


def write_config(tmp_path: Path, family: dict[str, Path], **changes) -> Path:
    data = {
        "name": "t",
        "sources": {"base": str(family["base"]), "models": [str(family["a"]), str(family["b"])]},
        "objectives": [{"task": "t1", "heldout_task": "t1_h"}],
        "strategy": {"name": "random"},
        "budget": {"max_evals": 3},
    }
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            data.setdefault(section, {})[key] = value
        else:
            data[section] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_config_round_trips_through_its_resolved_form(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_config(tmp_path, tiny_family))
    assert cfg.models == (tiny_family["a"], tiny_family["b"])
    assert SearchConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("changes,fragment", [
    ({"budget__max_evals": 0}, "budget.max_evals"),
    ({"strategy__name": "annealing"}, "unknown strategy 'annealing'"),
    ({"execution__backend": "slurm"}, "execution.backend"),
    ({"objectives": []}, "objectives"),
    ({"genome__bounds": {"weight": [2, 0]}}, "genome.bounds.weight"),
    ({"genome__methods": ["nope"]}, "unknown merge method 'nope'"),
    ({"sources__models": ["/no/such/model"]}, "model folder not found"),
    ({"budgett": {}}, "unknown field 'budgett'"),
])
def test_mistakes_name_the_field(tmp_path: Path, tiny_family, changes, fragment) -> None:
    with pytest.raises(EvomergeError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        load_config(write_config(tmp_path, tiny_family, **changes))
