"""The exported mergekit.yaml, run by mergekit itself, rebuilds the very model we stitched."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_family
from transformers import AutoModelForCausalLM

from gptailor import Family, Plan, Stitcher
from gptailor.export.mergekit import io_inputs, mergekit_config, mergekit_yaml
from gptailor.merge import METHODS

MERGEKIT = shutil.which("mergekit-yaml")


@pytest.mark.skipif(MERGEKIT is None, reason="mergekit is not installed (requirements.txt installs it)")
@pytest.mark.parametrize("text", [
    "0:base 1:math 2:drop 3:base",
    "0:base 1:math 2:merge(math=1,code=2) 3:base",
    "0:base 1:merge[task_arithmetic](math=.5,code=.7) 2:code 3:base",
    "0:base 1:merge[ties,density=.5](math=1,code=2) 2:drop 3:base",
    "0:base 1:merge[ties,density=.4](math=1,code=2) 2:code 3:base",  # int(.4 n) entries kept, not round(.4 n)
    "0:base 1:merge[dare_ties,density=1](math=1,code=2) 2:drop 3:base",  # density 1: nothing drawn, exact
    "0:base 1:math 2:merge[dare_linear,density=1](math=.5,code=.7) 3:base",
])
def test_mergekit_rebuilds_the_stitched_model(tiny_family, tmp_path, text):
    _check_mergekit_rebuilds(tiny_family, Plan.from_text(text), tmp_path)


@pytest.fixture(scope="module")
def layers_only_family(tmp_path_factory):
    """Finetunes that changed decoder layers only (embeddings, final norm and head are the base's)."""
    return Family.from_spec(make_tiny_family(tmp_path_factory.mktemp("lo"), layers_only=True, seed=3))


@pytest.mark.skipif(MERGEKIT is None, reason="mergekit is not installed (requirements.txt installs it)")
@pytest.mark.parametrize("text", [
    "0:math 1:base 2:drop 3:code",  # the old rule (first and last kept layers from the base) refused these
    "0:merge(math=1,code=2) 1:drop 2:base 3:merge(code=1,math=1)",
])
def test_mergekit_rebuilds_finetunes_with_the_base_embeddings_and_head(layers_only_family, tmp_path, text):
    text_yaml = _check_mergekit_rebuilds(layers_only_family, Plan.from_text(text), tmp_path)
    assert "not expressible" not in text_yaml


@pytest.mark.skipif(MERGEKIT is None, reason="mergekit is not installed (requirements.txt installs it)")
def test_mergekit_builds_a_dare_plan_with_its_own_random_drop(tiny_family, tmp_path):
    """mergekit draws DARE's masks from its own random stream, so only the layers nothing is drawn for
    (the picks, written with density 1) equal ours; the merged layer is a DARE merge of the same inputs."""
    plan = Plan.from_text("0:base 1:merge[dare_ties,density=.5](math=1,code=2) 2:code 3:base")
    merged = _mergekit_model(tiny_family, plan, tmp_path).state_dict()
    ours = Stitcher(tiny_family).build(plan).state_dict()
    assert merged.keys() == ours.keys()
    differ = {k for k in ours if not torch.allclose(merged[k], ours[k], atol=1e-6)}
    assert differ and all(k.startswith("model.layers.1.") for k in differ)
    base = tiny_family.layer_state("base", 1)
    k = "mlp.up_proj.weight"  # about half of each task vector dropped: many entries stay the base's
    kept = (merged[f"model.layers.1.{k}"] != base[k]).float().mean().item()
    assert 0.5 < kept < 0.9  # kept by either member: 1 - .5 * .5 = .75 expected


# One process runs the ``mergekit-yaml`` script itself (its file, as ``__main__``, with the command line it would
# get) once per config: each fresh process spent about 8 s importing torch and mergekit before merging anything.
_CLI_DRIVER = """
import json, runpy, sys, traceback
script, jobs, report = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
results = {}
for name, (cfg, out) in jobs.items():
    sys.argv = [script, cfg, out, "--allow-crimes"]
    try:
        runpy.run_path(script, run_name="__main__")
        code, why = 0, ""
    except SystemExit as e:
        code, why = (e.code if isinstance(e.code, int) else (0 if e.code is None else 1)), str(e.code)
    except BaseException:
        code, why = 1, traceback.format_exc()
    results[name] = [code, why[-2000:]]
    open(report, "w").write(json.dumps(results))
"""


def _run_mergekit_yaml(jobs: dict[str, tuple], root: Path) -> dict[str, Path]:
    """Run ``mergekit-yaml CONFIG OUT --allow-crimes`` for every job (name -> (family, plan)), all in one child
    process; name -> the job's folder, holding mergekit.yaml, the merged ``out`` and exit.json ([code, error])."""
    paths = {}
    for name, (family, plan) in jobs.items():
        (root / name).mkdir()
        (root / name / "mergekit.yaml").write_text(mergekit_yaml(family, plan))
        paths[name] = (str(root / name / "mergekit.yaml"), str(root / name / "out"))
    report = root / "report.json"
    r = subprocess.run([sys.executable, "-c", _CLI_DRIVER, MERGEKIT, json.dumps(paths), str(report)],
                       capture_output=True, text=True, timeout=900, check=False)
    results = json.loads(report.read_text()) if report.exists() else {}
    for name in jobs:  # a job the child never reached fails with the child's own exit code and stderr
        (root / name / "exit.json").write_text(json.dumps(results.get(name, [r.returncode or 1, r.stderr[-2000:]])))
    return {name: root / name for name in jobs}


def _mergekit_model(family, plan, tmp_path, cli: bool = False):
    """The model mergekit builds from the exported YAML: by ``mergekit-yaml`` (in a child process), or
    (``cli=False``, seconds faster, the default) by ``run_merge``, the function that command calls with the
    same options. ``tmp_path`` holds (or, with ``cli``, already holds) mergekit.yaml and the merged ``out``."""
    cfg = tmp_path / "mergekit.yaml"
    if cli:  # run already, in the module's one batch (cli_merges): its exit code and the YAML it read
        code, why = json.loads((tmp_path / "exit.json").read_text())
        assert code == 0, why
        assert cfg.read_text() == mergekit_yaml(family, plan)
    else:
        cfg.write_text(mergekit_yaml(family, plan))
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        run_merge(MergeConfiguration.model_validate(yaml.safe_load(cfg.read_text())), str(tmp_path / "out"),
                  MergeOptions(allow_crimes=True, quiet=True))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert merged.config.num_hidden_layers == plan.n_kept
    return merged


def _check_mergekit_rebuilds(family, plan, tmp_path, cli: bool = False) -> str:
    """Run mergekit on the exported YAML; its model's logits must equal the stitched model's."""
    merged = _mergekit_model(family, plan, tmp_path, cli)
    ids = torch.randint(7, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = Stitcher(family).build(plan)(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    return (tmp_path / "mergekit.yaml").read_text()


# ----------------------------------------------------------------------------- mergekit's rule for the non-layer tensors
EXPORTED = [m for m in METHODS.values() if m.mergekit is not None]


def _merge_at(method, position: int) -> Plan:
    """A 4-layer plan: a merge by ``method`` at ``position``, picks of both finetunes and a drop elsewhere
    (no base pick: with a method that needs the base, every slice lists it beside the member)."""
    params = "" if not method.defaults else ",density=1"  # density 1: nothing drawn or trimmed, so exact
    ops = iter(["math", "drop", "code"])
    return Plan.from_text(" ".join(f"{i}:merge[{method.name}{params}](math=.6,code=.9)" if i == position
                                   else f"{i}:{next(ops)}" for i in range(4)))


@pytest.mark.skipif(MERGEKIT is None, reason="mergekit is not installed (requirements.txt installs it)")
@pytest.mark.parametrize("position", [0, 1, 3], ids=["first", "middle", "last"])
@pytest.mark.parametrize("method", EXPORTED, ids=[m.name for m in EXPORTED])
def test_mergekit_rebuilds_every_method_at_the_first_middle_and_last_position(layers_only_family, tmp_path,
                                                                              method, position):
    text_yaml = _check_mergekit_rebuilds(layers_only_family, _merge_at(method, position), tmp_path, cli=False)
    assert "not expressible" not in text_yaml


@pytest.fixture(scope="module")
def six_layer_family(tmp_path_factory):
    """A layers-only family deep enough for merges at the first, a middle and the last position, a pick of
    each finetune and a drop in one plan."""
    return Family.from_spec(make_tiny_family(tmp_path_factory.mktemp("six"), n_layers=6, layers_only=True, seed=5))


def _command_plan(method) -> Plan:
    """A 6-layer plan merging by ``method`` at the first, a middle and the last position, with picks and a drop."""
    params = "" if not method.defaults else ",density=1"  # density 1: nothing drawn or trimmed, so exact
    merge = f"merge[{method.name}{params}]"
    return Plan.from_text(f"0:{merge}(math=.6,code=.9) 1:math 2:{merge}(math=1,code=.4) 3:drop 4:code "
                          f"5:{merge}(code=.5,math=.8)")


def _top_plan(method) -> Plan:
    """The issue's plan shape: base picks first, merges by ``method`` at the top."""
    params = "" if not method.defaults else ",density=1"
    return Plan.from_text(f"0:base 1:drop 2:merge[{method.name}{params}](math=.5,code=.7) "
                          f"3:merge[{method.name}{params}](math=1,code=.4)")


@pytest.fixture(scope="module")
def cli_merges(six_layer_family, tiny_family, tmp_path_factory) -> dict[str, Path]:
    """Every merge this module runs through the ``mergekit-yaml`` command, run in one batch (one child process):
    each exported method's ``_command_plan`` on the six-layer family (keyed by method name) and task_arithmetic's
    ``_top_plan`` on the tiny family (key ``top``). Name -> the job's folder (see ``_run_mergekit_yaml``)."""
    jobs = {m.name: (six_layer_family, _command_plan(m)) for m in EXPORTED}
    jobs["top"] = (tiny_family, _top_plan(METHODS["task_arithmetic"]))
    return _run_mergekit_yaml(jobs, tmp_path_factory.mktemp("cli"))


@pytest.mark.skipif(MERGEKIT is None, reason="mergekit is not installed (requirements.txt installs it)")
@pytest.mark.parametrize("method", EXPORTED, ids=[m.name for m in EXPORTED])
def test_mergekit_yaml_command_rebuilds_every_method(six_layer_family, cli_merges, method):
    """The ``mergekit-yaml`` command itself (not only ``run_merge``) on each exported method, merged at the first,
    a middle and the last position of one plan with picks and a drop (all methods' commands in one process,
    see cli_merges: each process costs about 8 s of imports before it merges anything)."""
    text_yaml = _check_mergekit_rebuilds(six_layer_family, _command_plan(method), cli_merges[method.name], cli=True)
    assert "not expressible" not in text_yaml and f"merge_method: {method.mergekit}" in text_yaml


@pytest.mark.parametrize("method", [m for m in METHODS.values() if m.mergekit is None], ids=lambda m: m.name)
def test_a_method_mergekit_cannot_express_is_written_as_a_comment(layers_only_family, method):
    text = mergekit_yaml(layers_only_family, Plan.from_text(f"0:math 1:merge[{method.name}](math=1,code=1) 2:base"
                                                            f" 3:code"))
    assert f"not expressible as one mergekit config: {method.mergekit_why_not}" in text


NEEDS_BASE = [m for m in EXPORTED if m.needs_base]


@pytest.mark.skipif(MERGEKIT is None, reason="mergekit is not installed (requirements.txt installs it)")
@pytest.mark.parametrize("method", NEEDS_BASE, ids=[m.name for m in NEEDS_BASE])
def test_merges_at_the_top_after_base_picks_build(tiny_family, tmp_path, method, request):
    """The issue's plan shape (base picks first, task-vector merges at the top): mergekit merges the final
    norm and head from the last slice's first source only (the first slice has one), so the base must be
    listed first there. Then the norm and head are the base's alone, even for finetunes that changed theirs.
    task_arithmetic's is built by the ``mergekit-yaml`` command (in cli_merges' batch), the others by run_merge."""
    plan = _top_plan(method)
    cfg = mergekit_config(tiny_family, plan)
    assert all(sl["sources"][0]["model"] == cfg["base_model"] for sl in cfg["slices"])
    assert not tiny_family.io_equals_base("math", "norm")  # the finetunes' norms differ: only the base is read
    cli = method.name == "task_arithmetic"
    _check_mergekit_rebuilds(tiny_family, plan, request.getfixturevalue("cli_merges")["top"] if cli else tmp_path,
                             cli=cli)


def test_a_plan_whose_norm_mergekit_would_take_from_a_finetune_is_refused(tiny_family):
    """linear has no base: after a one-source first slice mergekit takes the last slice's first member's
    norm, which is not the base's here, so the YAML is not written."""
    text = mergekit_yaml(tiny_family, Plan.from_text("0:base 1:drop 2:code 3:merge(math=1,code=2)"))
    assert "not expressible" in text and "final norm from 'math'" in text and "member 'math'" in text


@pytest.mark.skipif(MERGEKIT is None, reason="mergekit is not installed (requirements.txt installs it)")
@pytest.mark.parametrize("text", [
    "0:base 1:drop 2:merge[task_arithmetic](math=.5,code=.7) 3:merge[task_arithmetic](math=1,code=.4)",
    "0:math 1:merge[ties,density=.5](math=1,code=2) 2:drop 3:merge[ties](code=1,math=1)",
    "0:merge(math=1,code=2) 1:base 2:drop 3:code",
    "0:merge(math=1,code=2) 1:base 2:drop 3:merge(code=1)",
    "0:base 1:math 2:code 3:base",
])
def test_io_inputs_is_the_rule_mergekits_planner_follows(layers_only_family, tmp_path, text):
    """Independent of our reading of mergekit's code: its own planner's tasks say which models the
    embeddings, final norm and head are gathered from."""
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.merge import _model_out_config
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner

    cfg = mergekit_config(layers_only_family, Plan.from_text(text))
    config, options = MergeConfiguration.model_validate(cfg), MergeOptions(allow_crimes=True)
    arch = get_architecture_info(config, options)  # as run_merge plans a merge
    planner = MergePlanner(config, arch, options, _model_out_config(config, arch))
    tasks = planner.plan_to_disk(str(tmp_path / "out"))  # planned only: nothing runs, nothing is written
    gathered = {t.tensor_name: [m.model.path for m in t.tensor_task.gather_tensors.weight_info.keys()]
                for t in tasks if hasattr(t, "tensor_task")}
    want = io_inputs(cfg["slices"])
    assert gathered["model.embed_tokens.weight"] == want["embed"]
    assert gathered["model.norm.weight"] == want["norm"]
    assert gathered["lm_head.weight"] == want["head"]
