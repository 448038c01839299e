"""After a search: Pareto front, finalists, baselines, exported model folders, reports.

scores.py      raw metric values per objective, normalized by the best single source
evaluator.py   the run's worker, started only when a score is missing from the log
baselines.py   base, each source, soup, task arithmetic (λ grid), TIES, DARE-TIES — scored in the run
finalists.py   the front's best re-scored on held-out data, and the pick rules (``analyze``)
export.py      a candidate -> model folder + evomerge/mergekit recipes (``export_candidate``)
card.py        the model card and the score tables
report.py      plots and summary.md (``write_report``)
"""
