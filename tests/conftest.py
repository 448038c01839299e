"""Shared fixtures: tiny model families built in code (no hub, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from xdist.scheduler import LoadScopeScheduling

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# scripts/test runs the suite in two processes (pytest-xdist), which take whole units of tests: a folder of SHARED
# (the tests of the SmolLM2 family, which build it; those that start Ray, one cluster at a time), else a file. The
# units that build a family come first, so the two builds start at once on the two processes.
SHARED = ("tests/real/", "tests/execution/")


def unit_of(nodeid: str) -> str:
    """The unit of tests one process runs together: a folder of SHARED, else a file."""
    path = nodeid.split("::", 1)[0]
    return next((folder for folder in SHARED if path.startswith(folder)), path)


def build_rank(item: pytest.Item) -> int:
    """0: the test needs the SmolLM2 family, 1: the default zoo, 2: neither (family builds take the longest)."""
    return 0 if "smol" in item.fixturenames else 1 if "zoo_dir" in item.fixturenames else 2


# A hang guard, not a time check, for every test that needs a family: whichever comes first also builds it (the zoo
# ~14 minutes beside the other test process on the 2-core CI machine, the SmolLM2 family longer: past the suite's
# 900 s once anything else shares the cores).
FAMILY_TIMEOUT = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank: dict[str, int] = {}
    for item in items:
        needs = build_rank(item)
        if needs < 2 and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(FAMILY_TIMEOUT))
        unit = unit_of(item.nodeid)
        rank[unit] = min(rank.get(unit, 2), needs)
    items.sort(key=lambda item: rank[unit_of(item.nodeid)])


class UnitScheduling(LoadScopeScheduling):
    """--dist loadscope with this suite's units (``unit_of``) as its scopes."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> UnitScheduling | None:
    return UnitScheduling(config, log) if config.getvalue("dist") == "loadscope" else None


def save_tiny_llama(path: Path, seed: int, *, base: Path | None = None, scale: float = 0.05) -> Path:
    """A 2-layer Llama with random weights; with ``base``, the base plus seeded noise (a 'fine-tune')."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if base is None:
        cfg = LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    else:
        model = LlamaForCausalLM.from_pretrained(base)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * scale)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base + three sources derived from it, as HF folders."""
    root = tmp_path_factory.mktemp("tiny_family")
    base = save_tiny_llama(root / "base", seed=0)
    family = {"base": base}
    for i, name in enumerate(["a", "b", "c"], start=1):
        family[name] = save_tiny_llama(root / name, seed=i, base=base)
    return family


ALPHABET = "abcdefgh=.:"


def save_char_tokenizer(folder: Path) -> None:
    """A character tokenizer over ALPHABET (ids below tiny models' vocab of 32), as HF files."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(ALPHABET)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.save_pretrained(folder)


def write_tasks(folder: Path, n_items: int = 12) -> dict[str, str]:
    """Two loglikelihood tasks (calibration + held-out each) over short strings of ALPHABET."""
    import json
    import random

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    names = {}
    for skill, fn in {"rev": lambda s: s[::-1], "dup": lambda s: s + s}.items():
        for split in ("calibration", "heldout"):
            items = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 4))) for _ in range(n_items)]
            data = folder / f"{skill}_{split}.jsonl"
            data.write_text("".join(json.dumps({"prompt": f"{skill[0]}:{s}=", "answer": fn(s) + "."}) + "\n"
                                    for s in items))
            task = f"tiny_{skill}" + ("_heldout" if split == "heldout" else "")
            (folder / f"{task}.yaml").write_text(
                f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                "test_split: test\noutput_type: loglikelihood\ndoc_to_text: '{{prompt}}'\n"
                "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\n"
                "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
                "  - {metric: perplexity, aggregation: perplexity, higher_is_better: false}\n"
            )
            names[f"{skill}_{split}"] = task
    return names


@pytest.fixture(scope="session")
def scored_family(tmp_path_factory: pytest.TempPathFactory, tiny_family: dict[str, Path]) -> dict[str, Path]:
    """tiny_family with a tokenizer in every folder, plus a task folder (key 'tasks')."""
    import shutil

    root = tmp_path_factory.mktemp("scored_family")
    out = {}
    for name, src in tiny_family.items():
        shutil.copytree(src, root / name)
        save_char_tokenizer(root / name)
        out[name] = root / name
    write_tasks(root / "tasks")
    out["tasks"] = root / "tasks"
    return out


@pytest.fixture
def trackio_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where trackio keeps its runs in tests. It reads TRACKIO_DIR once, at import, so every test uses this one
    folder of the session, and only tests that take this fixture import trackio."""
    folder = tmp_path_factory.getbasetemp() / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(folder))
    pytest.importorskip("trackio", reason="trackio (the track extra) is not installed")
    import trackio.utils

    assert trackio.utils.TRACKIO_DIR == folder, "trackio was imported before TRACKIO_DIR pointed at a temporary folder"
    return folder


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    """The default zoo (seed 0, llama), built once into the repo's gitignored zoo/ and reused by
    the tests, the demo and the benchmarks."""
    from evomerge.zoo import build_zoo

    return build_zoo(REPO / "zoo" / "seed0-llama", seed=0, arch="llama", progress=False).root


# mergekit-yaml's own entry point, imported once for the session: each merge is the command line
# ``mergekit-yaml CONFIG OUT --no-write-model-card --lazy-unpickle`` run in a fork of that process, so the import of
# mergekit, torch and transformers (seconds a merge, most of a differential test's time) is paid once, and no merge
# sees another's state (mergekit caches its loaders and architectures by model path, relative names included). The
# server's stdout carries the replies alone: what mergekit prints goes to stderr.
SERVE_MERGEKIT = """
import json, os, sys, traceback
from mergekit.scripts.run_yaml import main
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(request["cwd"])
            main.main(request["args"], standalone_mode=False)
            error = None
        except BaseException:
            error = traceback.format_exc()
        replies.write(json.dumps({"error": error}) + "\\n")
        replies.flush()
        os._exit(0)
    status = os.waitpid(pid, 0)[1]
    if status != 0:
        replies.write(json.dumps({"error": f"the merge's process died (wait status {status})"}) + "\\n")
        replies.flush()
"""


class Mergekit:
    """The differential tests' oracle: ``mergekit-yaml`` (a dev-only dependency) and a tensor-by-tensor comparison."""

    def __init__(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        self.process = subprocess.Popen([sys.executable, "-c", SERVE_MERGEKIT], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)

    def run(self, config: Path, out: Path, cwd: Path | None = None) -> Path:
        """mergekit's merge of ``config`` into ``out``; ``cwd`` is where relative model names are found."""
        args = [str(Path(config).resolve()), str(Path(out).resolve()), "--no-write-model-card", "--lazy-unpickle"]
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"args": args, "cwd": str(cwd or Path.cwd())}) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        assert reply, f"mergekit-yaml's process ended (exit {self.process.poll()}) on {config}"
        error = json.loads(reply)["error"]
        assert error is None, f"mergekit-yaml {config} failed:\n{error}"
        return out

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)

    @staticmethod
    def tensors(folder: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return {name: t for f in sorted(folder.glob("*.safetensors")) for name, t in load_file(f).items()}

    def assert_same_tensors(self, ours: Path, theirs: Path, what: str) -> None:
        """mergekit wrote every tensor evomerge wrote, each within 1e-5 relative L2 error."""
        got, want = self.tensors(ours), self.tensors(theirs)
        assert set(want) == set(got), f"{what}: mergekit wrote {sorted(want)}, evomerge {sorted(got)}"
        for name, w in want.items():
            err = float((got[name].double() - w.double()).norm() / w.double().norm().clamp(min=1e-12))
            assert err <= 1e-5, f"{what}: {name} differs from mergekit by {err:.2e} (relative L2)"


@pytest.fixture(scope="session")
def mergekit() -> Iterator[Mergekit]:
    oracle = Mergekit()
    yield oracle
    oracle.close()
