"""The background worker: ``python -m db.worker --db URL --study ID`` runs one study to its end.

It claims the study and starts beating before the slow imports (torch, transformers), so a reader
never mistakes a worker that is still starting for a dead one.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_stopping = False


def _stop(signum, _frame):
    """SIGTERM: stop like Ctrl-C, once (a second signal during the clean-up is ignored)."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise KeyboardInterrupt(f"signal {signum}")


def _lost() -> None:
    """The study was declared dead or taken over while this worker was busy: stop now."""
    print("this worker no longer owns its study (no heartbeat reached the database in time, or another "
          "worker took it over); stopping", file=sys.stderr, flush=True)
    # To the main thread itself: a process-wide kill from this (heartbeat) thread is usually delivered to
    # this thread, and the main thread's blocking call (a sleep, a read) would only notice when it returns.
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m db.worker")
    ap.add_argument("--db", required=True)
    ap.add_argument("--study", type=int, required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    from gptailor.common.limits import SettingsError

    from .liveness import Heartbeat, Owner
    from .store import Store, StoreError

    try:
        store = Store(args.db)
        me = Owner.me()
        with Heartbeat(store, args.study, me, on_lost=_lost) if store.claim(args.study, me) else _Nothing():
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            from .runs import StudyError, run_study

            recorded: list[int] = []  # this worker's own count, to check against the stored rows
            try:
                status = run_study(store, args.study, on_trial=lambda rec: recorded.append(rec.number))
            except StudyError as e:
                print(f"study {args.study}: {e}", file=sys.stderr, flush=True)
                return 2
    except (StoreError, SettingsError, OSError) as e:
        _last_word(locals().get("store"), args.study, locals().get("me"), e)
        return 2
    except KeyboardInterrupt:  # a signal while still starting: say so rather than wait for the grace
        try:
            store.stop(args.study, "cancelled", "stopped by a signal while starting", owner=me)
        except (NameError, StoreError):
            pass
        print(f"study {args.study}: stopped by a signal while starting", file=sys.stderr, flush=True)
        return 1
    print(f"study {args.study}: {status} ({len(recorded)} trials recorded by this worker)", flush=True)
    return 0 if status in ("finished", "cancelled") else 1


def _last_word(store, study_id: int, me, e: BaseException) -> None:
    """Say why this worker stops where a reader sees it: the study's error first (tried again here, after
    the run's own clean-up freed its temporary files: a full disk may take one small write now), then the
    log, which may sit on that same full disk."""
    from .runs import died_of
    from .store import StoreError

    why = died_of(store, e) if store is not None else str(e)
    if store is not None and me is not None:
        try:
            store.stop(study_id, "failed", why, owner=me, inflight_error=why)  # a no-op if already recorded
        except StoreError:
            pass  # the database's disk is full: a reader diagnoses it (workers.full_disk)
    try:
        print(f"study {study_id}: {why}", file=sys.stderr, flush=True)
    except OSError:
        pass


class _Nothing:
    """No early heartbeat (the study could not be claimed; ``run_study`` says why)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
