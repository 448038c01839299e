"""Finalists: the front's best members re-scored on held-out data, the baselines beside them, and the pick.

Raced candidates (``scoring.fidelity: racing``) carry estimates from a prefix of the calibration items: the
export completes only what it compares — the front's best K by calibration rank (the finalists, the
calibration pick first among them) are scored on every calibration item (a ``CompletedRecord``, reused
later), re-ranked, and completed again until the top K rest on full calibration scores only. Other front
members keep their estimates (the front and its plot show them as such); a pick by another rule
(knee, an index) is completed when picked.

The search only ever sees calibration scores, so the front is optimistic: its members were chosen
on the very items they are scored on. The finalists — the K front members with the best mean
normalized calibration score — are scored once more on the held-out tasks, by the run's worker,
and the result is appended to the log as a ``HeldoutRecord`` (keyed by genome; a later export or
report reuses it and never scores it again).

Pick rules (``evomerge export --pick``):
- ``calibration`` (default): the front member with the best mean normalized calibration score (ties:
  the lower index). Held-out data plays no part in the choice, so its held-out score is an honest
  estimate of how the model does on data the search never saw;
- ``heldout``: the finalist with the best mean normalized held-out score (ties: the better calibration
  score, then the lower index) — the held-out data chose it, so its held-out score is optimistic;
- ``knee``: the front member closest to the utopia point on calibration objectives (``evomerge.pareto``);
- an integer: that candidate, whatever its place.
The picked candidate is scored on held-out too when it is not a finalist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Callable, Sequence

from evomerge import pareto
from evomerge.config.search import SearchConfig
from evomerge.errors import EvomergeError
from evomerge.export.baselines import Baselines, evaluate_baselines
from evomerge.export.evaluator import Evaluate, Request
from evomerge.genome.space import GenomeSpace
from evomerge.run.log import RunLog
from evomerge.run.records import CandidateRecord, CompletedRecord, HeldoutRecord
from evomerge.scoring.normalize import Normalizer
from evomerge.scoring.objectives import WORST, directions, nonfinite, oriented, raw_values

DEFAULT_FINALISTS = 5
PICK_RULES = ("calibration", "heldout", "knee")


def parse_pick(text: str | int) -> str | int:
    if isinstance(text, int) or text in PICK_RULES:
        return text
    try:
        return int(text)
    except ValueError:
        raise EvomergeError("--pick must be 'calibration', 'heldout', 'knee' or a candidate index, got "
                            f"'{text}'") from None


@dataclass
class Analysis:
    """Everything export, card and report show about a run, all scored in that run."""

    run: RunLog
    cfg: SearchConfig
    candidates: list[CandidateRecord]  # every candidate record, in tell order
    front: list[CandidateRecord]
    finalists: list[CandidateRecord]  # best first by mean normalized calibration score
    heldout: dict[str, HeldoutRecord]  # genome key -> held-out record
    baselines: Baselines
    evaluate: Evaluate

    @cached_property
    def space(self) -> GenomeSpace:
        return self.run.space()

    @property
    def normalizer(self) -> Normalizer:
        return self.baselines.normalizer

    def calibration_raw(self, record: CandidateRecord) -> tuple[float, ...] | None:
        return raw_values(self.cfg.objectives, record.scores if record.ok else None, "calibration")

    def heldout_raw(self, record: CandidateRecord) -> tuple[float, ...] | None:
        held = self.heldout.get(record.key)
        return None if held is None else raw_values(self.cfg.objectives, held.scores, "heldout")

    def rescore(self, records: Sequence[CandidateRecord]) -> None:
        """Each candidate's held-out record, from the log or scored now (side by side) and appended in order."""
        missing = list({r.key: r for r in records if r.key not in self.heldout}.values())
        outcomes = self.evaluate.many([Request(self.space.to_recipe(r.x), "heldout", f"candidate {r.index}")
                                       for r in missing])
        for r, outcome in zip(missing, outcomes, strict=True):
            held = self.run.append(HeldoutRecord(r.key, r.index, outcome.scores, outcome.error, outcome.tokens))
            assert isinstance(held, HeldoutRecord)
            self.heldout[r.key] = held

    def candidate(self, index: int) -> CandidateRecord:
        """That candidate, with its full calibration scores (a raced one alone is its own front)."""
        return complete_front(self.run, [find_candidate(self.run, index)], self.evaluate)[0]

    def pick(self, rule: str | int) -> CandidateRecord:
        rule = parse_pick(rule)
        if isinstance(rule, int):
            record = self.candidate(rule)
        elif rule == "knee":
            record = self.candidate(pareto.knee(self.front, lambda r: r.objectives).index)  # completed if raced
        elif rule == "calibration":
            record = rank_on_calibration(self.front, self.normalizer, self.cfg)[0]
        else:
            if not self.finalists:
                raise EvomergeError("--pick heldout needs held-out finalists: use --rescore-heldout 1 or more, "
                                    "or --pick calibration / knee / an index")
            record = max(self.finalists, key=lambda r: (
                self.normalizer.rank(self.heldout_raw(r), "heldout"),
                self.normalizer.rank(self.calibration_raw(r), "calibration"),
                -r.index,
            ))
        self.rescore([record])
        return record


def find_candidate(run: RunLog, index: int) -> CandidateRecord:
    """The successful candidate with this index, or a user error saying why there is none."""
    candidates = run.candidates()
    for r in candidates:
        if r.index == index:
            if not r.ok:
                raise EvomergeError(f"candidate {index} failed during the search ({r.error}); pick a successful "
                                    "candidate")
            return r
    raise EvomergeError(f"no candidate {index} in {run.root} (indices 0-{len(candidates) - 1}); see 'evomerge report'")


def successful(candidates: Sequence[CandidateRecord]) -> list[CandidateRecord]:
    return [r for r in candidates if r.ok]


def analyze(run: RunLog, evaluate: Evaluate, *, finalists: int = DEFAULT_FINALISTS,
            upto: int | None = None, race_baselines: bool = True) -> Analysis:
    """Front, baselines (scored if missing), finalists re-scored on held-out (if missing).

    ``upto``: consider only the first ``upto`` candidates — the run as it stood at that budget
    (what an export would have picked then; benchmarks compare strategies at equal budgets).
    ``race_baselines`` False scores every grid member on every item (what ``bench_cost`` compares racing with)."""
    if finalists < 0:
        raise EvomergeError(f"--rescore-heldout must be >= 0, got {finalists}")
    cfg = run.config()
    run.space()  # every logged genome fits the run's genome space, checked before anything is scored
    candidates = run.candidates()[:upto]
    ok = successful(candidates)
    if not ok:
        raise EvomergeError(f"run {run.root} has no successful candidate yet ({len(candidates)} evaluated); continue "
                            f"it with 'evomerge resume {run.root}'")
    higher = directions(cfg.objectives, ok[0].scores)
    assert higher is not None
    baselines = evaluate_baselines(run, evaluate, higher, race=race_baselines)
    compared = max(finalists, 1)  # the finalists, and the calibration pick (the first of them)
    candidates = complete_front(run, candidates, evaluate,
                                lambda front: rank_on_calibration(front, baselines.normalizer, cfg)[:compared])
    ok = successful(candidates)
    front = pareto.front([r for r in ok if r.cached_from is None], lambda r: r.objectives)
    ranked = rank_on_calibration(front, baselines.normalizer, cfg)
    heldout = run.heldout()
    analysis = Analysis(run, cfg, candidates, front, ranked[:finalists], heldout, baselines, evaluate)
    analysis.rescore(analysis.finalists)
    return analysis


def complete_front(run: RunLog, candidates: list[CandidateRecord], evaluate: Evaluate,
                   compared: Callable[[list[CandidateRecord]],
                                      list[CandidateRecord]] | None = None) -> list[CandidateRecord]:
    """The candidates with full calibration scores wherever the export compares them: the raced members of the
    front that ``compared`` selects (default: all of it; ``analyze``: the finalists by calibration rank) are
    scored on every item (read back from the log, or scored now and logged) until those selected from the
    front hold full scores only; the other candidates keep their estimates."""
    cfg, space = run.config(), run.space()
    done = {r.key: r for r in run.of_type(CompletedRecord)}
    while True:
        candidates = [completed(cfg, r, done.get(r.key)) for r in candidates]
        front = pareto.front([r for r in successful(candidates) if r.cached_from is None], lambda r: r.objectives)
        partial = [r for r in (front if compared is None else compared(front)) if r.items is not None
                   and r.key not in done]
        if not partial:
            return candidates
        outcomes = evaluate.many([Request(space.to_recipe(r.x), "calibration",
                                          f"candidate {r.index} on every calibration item") for r in partial])
        for r, outcome in zip(partial, outcomes, strict=True):
            record = run.append(CompletedRecord(r.key, r.index, outcome.scores, outcome.error, outcome.tokens))
            assert isinstance(record, CompletedRecord)
            done[r.key] = record


def completed(cfg: SearchConfig, record: CandidateRecord, full: CompletedRecord | None) -> CandidateRecord:
    """A raced candidate's record with its scores on every calibration item, when it has them."""
    if full is None or record.items is None:
        return record
    error = full.error if full.scores is None else nonfinite(cfg.objectives, full.scores)
    objectives = tuple(WORST for _ in cfg.objectives) if error else oriented(cfg.objectives, full.scores)
    return replace(record, scores=full.scores, error=error, objectives=objectives)


def rank_on_calibration(front: Sequence[CandidateRecord], norm: Normalizer, cfg: SearchConfig) -> list[CandidateRecord]:
    """Best first by mean normalized calibration score of the reported metrics (ties: the lower index)."""
    return sorted(front, key=lambda r: (norm.rank(raw_values(cfg.objectives, r.scores, "calibration"), "calibration"),
                                        -r.index),
                  reverse=True)
