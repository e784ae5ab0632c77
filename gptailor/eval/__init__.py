"""Scoring a plan: tasks and suites, lm-eval tasks, metrics, batching, the ``Evaluator``, retention results and speed."""
