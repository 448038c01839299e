"""The fixed recipes: the TSV-M, RegMean and Fisher families and the greedy soup's trial soups."""

from __future__ import annotations

from pathlib import Path

from evomerge.recipes.fixed import calibrated_recipes, fixed_recipes, merges, soup_of


def test_tsvm_joins_the_fixed_recipes_at_its_paper_default() -> None:
    (tsvm,) = fixed_recipes(3)["tsvm"]
    assert (tsvm.method, dict(tsvm.source_params), dict(tsvm.params)) == ("tsvm", {"weight": (1.0, 1.0, 1.0)},
                                                                          {"lam": 1.0})


def test_a_soup_of_some_sources_weighs_them_equally_in_the_greedy_soup_family() -> None:
    soup = soup_of([2, 0], 4, ("a", "b", "c", "d"))
    assert soup.source_params["weight"] == (0.5, 0.0, 0.5, 0.0) and soup.family == "greedy_soup"
    assert soup.name == "greedy_soup@0+2" and soup.label == "greedy soup (a + c)"


def test_a_soup_of_one_or_all_sources_shares_the_name_and_merge_of_that_row() -> None:
    families = fixed_recipes(3)
    for members, row in (([1], families["source1"][0]), ([0, 1, 2], families["soup"][0])):
        soup = soup_of(members, 3)
        assert (soup.name, soup.method, soup.source_params) == (row.name, row.method, row.source_params)


def test_the_best_fixed_recipe_is_chosen_among_merges_only() -> None:
    assert [f for f in fixed_recipes(2) if not merges(f)] == ["base", "source0", "source1"]
    assert merges("greedy_soup") and merges("tsvm")
    assert merges("regmean") and merges("fisher")


def test_regmean_is_a_baseline_at_its_default_apart_from_the_data_free_families() -> None:
    (regmean,) = calibrated_recipes(3)["regmean"]
    assert (regmean.method, dict(regmean.source_params), dict(regmean.params)) == ("regmean", {}, {"alpha": 0.9})
    assert "regmean" not in fixed_recipes(3)  # the zoo's checks score fixed_recipes and have no statistics


def test_fisher_averaging_is_a_baseline_at_its_paper_default_apart_from_the_data_free_families() -> None:
    (fisher,) = calibrated_recipes(3)["fisher"]
    assert (fisher.method, dict(fisher.source_params), dict(fisher.params)) == (
        "fisher", {"weight": (1.0, 1.0, 1.0)}, {"epsilon": 1e-6})
    assert "fisher" not in fixed_recipes(3)


def test_only_a_method_that_needs_statistics_names_the_folder_in_its_recipe() -> None:
    base, sources, folder = Path("/m/base"), (Path("/m/a"), Path("/m/b")), Path("/run/statistics")
    (regmean,) = calibrated_recipes(2)["regmean"]
    assert regmean.recipe(base, sources, statistics=folder).statistics == folder
    assert fixed_recipes(2)["tsvm"][0].recipe(base, sources, statistics=folder).statistics is None
