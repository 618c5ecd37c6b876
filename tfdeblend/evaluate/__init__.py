"""Evaluation: the paper's metrics, truth-based metrics, baselines and the report.

Layers: :mod:`~tfdeblend.evaluate.pipeline` (``evaluate``: loads, runs the model and the
baselines, writes the report directory) over :mod:`~tfdeblend.evaluate.analysis` (metric dicts),
:mod:`~tfdeblend.evaluate.figures` (matplotlib) and :mod:`~tfdeblend.evaluate.report` (markdown and
JSON text); :mod:`~tfdeblend.evaluate.baselines` holds the baseline registry,
:mod:`~tfdeblend.evaluate.metrics` and :mod:`~tfdeblend.evaluate.match` the low-level functions.
"""
