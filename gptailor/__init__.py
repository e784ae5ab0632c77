"""GPTailor: compress an LLM by cutting and stitching layers across a family of finetunes.

Notebook use mirrors the app::

    from gptailor import Family, Plan, Evaluator, load_suite, export
    fam = Family.from_spec("demo")
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()))
    res = ev.evaluate(Plan.from_text("0:base 1:math 2:drop ..."), fidelity=50)
    print(res.table())
"""
from .evaluate import EvalResult, Evaluator
from .export import export
from .family import Family, FamilyError, FamilySpec
from .plan import Op, Plan, PlanError
from .stitch import Stitcher
from .tasks import Suite, Task, TaskError, load_suite, make_suite

__all__ = ["EvalResult", "Evaluator", "Family", "FamilyError", "FamilySpec", "Op", "Plan", "PlanError",
           "Stitcher", "Suite", "Task", "TaskError", "export", "load_suite", "make_suite"]
__version__ = "0.1.0"
