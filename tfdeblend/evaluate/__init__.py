"""Evaluation: the paper's metrics, truth-based metrics, baselines and the report."""
