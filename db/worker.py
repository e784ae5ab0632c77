"""The background worker: ``python -m db.worker --db URL --study ID`` runs one study to its end."""
from __future__ import annotations

import argparse
import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _stop(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m db.worker")
    ap.add_argument("--db", required=True)
    ap.add_argument("--study", type=int, required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from .runs import run_study
    from .store import Store

    status = run_study(Store(args.db), args.study)
    print(f"study {args.study}: {status}", flush=True)
    return 0 if status in ("finished", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
