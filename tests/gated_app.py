"""The real app, whose Evaluate requests each wait at a gate before evaluating: a model slot held for as
long as a test needs (tests/test_overload.py). ``GATE_DIR``: each request touches ``entered-<id>`` there on
entering, then waits until the test creates ``open``."""
import functools
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, as `python app.py` has it
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ui import evaluate_tab  # noqa: E402

GATE = Path(os.environ["GATE_DIR"])
_evaluate = evaluate_tab.evaluate


@functools.wraps(_evaluate)
def _gated(*args, **kwargs):
    (GATE / f"entered-{uuid.uuid4().hex}").touch()
    while not (GATE / "open").exists():  # the test's event: it opens the gate when it has seen the queue
        time.sleep(0.05)
    return _evaluate(*args, **kwargs)


evaluate_tab.evaluate = _gated

if __name__ == "__main__":
    from ui.app import main

    main()
