"""Seed points: the fixed recipes a user would try first, as genomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.genome.space import GenomeSpace
from evomerge.genome.starts import DENSITIES, LAMBDAS, SCHEDULES, seed_points, unit_depths

GROUPS = ["embed", "layers.0", "layers.1", "layers.2", "final_norm"]


def space(methods: list[str]) -> GenomeSpace:
    return GenomeSpace(GROUPS, base=Path("/b"), sources=[Path("/s0"), Path("/s1")], methods=methods)


def decoded(s: GenomeSpace) -> list[dict]:
    return [s.decode(x) for x in seed_points(s)]


def test_task_arithmetic_grid_then_each_source_alone_come_first() -> None:
    specs = decoded(space(["task_arithmetic"]))
    grid = [w for spec in specs[: len(LAMBDAS)] for w in spec["layers.1"].source_params["weight"]]
    assert grid == pytest.approx([lam for lam in LAMBDAS for _ in range(2)])
    alone = [spec["embed"].source_params["weight"] for spec in specs[len(LAMBDAS): len(LAMBDAS) + 2]]
    assert alone == [(1.0, 0.0), (0.0, 1.0)]


def test_sparsifying_methods_start_at_their_usual_densities() -> None:
    s = space(["task_arithmetic", "ties"])
    ties = [spec for spec in decoded(s) if spec["layers.0"].method == "ties"]
    densities = [d for spec in ties for d in spec["layers.0"].source_params["density"]]
    assert densities == pytest.approx([d for d in DENSITIES for _ in range(2)])


def test_depth_schedules_change_the_weight_linearly_from_the_first_layer_to_the_last() -> None:
    specs = decoded(space(["task_arithmetic"]))[-len(SCHEDULES):]
    for spec, (start, end) in zip(specs, SCHEDULES, strict=True):
        layers = [spec[f"layers.{i}"].source_params["weight"][0] for i in range(3)]
        assert layers == pytest.approx([start, (start + end) / 2, end])


def test_unit_depths_place_embeddings_first_and_the_head_last() -> None:
    units = ("embed", "layers.0-1:mlp", "layers.2-3:mlp", "final_norm", "lm_head")
    assert unit_depths(units) == {"embed": 0.0, "layers.0-1:mlp": 0.0, "layers.2-3:mlp": 1.0, "final_norm": 1.0,
                                  "lm_head": 1.0}


def test_no_point_is_proposed_twice() -> None:
    points = seed_points(space(["task_arithmetic", "ties", "dare_ties"]))
    assert len(points) == len(set(points))


def test_a_genome_of_normalizing_methods_skips_weight_scales_that_cancel() -> None:
    specs = decoded(space(["ties"]))  # TIES divides by the weights' sum: a common scale changes nothing
    assert [spec["embed"].source_params["weight"] for spec in specs[:2]] == [(1.0, 0.0), (0.0, 1.0)]
    assert len(specs) == 2 + len(DENSITIES)
