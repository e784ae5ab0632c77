"""Benchmarks that print figures measured in one run. Run each from the repo root as a module, e.g.
``python -m bench.trial_cost --help``, so the checkout's packages (gptailor, db, ui) import as they are."""
