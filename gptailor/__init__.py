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
from gptailor.eval.results import EvalResult
from gptailor.eval.evaluator import Evaluator
from gptailor.export.hf import export
from gptailor.family.family import Family
from gptailor.family.spec import FamilyError, FamilySpec
from gptailor.eval.lm_eval import LmEvalError, LmEvalReport, lm_eval_report, run_lm_eval, tasks_from_lm_eval
from gptailor.plan import Op, Plan, PlanError
from gptailor.stitch import Stitcher
from gptailor.eval.suite import Suite, load_suite, make_suite
from gptailor.eval.tasks import Task, TaskError

__all__ = ["EvalResult", "Evaluator", "Family", "FamilyError", "FamilySpec", "LmEvalError", "LmEvalReport", "Op",
           "Plan", "PlanError", "lm_eval_report", "run_lm_eval", "tasks_from_lm_eval",
           "Stitcher", "Suite", "Task", "TaskError", "export", "load_suite", "make_suite"]
__version__ = "0.1.0"
