"""A study worker whose every evaluation first sleeps ``SLOW_EVAL_S`` seconds: a worker stuck inside a
trial, for the liveness tests (``launch(..., worker=("tests/slow_worker.py",))``)."""
import os
import sys
import time

from gptailor.eval.evaluator import Evaluator

_evaluate = Evaluator.evaluate


def _slow(self, plan, fidelity=None, *args, **kwargs):
    time.sleep(float(os.environ.get("SLOW_EVAL_S", "60")))
    return _evaluate(self, plan, fidelity, *args, **kwargs)


Evaluator.evaluate = _slow

if __name__ == "__main__":
    from db.worker import main

    sys.exit(main())
