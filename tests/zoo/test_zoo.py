"""The zoo: its conditions on a fresh evaluation, lm-eval agreement, determinism, caching, offline loading."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from evomerge.errors import EvomergeError
from evomerge.zoo import build_zoo, load_zoo
from evomerge.zoo.check import conditions, quality_table
from evomerge.zoo.skills import EXPERT_SKILLS, TERMINATOR
from evomerge.zoo.tokenizer import encode

QUICK_STEPS = 3  # enough for every model to move away from its init; these tests are about bytes and files


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def quick_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zoo(tmp_path_factory.mktemp("quick") / "zoo", seed=0, steps=QUICK_STEPS, progress=False).root


@pytest.mark.slow
def test_default_zoo_meets_every_condition_on_a_fresh_evaluation(zoo_dir: Path) -> None:
    zoo = load_zoo(zoo_dir)
    heldout = {skill: read_jsonl(files.heldout) for skill, files in zoo.skills.items()}
    table = quality_table(zoo.base, zoo.experts, heldout)
    verdicts = conditions(table)
    assert all(holds for holds, _ in verdicts.values()), verdicts
    assert table == zoo.quality["table"]  # the manifest reports what the folders hold


@pytest.mark.slow
def test_default_zoo_layout(zoo_dir: Path) -> None:
    zoo = load_zoo(zoo_dir)
    assert (zoo.seed, zoo.arch) == (0, "llama") and set(zoo.experts) == set(EXPERT_SKILLS)
    for skill, files in zoo.skills.items():
        assert zoo.experts[skill] == zoo.root / "models" / skill
        calibration, heldout = read_jsonl(files.calibration), read_jsonl(files.heldout)
        assert (len(calibration), len(heldout)) == (64, 256)
        assert not {it["prompt"] for it in calibration} & {it["prompt"] for it in heldout}
        assert all(it["answer"].endswith(TERMINATOR) for it in calibration + heldout)
        for task, data in ((files.task, files.calibration), (files.heldout_task, files.heldout)):
            text = (zoo.task_dir / f"{task}.yaml").read_text()
            assert f"task: {task}\n" in text and str(data) in text  # absolute data paths: lm-eval runs from anywhere


@pytest.mark.slow
def test_internal_scorer_agrees_with_lm_eval_acc(zoo_dir: Path) -> None:
    """The build's fast exact match is lm-eval's `acc` on the zoo's own task YAMLs."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    zoo = load_zoo(zoo_dir)
    folder = zoo.experts["sort"]
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(folder, local_files_only=True), batch_size=64)
    tasks = [zoo.skills[s].heldout_task for s in ("sort", "up")]
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(zoo.task_dir), include_defaults=False))
    for skill, task in zip(("sort", "up"), tasks):
        assert results["results"][task]["acc,none"] == pytest.approx(zoo.quality["table"]["expert sort"][skill])


def test_same_seed_same_bytes_other_seed_other_bytes(quick_zoo: Path, tmp_path: Path) -> None:
    again = build_zoo(tmp_path / "again", seed=0, steps=QUICK_STEPS, progress=False)
    other = build_zoo(tmp_path / "other", seed=1, steps=QUICK_STEPS, progress=False)
    for name in ["base", *EXPERT_SKILLS]:
        path = Path("models") / name / "model.safetensors"
        assert (quick_zoo / path).read_bytes() == (again.root / path).read_bytes(), name
        assert (quick_zoo / path).read_bytes() != (other.root / path).read_bytes(), name


def test_cache_returns_at_once(quick_zoo: Path) -> None:
    start = time.perf_counter()
    zoo = build_zoo(quick_zoo, seed=0, steps=QUICK_STEPS, progress=False)
    assert time.perf_counter() - start < 1.0
    assert (zoo.root, zoo.seed, zoo.arch) == (quick_zoo, 0, "llama")


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
