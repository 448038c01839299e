"""The model card (README.md) of an exported model, and the score tables it shares with the report.

The card is ready for the Hugging Face hub: YAML front matter with ``base_model`` (every merged
model), ``base_model_relation: merge``, ``library_name``, ``tags`` and the base's license when its own
card declares one. Models are named as the config names them (``sources.names``, hub ids), else by
folder name, so the card holds no local path. Sections: what the model is; the source models with the
SHA-256 fingerprints the run recorded; the genome, one row per layer group; the model's scores on the
search (calibration) and held-out tasks, raw and normalized; the baselines scored in the same run; how
to rebuild it, with evomerge and with mergekit.
"""

from __future__ import annotations

import html
import math
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

from evomerge.config.schema import parse_yaml
from evomerge.errors import EvomergeError
from evomerge.export.finalists import Analysis
from evomerge.recipes.recipe import GroupSpec, Recipe
from evomerge.run.log import evomerge_version
from evomerge.run.records import CandidateRecord
from evomerge.scoring.normalize import mean
from evomerge.scoring.objectives import metric_name

PARAM_ORDER = ("weight", "density")
LICENSE_KEYS = ("license", "license_name", "license_link")  # the hub's license fields ("other" needs the last two)
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


def md(text: str) -> str:
    """User text (a model, task or run name) as literal inline Markdown: HTML and the characters that start markup or
    split a table cell are escaped, line breaks become spaces, so any name renders as itself and nothing more.
    An underscore inside a word (``t0_heldout``) starts no emphasis and stays as it is."""
    text = html.escape(" ".join(str(text).splitlines()), quote=False)
    text = re.sub(r"([\\`*\[\]|~])", r"\\\1", text)
    return re.sub(r"(?<![^\W_])_|_(?![^\W_])", r"\\_", text)


def code(text: str) -> str:
    """User text as an inline code span (shown verbatim, HTML included): a fence longer than any backtick run inside,
    table pipes escaped (GitHub splits cells before it reads code spans), line breaks become spaces."""
    text = " ".join(str(text).splitlines()).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def cell(raw: float | None, norm: float) -> str:
    return f"{fmt(raw)} ({fmt(norm, 2)})" if raw is not None and math.isfinite(raw) else "–"


def comparison_rows(analysis: Analysis, record: CandidateRecord | None, label: str) -> list[tuple[str, Any, Any]]:
    """(label, calibration raw, held-out raw): the candidate first (when given), then every baseline."""
    rows: list[tuple[str, Any, Any]] = []
    if record is not None:
        rows.append((label, analysis.calibration_raw(record), analysis.heldout_raw(record)))
    rows.extend((b.label, b.calibration, b.heldout) for b in analysis.baselines.rows)
    return rows


def comparison_table(analysis: Analysis, record: CandidateRecord | None, label: str) -> list[str]:
    """Held-out raw (normalized) per objective, their mean normalized, and the calibration mean."""
    norm = analysis.normalizer
    objectives = analysis.cfg.objectives
    tasks = [md(o.task_for("heldout")) for o in objectives]
    head = ["model", *tasks, "mean norm. (held-out)", "mean norm. (calibration)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (name, cal, held) in enumerate(comparison_rows(analysis, record, label)):
        ours = record is not None and i == 0  # ``label`` is the caller's Markdown; a baseline's label holds model names
        held_norm = norm.normalize(held, "heldout")
        cells = [cell(None if held is None else held[j], held_norm[j]) for j in range(len(objectives))]
        if held is None:
            cells = ["not scored" if ours else "failed"] * len(objectives)
        means = [fmt(norm.mean(held, "heldout"), 2), fmt(norm.mean(cal, "calibration"), 2)]
        lines.append("| " + " | ".join([name if ours else md(name), *cells, *means]) + " |")
    return lines


def gain_line(analysis: Analysis, chosen: CandidateRecord, label: str) -> str:
    """The one number a search is run for: the candidate's mean normalized held-out score minus the best fixed recipe's.

    The best fixed recipe is the merge baseline with the best *held-out* score (each grid's setting itself chosen on
    calibration): the most a user could have had without a search, so the gain is not flattered by the choice."""
    norm, best = analysis.normalizer, analysis.baselines.best_fixed("heldout")
    ours, theirs = norm.mean(analysis.heldout_raw(chosen), "heldout"), norm.mean(best.heldout, "heldout")
    if not (math.isfinite(ours) and math.isfinite(theirs)):
        return "Gain over the best fixed recipe: not known (a held-out score is missing)."
    return (f"**Gain over the best fixed recipe: {ours - theirs:+.3f}** mean normalized held-out score: {label} "
            f"{ours:.3f}; the best fixed recipe on held-out, {md(best.label)}, {theirs:.3f}.")


def reference_line(analysis: Analysis) -> str:
    ref = analysis.normalizer.reference
    parts = [f"{md(o.task_for('heldout'))} {fmt(ref['heldout'][j])}" for j, o in enumerate(analysis.cfg.objectives)]
    return (
        "Each cell is the raw metric with, in parentheses, the score normalized by the best single source model on "
        "that task (1.00 = as good as the best expert there; for lower-is-better metrics the inverse ratio). "
        f"Best source on held-out: {', '.join(parts)}. All rows were scored by the same worker in the same run; "
        "each fixed recipe's setting (task arithmetic's λ, TIES' and DARE-TIES' density and λ) was chosen on "
        "calibration, without held-out data."
    )


def scores_table(analysis: Analysis, record: CandidateRecord) -> list[str]:
    objectives = analysis.cfg.objectives
    norm = analysis.normalizer
    cal, held = analysis.calibration_raw(record), analysis.heldout_raw(record)
    cal_n, held_n = norm.normalize(cal, "calibration"), norm.normalize(held, "heldout")
    lines = ["| objective | metric | search (calibration) task | raw | normalized | held-out task | raw | normalized |",
             "|---|---|---|---|---|---|---|---|"]
    for j, o in enumerate(objectives):
        metric = metric_name(o, record.scores[o.task]) if record.scores else o.metric or "?"
        direction = "↑" if norm.higher[j] else "↓"
        lines.append(f"| {j} | {md(metric)} {direction} | {md(o.task)} | {fmt(cal[j] if cal else None)} | "
                     f"{fmt(cal_n[j], 2)} | "
                     f"{md(o.task_for('heldout'))} | {fmt(held[j] if held else None)} | {fmt(held_n[j], 2)} |")
    lines.append(f"| mean | | | | {fmt(mean(cal_n), 2)} | | | {fmt(mean(held_n), 2)} |")
    return lines


def declared_license(folder: Path) -> dict[str, str]:
    """The license fields of a model folder's own card (README.md front matter), where it declares them."""
    card = folder / "README.md"
    match = _FRONT_MATTER.match(card.read_text(encoding="utf-8", errors="replace")) if card.is_file() else None
    try:
        meta = parse_yaml(match.group(1), f"the front matter of {card}") if match else None
    except EvomergeError as e:  # the license is a courtesy: a card that cannot be read declares none
        print(f"evomerge: note: {e}; the exported card declares no license", file=sys.stderr)
        return {}
    return {k: str(meta[k]) for k in LICENSE_KEYS if meta.get(k)} if isinstance(meta, dict) else {}


def front_matter(models: list[str], license: Mapping[str, str], mergekit: bool) -> list[str]:
    """The hub's metadata block: the merged models, the merge relation, the base's license, tags."""
    meta = {"base_model": models, "base_model_relation": "merge", "library_name": "transformers", **license,
            "tags": ["merge", "evomerge", *(["mergekit"] if mergekit else [])]}
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---"]


def genome_table(recipe: Recipe, labels: Mapping[Path, str]) -> list[str]:
    groups: dict[str, GroupSpec] = dict(recipe.groups) or {"(all)": recipe.default}
    methods = {s.method for s in groups.values()}
    params = sorted({p for s in groups.values() for p in s.source_params},
                    key=lambda p: (PARAM_ORDER.index(p) if p in PARAM_ORDER else 9, p))
    names = [labels.get(p, p.name) for p in recipe.sources]
    head = ["group", *(["method"] if len(methods) > 1 else []), *(f"{p} · {md(n)}" for p in params for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, spec in groups.items():
        values = [fmt(spec.source_params[p][k]) if p in spec.source_params else "–" for p in params
                  for k in range(len(names))]
        lines.append("| " + " | ".join([group, *([spec.method] if len(methods) > 1 else []), *values]) + " |")
    return lines


def model_card(
    analysis: Analysis,
    record: CandidateRecord,
    recipe: Recipe,
    *,
    mergekit_note: str,
    mergekit: bool,
    export_command: str,
    pick: str,
) -> str:
    """The card; ``mergekit`` says whether mergekit.yaml is written beside it, ``mergekit_note`` what it reproduces."""
    cfg = analysis.cfg
    labels = cfg.sources.labels()
    roles = [("base", cfg.sources.base), *((f"source {k}", p) for k, p in enumerate(cfg.sources.models))]
    label = f"this model (candidate {record.index})"
    out: list[str] = [
        *front_matter([labels[p] for _, p in roles], declared_license(cfg.sources.base), mergekit),
        "",
        *_introduction(analysis, record, recipe, pick),
        "",
        "## Source models",
        "",
        "| role | model | SHA-256 of the weight files |",
        "|---|---|---|",
        *(f"| {role} | {code(labels[path])} | {code(analysis.run.meta.sources.get(str(path), 'unknown'))} |"
          for role, path in roles),
        "",
        "## Genome",
        "",
        "Per layer group and source model (weight multiplies the task vector θ_k − "
        f"θ_0{', density is the fraction kept' if 'density' in recipe.default.source_params else ''}):",
        "",
        *genome_table(recipe, labels),
        "",
        "## Scores",
        "",
        "Search scores are on the calibration tasks the search optimized; held-out scores are on tasks it never saw.",
        "",
        *scores_table(analysis, record),
        "",
        "## Baselines",
        "",
        *comparison_table(analysis, record, f"**{label}**"),
        "",
        gain_line(analysis, record, label),
        "",
        reference_line(analysis),
        "",
        *_rebuild(export_command, mergekit, mergekit_note),
    ]
    return "\n".join(out)


def _introduction(analysis: Analysis, record: CandidateRecord, recipe: Recipe, pick: str) -> list[str]:
    """Title, what was merged and how it was searched, and why this candidate was picked."""
    cfg = analysis.cfg
    methods = sorted({s.method for s in [recipe.default, *recipe.groups.values()]})
    globals_ = {k: v for s in [recipe.default, *recipe.groups.values()] for k, v in s.params.items()}
    how = {"calibration": "the Pareto-front member with the best mean normalized calibration score (held-out data "
                          "played no part in the choice, so the held-out scores below are an unbiased estimate)",
           "heldout": "the finalist with the best mean normalized held-out score (chosen on held-out data: the "
                      "held-out scores below are optimistic)",
           "knee": "the knee of the Pareto front (closest to the utopia point on calibration "
                   "objectives)"}.get(pick, "chosen by index")
    in_front = any(r.key == record.key for r in analysis.front)
    return [
        f"# {md(cfg.name)} — candidate {record.index}",
        "",
        f"A merge of {len(cfg.sources.models)} fine-tunes of one base model, found by evolutionary search with "
        f"evomerge {evomerge_version()} (strategy `{cfg.strategy.name}`, seed {cfg.seed}, "
        f"{len(analysis.candidates)} candidates evaluated). Method: {', '.join(f'`{m}`' for m in methods)}"
        + (f" with {', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in globals_.items())}"
           if globals_ else "")
        + f"; layer granularity {recipe.layer_granularity}; output dtype {recipe.dtype or 'as the base'}.",
        "",
        f"Picked as {how}: candidate {record.index} (generation {record.generation}), "
        f"{'on' if in_front else 'not on'} the Pareto front of {len(analysis.front)} candidates; "
        f"{len(analysis.finalists)} finalists were re-scored on held-out tasks.",
    ]


def _rebuild(export_command: str, mergekit: bool, mergekit_note: str) -> list[str]:
    """How to rebuild the weights: evomerge's recipe, the export command, mergekit's YAML where there is one."""
    return [
        "## Rebuild",
        "",
        "From the recipe in this folder (it names the models by the paths they had when this folder was written; "
        "the models must have the fingerprints above):",
        "",
        "```bash",
        "evomerge merge evomerge_recipe.yaml --out MODEL_DIR",
        "```",
        "",
        "From the run folder (RUN_DIR), as this folder was written:",
        "",
        "```bash",
        export_command,
        "```",
        "",
        *(["With mergekit, from mergekit.yaml in this folder:", "", "```bash", "mergekit-yaml mergekit.yaml MODEL_DIR",
           "```", ""]
          if mergekit else []),
        mergekit_note,
        "",
    ]
