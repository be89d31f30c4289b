"""Reports a person reads: a checkpoint's evaluation on labelled data, and a scoring run's page."""

from bertclf.report.evaluation import evaluation_report
from bertclf.report.scores import scores_report

__all__ = ["evaluation_report", "scores_report"]
