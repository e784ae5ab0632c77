"""The real app, whose Evaluate, Compare and lm-eval panel can be held inside their Stop block until the page presses Stop
(tests/test_stop_errors_browser.py). ``GATE_DIR``: while ``hold`` exists there, Evaluate's reference warm-up
and Compare's re-scoring touch ``entered`` there (the test's event: the work runs inside ``stoppable``), wait for this session's Stop, then go on into the engine, whose next tick
ends the work as any Stop does."""
import functools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, as `python app.py` has it
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gptailor.common.progress import current, tick  # noqa: E402
from gptailor.eval import lm_eval  # noqa: E402
from ui import compare_tab, evaluate_tab  # noqa: E402

GATE = Path(os.environ["GATE_DIR"])
HELD = "held until Stop"


def held(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if (GATE / "hold").exists():
            tick(HELD)  # on the page's progress bar
            (GATE / "entered").touch()  # the test's event: the work runs inside its Stop block
            while not current().stop_requested():  # the test's event: Stop pressed on the page
                time.sleep(0.05)
            tick()  # the engine's own check: raises Stopped, as the next batch would
        return fn(*args, **kwargs)
    return wrapper


evaluate_tab.warm_references = held(evaluate_tab.warm_references)
compare_tab.compare = held(compare_tab.compare)
lm_eval.lm_eval_report = held(lm_eval.lm_eval_report)  # the lm-eval panel imports it when it runs

if __name__ == "__main__":
    from ui.app import main

    main()
