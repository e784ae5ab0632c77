"""The exported mergekit.yaml, run by mergekit itself, rebuilds the very model we stitched."""
import shutil
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM

from gptailor import Plan, Stitcher
from gptailor.export import mergekit_yaml

MERGEKIT = shutil.which("mergekit-yaml")


@pytest.mark.skipif(MERGEKIT is None, reason="mergekit is not installed (requirements.txt installs it)")
@pytest.mark.parametrize("text", [
    "0:base 1:math 2:drop 3:base",
    "0:base 1:math 2:merge(math=1,code=2) 3:base",
    "0:base 1:merge[task_arithmetic](math=.5,code=.7) 2:code 3:base",
    "0:base 1:merge[ties,density=.5](math=1,code=2) 2:drop 3:base",
])
def test_mergekit_rebuilds_the_stitched_model(tiny_family, tmp_path, text):
    plan = Plan.from_text(text)
    cfg = tmp_path / "mergekit.yaml"
    cfg.write_text(mergekit_yaml(tiny_family, plan))
    r = subprocess.run([MERGEKIT, str(cfg), str(tmp_path / "out"), "--allow-crimes"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert merged.config.num_hidden_layers == plan.n_kept
    ids = torch.randint(7, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = Stitcher(tiny_family).build(plan)(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
