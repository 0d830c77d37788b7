"""Evaluation: suites of held-out tasks, per-task LR-tuned baselines, tables and figures."""

from lopt.eval.config import EvalConfig
from lopt.eval.run import EvalOutcome, run_eval
from lopt.eval.suites import SUITES, suite_tasks

__all__ = ["EvalConfig", "EvalOutcome", "run_eval", "SUITES", "suite_tasks"]
