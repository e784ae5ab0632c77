"""Benchmarks that print figures measured in one run. Run each from the repo root as a module, e.g.
``python -m bench.trial_cost --help``, so the checkout's packages (gptailor, db, ui) import as they are."""

import os
import sys


def rerun_with_fixed_hash_seed(module: str) -> None:
    """Re-run ``python -m <module>`` with PYTHONHASHSEED=0 unless it is set so (SMAC repeats a seed exactly only
    with it fixed). Call it only under ``if __name__ == "__main__"``: in-process (a test) it would replace the caller."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], {**os.environ, "PYTHONHASHSEED": "0"})
