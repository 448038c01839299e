"""``random``: uniform points of the box — the baseline every search must beat."""

from __future__ import annotations

from dataclasses import dataclass, field

from evomerge.strategies.base import Candidate, Evaluation, Strategy, as_point


@dataclass(frozen=True)
class RandomOptions:
    # consecutive proposals reported as one "generation" in logs and plots
    generation_size: int = field(default=16, metadata={"ge": 1})


class RandomSearch(Strategy):
    """The ``initial`` points, then independent uniform draws; never waits for results."""

    name = "random"
    Options = RandomOptions

    def _setup(self) -> None:
        self._gen = self._rng(0)
        self._drawn = 0

    def _ask(self) -> Candidate | None:
        first = self._next_initial()
        if first is not None:
            return first
        generation = 1 + self._drawn // self.options.generation_size
        self._drawn += 1
        return Candidate(x=as_point(self._gen.random(self.dim)), operator="random", generation=generation)

    def _tell(self, index: int, candidate: Candidate, evaluation: Evaluation) -> None:
        pass
