"""GPTailor: compress an LLM by cutting and stitching layers across a family of finetunes.

Notebook use mirrors the app::

    from gptailor import Family, Plan, Evaluator, load_suite, export
    fam = Family.from_spec("demo")
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()))
    plan = Plan.from_text("0:base 1:math 2:drop ...")
    res = ev.evaluate(plan, fidelity=50)
    print(res.table())
    # lm-evaluation-harness's own metrics for the plan beside every member (datasets cached or local YAMLs)
    print(lm_eval_report(fam, plan, ["arc_easy"], limit=200).table())
"""
from .evaluate import EvalResult, Evaluator
from .export import export
from .family import Family, FamilyError, FamilySpec
from .lm_eval_tasks import LmEvalError, LmEvalReport, lm_eval_report, run_lm_eval, tasks_from_lm_eval
from .plan import Op, Plan, PlanError
from .stitch import Stitcher
from .tasks import Suite, Task, TaskError, load_suite, make_suite

__all__ = ["EvalResult", "Evaluator", "Family", "FamilyError", "FamilySpec", "LmEvalError", "LmEvalReport", "Op",
           "Plan", "PlanError", "lm_eval_report", "run_lm_eval", "tasks_from_lm_eval",
           "Stitcher", "Suite", "Task", "TaskError", "export", "load_suite", "make_suite"]
__version__ = "0.1.0"
