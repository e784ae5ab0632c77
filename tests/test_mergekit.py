"""The exported mergekit.yaml, run by mergekit itself, rebuilds the very model we stitched."""
import shutil
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM

from gptailor import Family, Plan, Stitcher
from gptailor.export.mergekit import mergekit_yaml

from conftest import make_tiny_family

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


def _mergekit_model(family, plan, tmp_path):
    """The model ``mergekit-yaml`` builds from the exported YAML."""
    cfg = tmp_path / "mergekit.yaml"
    cfg.write_text(mergekit_yaml(family, plan))
    r = subprocess.run([MERGEKIT, str(cfg), str(tmp_path / "out"), "--allow-crimes"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert merged.config.num_hidden_layers == plan.n_kept
    return merged


def _check_mergekit_rebuilds(family, plan, tmp_path) -> str:
    """Run mergekit on the exported YAML; its model's logits must equal the stitched model's."""
    merged = _mergekit_model(family, plan, tmp_path)
    cfg = tmp_path / "mergekit.yaml"
    ids = torch.randint(7, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = Stitcher(family).build(plan)(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    return cfg.read_text()
