"""The README's Python example runs as printed, and what it prints and writes is real.

The block is taken from the README itself, so an edit that breaks it fails here. Its outputs are
checked against references it did not compute: the suite's task names read from the YAML file, the
layer count read off the plan text, and the exported folder reloaded by transformers alone."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_python() -> str:
    """The README's one ```python block."""
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert len(blocks) == 1, "the README should hold exactly one Python example"
    return blocks[0]


def test_readme_python_example_runs_and_its_export_reloads(tmp_path, monkeypatch):
    code = readme_python()
    assert len(code.strip().splitlines()) <= 12  # a ~10-line example, as the README promises
    monkeypatch.chdir(tmp_path)  # it writes out/tailored relative to where it runs
    printed, scope = io.StringIO(), {}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), scope)
    out = printed.getvalue()

    suite_file = Path(scope["fam"].spec.suite_path())
    tasks = [t["name"] for t in yaml.safe_load(suite_file.read_text())["tasks"]]
    assert tasks and all(re.search(rf"^{re.escape(t)}\s", out, re.M) for t in tasks), out

    plan_text = re.search(r'Plan\.from_text\("([^"]+)"\)', code).group(1)
    ops = plan_text.split()
    kept = sum(not op.endswith(":drop") for op in ops)
    assert f"kept {kept}/{len(ops)} layers" in out, out

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "tailored", dtype=torch.float32)
    assert reloaded.config.num_hidden_layers == kept
    n_params = sum(p.numel() for p in reloaded.parameters())
    assert f"params {n_params / 1e6:.2f}M" in out, (n_params, out)

    model = scope["model"].eval()
    ids = torch.randint(7, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(ids).logits, reloaded.eval()(ids).logits
    # the export is written in the base checkpoint's dtype (float16 for the demo): equal up to that rounding
    assert torch.allclose(ours, theirs, atol=5e-2, rtol=0), (ours - theirs).abs().max()
