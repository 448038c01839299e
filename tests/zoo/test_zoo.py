"""The zoo: conditions (a) and (b) on a fresh evaluation, layout and data splits, the training probe's agreement
with lm-eval, the ceiling script, determinism (the same bytes on every machine), caching, offline loading."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from evomerge.env import run_reproducibly
from evomerge.errors import EvomergeError
from evomerge.recipes.fixed import MERGE_FAMILIES
from evomerge.zoo import build_zoo, load_zoo
from evomerge.zoo.build import BUILDER_VERSION, N_CALIBRATION, N_HELDOUT
from evomerge.zoo.ceiling import search_ceiling
from evomerge.zoo.check import CONDITIONS, check_fixed, conditions
from evomerge.zoo.skills import EXPERT_SKILLS, FORMATS, TERMINATOR, Sampler, letters_of
from evomerge.zoo.tokenizer import encode

QUICK_STEPS = 3  # enough for every model to move away from its init; these tests are about bytes and files
REPO = Path(__file__).resolve().parents[2]
# SHA-256 of each model file of seed 0 (llama), as every x86-64 CPU with AVX2 builds them (evomerge.env.REPRODUCIBLE):
# the full zoo and the quick one (QUICK_STEPS). Recorded with builder version 4, torch 2.13.0+cpu (MKL 2024.2) and
# transformers 5.25.0; a change of the builder (bump BUILDER_VERSION) or of those libraries may change them.
SEED0_SHA256 = {
    "base": "0d171fd228569124d7dfdc784228c4bf7fd6012861482f7b40e5da86d17e3630",
    "rev": "ee11b7bfacdafca52c2b4abd5acb6f3fbe4c9c0b029547f63cb4cfb9939ed20e",
    "sort": "fd75227861ea6efbe156ec6f607dbdd260001920312a40fd5b7b343c635a0019",
    "up": "098ae922444ae94f2806914a6a30656e311079896ffda752728c116919bc32fe",
    "dup": "5e9ae87afcd6fb61bd7f45ba18c0c4e69684c24c1cd344300005082bfe33930f",
}
QUICK_SEED0_SHA256 = {
    "base": "be8b5d8c1d6da770cb9116dbe3cc74e704f05bca6d7bacf18d98668e1cc5a8db",
    "rev": "edefbddb45eb18f82783a769685101b87d2ad4fef0caaeaba4ae8a3a396953e6",
    "sort": "bd824f4a8ca995aa5974ba7cfd82a5dc92e70559b9fef1c9770d76b68368a1a0",
    "up": "76afaa46ef7b8e8e8e5fbce863ad1a6725e6e51b88f860d2ed3c74f9f451d05e",
    "dup": "9a057c8ea619a6f465b3dda84cf5cac1a454700d7a808c3e33236cc608ce8857",
}


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def cpu_name() -> str:
    """The CPU's model name where Linux tells it, else the machine's architecture."""
    import platform

    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (info.read_text().splitlines() if info.is_file() else [])
             if line.startswith("model name")]
    return names[0] if names else platform.machine()


def assert_recorded_bytes(root: Path, expected: dict[str, str], what: str) -> None:
    """Each model file of the zoo in ``root`` has the SHA-256 recorded for it, or a failure naming those that differ."""
    import torch
    import transformers

    digests = {name: hashlib.sha256((root / "models" / name / "model.safetensors").read_bytes()).hexdigest()
               for name in expected}
    differ = [f"{name} is {digests[name][:12]}…, recorded {sha[:12]}…" for name, sha in expected.items()
              if digests[name] != sha]
    assert not differ, (
        f"{what}: {'; '.join(differ)}. The zoo is not CPU-independent on this machine ({cpu_name()}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}): docs/ZOO.md promises the same bytes on every "
        f"x86-64 CPU with AVX2. After a deliberate change of the builder or of those libraries, bump BUILDER_VERSION "
        f"and record the new digests here.")


@pytest.fixture(scope="module")
def quick_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zoo(tmp_path_factory.mktemp("quick") / "zoo", seed=0, steps=QUICK_STEPS, progress=False).root


@pytest.mark.slow
def test_default_zoo_meets_a_and_b_on_a_fresh_evaluation(zoo_dir: Path) -> None:
    zoo = load_zoo(zoo_dir)
    # Under the build's own math settings: scores computed with other kernels may differ from the manifest's.
    fresh = run_reproducibly(check_fixed, zoo.family())
    verdicts = conditions(fresh)
    assert verdicts[CONDITIONS["a"]][0] and verdicts[CONDITIONS["b"]][0], verdicts
    for key in ("table", "calibration_table", "fixed"):  # the manifest reports what the folders hold
        assert fresh[key] == zoo.quality[key]


def test_quick_build_layout_and_manifest(quick_zoo: Path) -> None:
    zoo = load_zoo(quick_zoo)
    assert (zoo.seed, zoo.arch) == (0, "llama") and set(zoo.experts) == set(EXPERT_SKILLS)
    assert json.loads((quick_zoo / "zoo.json").read_text())["builder_version"] == BUILDER_VERSION == 4
    for skill, files in zoo.skills.items():
        assert zoo.experts[skill] == zoo.root / "models" / skill
        assert (zoo.experts[skill] / "model.safetensors").is_file()
        for task, data in ((files.task, files.calibration), (files.heldout_task, files.heldout)):
            text = (zoo.task_dir / f"{task}.yaml").read_text()
            assert f"task: {task}\n" in text and str(data) in text  # absolute data paths: lm-eval runs from anywhere
    q = zoo.quality
    assert list(q["fixed"]) == list(MERGE_FAMILIES) and set(q["table"]) == set(q["calibration_table"])
    assert {f["name"] for f in q["fixed"].values()} <= set(q["table"])
    assert q["conditions"][CONDITIONS["c"]]["holds"] is None  # judged by scripts/zoo_ceiling.py, not by the build


def test_calibration_and_heldout_are_large_and_disjoint(quick_zoo: Path) -> None:
    assert (N_CALIBRATION, N_HELDOUT) == (256, 512)
    for files in load_zoo(quick_zoo).skills.values():
        calibration, heldout = read_jsonl(files.calibration), read_jsonl(files.heldout)
        assert (len(calibration), len(heldout)) == (N_CALIBRATION, N_HELDOUT)
        prompts = [it["prompt"] for it in calibration + heldout]
        assert len(set(prompts)) == len(prompts)  # no item twice, within or across the two splits
        assert all(it["answer"].endswith(TERMINATOR) for it in calibration + heldout)


def test_training_never_draws_an_evaluation_string(quick_zoo: Path) -> None:
    evaluation = letters_of(it for files in load_zoo(quick_zoo).skills.values()
                            for path in (files.calibration, files.heldout) for it in read_jsonl(path))
    drawn = letters_of(Sampler({f: 1.0 for f in FORMATS}, "any-seed", evaluation).items(20_000))
    assert len(drawn) > 5_000 and not drawn & evaluation


@pytest.mark.slow
def test_the_grid_scored_in_worker_shares_equals_one_process(zoo_dir: Path) -> None:
    from evomerge.zoo.train import worker_pool

    family = replace(load_zoo(zoo_dir).family(), items=64)
    grid = {"lambdas": (0.2, 0.4, 0.6), "densities": (0.5,)}
    alone = check_fixed(family, **grid)
    assert len({f["calibration"] for f in alone["fixed"].values()}) > 1  # scores that tell the recipes apart
    with worker_pool(2) as pool:
        shared = check_fixed(family, **grid, pool=pool, parts=2)
    assert shared == alone


def test_ceiling_script_records_c_and_fails_naming_it_on_a_zoo_without_room(quick_zoo: Path, tmp_path: Path) -> None:
    zoo_dir = shutil.copytree(quick_zoo, tmp_path / "zoo")
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "zoo_ceiling.py"), str(zoo_dir), "--evaluations", "1",
                          "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 1, run.stderr
    assert f"misses condition {CONDITIONS['c']}" in run.stderr  # 3 training steps teach nothing: no room
    q = load_zoo(zoo_dir).quality
    assert q["ceiling"]["evaluations"] == 1  # the start point only: the best fixed task-arithmetic recipe
    assert q["ceiling"]["start_lambda"] == q["fixed"]["task_arithmetic"]["params"]["lam"]
    assert q["conditions"][CONDITIONS["c"]]["holds"] is False


@pytest.mark.slow
def test_ceiling_search_improves_on_its_start_and_repeats_exactly(zoo_dir: Path) -> None:
    family = replace(load_zoo(zoo_dir).family(), items=64)
    runs = [search_ceiling(family, 0.4, evaluations=40, seed=1) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0]["heldout"] > runs[0]["start"]


@pytest.mark.slow
def test_training_probe_agrees_with_lm_eval_acc(zoo_dir: Path) -> None:
    """The exact match the base's training calibrates its mixture with is lm-eval's `acc` on the zoo's task YAMLs."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.zoo.skills import batch
    from evomerge.zoo.train import exact_match

    zoo = load_zoo(zoo_dir)
    folder = zoo.experts["sort"]
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(folder, local_files_only=True), batch_size=64)
    tasks = [zoo.skills[s].heldout_task for s in ("sort", "up")]
    results = simple_evaluate(model=lm, tasks=tasks,
                              task_manager=TaskManager(include_path=str(zoo.task_dir), include_defaults=False))
    for skill, task in zip(("sort", "up"), tasks, strict=True):
        probe = exact_match(model, *batch(read_jsonl(zoo.skills[skill].heldout))).float().mean().item()
        assert results["results"][task]["acc,none"] == pytest.approx(probe)


@pytest.mark.slow
def test_seed0_zoo_has_the_recorded_bytes_on_every_machine(zoo_dir: Path) -> None:
    assert_recorded_bytes(zoo_dir, SEED0_SHA256, "the seed-0 zoo")


def test_quick_seed0_zoo_has_the_recorded_bytes_on_every_machine(quick_zoo: Path) -> None:
    assert_recorded_bytes(quick_zoo, QUICK_SEED0_SHA256, f"the seed-0 zoo of {QUICK_STEPS} steps")


def test_another_seed_gives_other_bytes(quick_zoo: Path, tmp_path: Path) -> None:
    """The same seed's same bytes are the recorded digests above (a build anywhere equals them)."""
    other = build_zoo(tmp_path / "other", seed=1, steps=QUICK_STEPS, progress=False)
    for name in ["base", *EXPERT_SKILLS]:
        path = Path("models") / name / "model.safetensors"
        assert (quick_zoo / path).read_bytes() != (other.root / path).read_bytes(), name


def test_a_built_zoo_is_loaded_not_rebuilt(quick_zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object) -> None:
        raise AssertionError("the cached zoo was built again")

    monkeypatch.setattr("evomerge.zoo.build.run_reproducibly", no_build)
    files = sorted(p for p in quick_zoo.rglob("*") if p.is_file())
    before = [p.stat().st_mtime_ns for p in files]
    zoo = build_zoo(quick_zoo, seed=0, steps=QUICK_STEPS, progress=False)
    assert (zoo.root, zoo.seed, zoo.arch) == (quick_zoo, 0, "llama")
    assert [p.stat().st_mtime_ns for p in files] == before


def test_user_mistakes_are_evomerge_errors(tmp_path: Path) -> None:
    with pytest.raises(EvomergeError, match="transformer-xl"):
        build_zoo(tmp_path / "z", arch="transformer-xl")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(EvomergeError, match="not empty"):
        build_zoo(tmp_path / "busy", steps=QUICK_STEPS)
    with pytest.raises(EvomergeError, match="no zoo"):
        load_zoo(tmp_path / "busy")


def test_folders_load_offline_with_auto_classes(quick_zoo: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    zoo = load_zoo(quick_zoo)
    for folder in [zoo.base, *zoo.experts.values()]:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
        assert model.config.vocab_size == len(tokenizer) and model.config.bos_token_id is None
        assert GenerationConfig.from_pretrained(folder, local_files_only=True).do_sample is False


def test_tokenizer_round_trips_without_bos(quick_zoo: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(quick_zoo / "models" / "base", local_files_only=True)
    for skill in EXPERT_SKILLS:
        for item in read_jsonl(load_zoo(quick_zoo).skills[skill].heldout)[:20]:
            text = item["prompt"] + item["answer"]
            ids = tokenizer(text)["input_ids"]  # default special-token handling: adds nothing
            assert ids == encode(text) and len(ids) == len(text)
            assert tokenizer.decode(ids) == text
    assert tokenizer.bos_token is None and tokenizer("?")["input_ids"] == [tokenizer.unk_token_id]
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("<pad>", "<eos>", "<unk>")
