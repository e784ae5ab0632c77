"""Shared fixtures: tiny real Llama families built in seconds, saved as real HF folders."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch (OpenMP) thread per process, inherited by the workers and app servers the tests start: the suite
# runs two processes on two cores, and more threads than cores spin-wait (session 19, one core busy: a 2-trial
# demo study 23 s with torch's default two threads, 4 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest
import torch
import yaml

from gptailor.builtin.tokenizer import build_tokenizer


@pytest.fixture(autouse=True)
def _no_exec_of_the_test_process(monkeypatch):
    """A command's ``main`` that re-runs itself (``os.execve``, e.g. to fix PYTHONHASHSEED) would replace
    pytest itself: the suite would end mid-line with the command's exit code and no report (CI, once).
    Fail that test instead, with the reason."""
    def refuse(path, args, env):
        pytest.fail(f"os.execve({path!r}, {list(args)!r}) in the test process would replace pytest; "
                    "re-execute only under `if __name__ == '__main__'`, or set the variable the command checks")
    monkeypatch.setattr(os, "execve", refuse)


def loglik_of_ids(model, ctx: list[int], cont: list[int]):
    """The independent reference of every log-likelihood test: ``cont``'s summed log-probability after
    ``ctx`` from one unpadded sequence, no mask, the model's own logits through log-softmax; and those
    log-probabilities. The tests differ only in how they tokenise the two parts."""
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
    return sum(lp[len(ctx) + k - 1, x].item() for k, x in enumerate(cont)), lp


def tiny_config(model_type: str = "llama", n_layers: int = 4, tie: bool = False, **overrides):
    """The tiny test config (hidden 32, 4 heads, 2 KV heads) of ``model_type``, with ``overrides``."""
    from transformers import AutoConfig

    tok = build_tokenizer()
    kw = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              tie_word_embeddings=tie, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
              bos_token_id=tok.bos_token_id)
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def save_model(model, folder: Path, dtype=None, max_shard_size=None) -> Path:
    """Save ``model`` (optionally cast, optionally sharded) with the demo tokenizer, as a real HF folder."""
    if dtype is not None:
        model = model.to(dtype)
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **kw)
    build_tokenizer().save_pretrained(folder)
    return folder


def make_tiny_family(root: Path, n_layers: int = 4, members=("math", "code"), tie: bool = False,
                     seed: int = 0, model_type: str = "llama", dtype=None, layers_only: bool = False,
                     max_shard_size=None, base_layers: dict[str, list[int]] | None = None, **config) -> Path:
    """A random base and finetunes (base + noise) as HF folders, plus family.yaml; returns the spec path.
    ``layers_only``: finetunes leave embeddings, final norm and head alone (as decoder-only finetunes
    usually do); ``dtype``: the dtype saved on disk; ``max_shard_size``: save sharded checkpoints;
    ``base_layers``: member -> positions it leaves untouched (bit-identical to the base's there)."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(model_type, n_layers, tie, **config)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(cfg)
    if dtype is not None:
        base = base.to(dtype)
    save_model(base, root / "base", max_shard_size=max_shard_size)
    for k, m in enumerate(members):
        torch.manual_seed(seed + 1 + k)
        ft = AutoModelForCausalLM.from_config(cfg).to(base.dtype)
        ft.load_state_dict(base.state_dict())
        same = tuple(f".layers.{i}." for i in (base_layers or {}).get(m, ()))
        with torch.no_grad():
            for name, p in ft.named_parameters():
                if (not layers_only or ".layers." in name) and not any(tag in name for tag in same):
                    p.add_(0.05 * torch.randn_like(p))
        save_model(ft, root / m, max_shard_size=max_shard_size)
    # GPTAILOR_TEST_DEVICE=cuda runs the tiny families on a GPU (bench/gpu_check.sh: the prefix cache's tests)
    spec = {"name": "tiny", "base": "base", "candidates": {m: m for m in members}, "dtype": "float32",
            "device": os.environ.get("GPTAILOR_TEST_DEVICE", "cpu")}
    (root / "family.yaml").write_text(yaml.safe_dump(spec))
    return root / "family.yaml"


def make_tiny_family_with_suite(root: Path, n_layers: int, n_test: int) -> Path:
    """A tiny family whose spec names the demo's task files (``n_test`` examples per task) as its suite."""
    from gptailor.builtin import demo

    spec = make_tiny_family(root, n_layers=n_layers)
    demo.write_tasks(root, n_test=n_test)
    spec.write_text(spec.read_text() + "suite: tasks/suite.yaml\n")
    return spec


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> Path:
    return make_tiny_family(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_family(tiny_spec):
    from gptailor.family.family import Family

    return Family.from_spec(tiny_spec)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # Debian's package (.ci/run installs it)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def launch_chromium(playwright):
    """The system Chromium, headless and offline-quiet, as every browser test drives it."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="session")
def demo_studies_app(tmp_path_factory):
    """A real app server over a database holding two real finished studies on the demo family (a 5-trial
    random search removing 2 layers, a last_n baseline removing 3), run in this process before the server
    starts. Yields (gradio_client, store, (search id, baseline id), data dir, the test split's references)."""
    from gradio_client import Client

    from db.runs import create_study, load_engine, run_study
    from db.store import Store
    from gptailor.search.settings import SearchSettings
    from gptailor.search.space import Budget
    from test_app import start_app, stop_app

    data = tmp_path_factory.mktemp("data")
    st = Store(f"sqlite:///{data / 'gptailor.db'}")
    ev = load_engine("demo")
    search = create_study(st, "demo", "random", Budget(remove_layers=2),
                          SearchSettings(method="smac", n_trials=5, seed=1, initial_plans=False), evaluator=ev)
    assert run_study(st, search, ev) == "finished"
    baseline = create_study(st, "demo", "last_n", Budget(remove_layers=3), evaluator=ev)
    assert run_study(st, baseline, ev) == "finished"
    test_refs = ev.references("test").to_dict()  # every member's scores on the test split (the reports' refs)
    proc, url, _ = start_app(tmp_path_factory, GPTAILOR_DATA_DIR=str(data))
    yield Client(url, verbose=False), st, (search, baseline), data, test_refs
    stop_app(proc)


HANG_GUARD_MS = 600_000  # a browser wait's only limit: against a hang; every wait ends on what the page shows


def open_app(browser, url: str, height: int = 1000, width: int = 1400):
    """A page on the app, once the page has loaded. Not ``networkidle``: the dashboard's gr.State keeps
    Gradio's heartbeat connection open, so the network never goes idle. Every wait on the page (clicks,
    ``expect``) waits for its event as long as it takes, up to HANG_GUARD_MS."""
    from playwright.sync_api import expect

    expect.set_options(timeout=HANG_GUARD_MS)
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(HANG_GUARD_MS)
    page.goto(url, wait_until="load")
    return page


NARROW = 760  # the narrow window every browser test checks the layout at (beside open_app's 1400)

# Every shown Plotly chart drawn at its container's width again: the page's re-layout after a resize is done.
LAID_OUT = """(width) => window.innerWidth === width && [...document.querySelectorAll('.js-plotly-plot')]
    .filter((gd) => gd.offsetParent !== null)
    .every((gd) => { const svg = gd.querySelector('.main-svg');
                     return svg && Math.abs(svg.getBoundingClientRect().width - gd.getBoundingClientRect().width) < 2; })"""


def narrow(page, tab: str | None = None) -> None:
    """Show ``tab`` (if given) in a NARROW-px window and wait until Plotly and Gradio have re-laid it out."""
    if tab is not None:
        page.get_by_role("tab", name=tab).click()
    page.set_viewport_size({"width": NARROW, "height": 1000})
    page.wait_for_function(LAID_OUT, arg=NARROW, polling="raf")


def scored_trial(number: int, plan, retentions: dict | None = None, fidelity: int | None = 10,
                 params: int | float = 1e6, status: str = "complete", study_id: int | None = None,
                 wall_s: float | None = None, scores: dict | None = None, task_retentions: dict | None = None,
                 definition: str = "family", proxies: dict | None = None, **fields):
    """A ``TrialRecord`` as the store holds one: ``retentions`` (definition -> mean) None leaves it unscored
    (``result`` None, e.g. a failed trial); ``plan`` is a Plan or its text."""
    from gptailor import Plan
    from gptailor.eval.results import EvalResult
    from gptailor.search.trials import TrialRecord

    plan = Plan.from_text(plan) if isinstance(plan, str) else plan
    result = None
    if retentions is not None:
        result = EvalResult(plan=plan.to_text(), fidelity=fidelity, scores=scores or {}, metrics={}, references={},
                            kept_layers=plan.n_kept, n_layers=len(plan), params=int(params), stitch_s=0.0,
                            score_s=0.0, definition=definition, retentions=dict(retentions),
                            task_retentions=task_retentions or {d: {} for d in retentions},
                            proxies=proxies or {})
    return TrialRecord(number, plan, fidelity, result, status=status, study_id=study_id,
                       wall_s=float(number) if wall_s is None else wall_s, **fields)
