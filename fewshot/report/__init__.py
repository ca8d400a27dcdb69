"""Figures of runs: ``fewshot report``, ``fewshot explain`` and ``fewshot study``.

- :mod:`fewshot.report.records`: run directories read back (config, training log with wall time, test and
  evaluation records); ``fewshot eval`` appends to ``RUN/evals.jsonl`` through :func:`~fewshot.report.records.record_eval`.
- :mod:`fewshot.report.figures`: learning curves, accuracy against shots and ways, paired comparisons, per-assay
  ΔAUPRC, meta-RL return and success curves, reliability diagrams.
- :mod:`fewshot.report.page`: the static HTML page (``index.html`` beside its PNG figures).
- :mod:`fewshot.report.mapping`: the three mappings drawn (embeddings projected, tasks mapped, CKA and weight
  movement through the inner loop, Matching-network attention, integrated-gradients saliency).
- :mod:`fewshot.report.studies`: hyperparameter sensitivity (Optuna), cost, meta-learning vs transfer.

Nothing here is imported by ``import fewshot``; matplotlib and scikit-learn are imported when a figure is drawn.
"""
