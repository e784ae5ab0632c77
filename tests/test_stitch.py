import copy
import zlib

import pytest
import torch

from gptailor.family.family import Family
from gptailor.family.spec import FamilyError, FamilySpec
from gptailor.plan import Plan
from gptailor.stitch import Stitcher, param_count
from transformers import AutoModelForCausalLM

from conftest import make_tiny_family
from mergekit_reference import mergekit_merge

PLANS = [
    "0:base 1:base 2:base 3:base",
    "0:base 1:math 2:drop 3:code",
    "0:code 1:drop 2:merge(math=.6,code=.4) 3:base",
    "0:merge[task_arithmetic](math=.7,code=.5) 1:drop 2:drop 3:math",
    "0:base 1:merge[ties,density=.4](math=1,code=1) 2:merge[slerp](base=.3,math=.7) 3:drop",
    "0:math 1:math 2:math 3:math",
    "0:merge[dare_ties,density=.3](math=1,code=.5) 1:base 2:merge[dare_linear](math=.7,code=.3) 3:drop",
]


def reference_models(family: Family) -> dict[str, torch.nn.Module]:
    """Every member loaded the ordinary way (transformers' from_pretrained, float32): the reference the
    lazily read family must agree with."""
    return {m: AutoModelForCausalLM.from_pretrained(family.spec.source(m), dtype=torch.float32).eval()
            for m in family.member_names}


@pytest.fixture(scope="module")
def refs(tiny_family):
    return reference_models(tiny_family)


def reference_logits(models: dict[str, torch.nn.Module], plan: Plan, ids: torch.Tensor) -> torch.Tensor:
    """Layer by layer through the reference models' own modules (merged layers from a copied module)."""
    base = models["base"]
    h = base.model.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    pe = base.model.rotary_emb(h, pos)
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        for i, op in enumerate(plan.ops):
            if op.kind == "drop":
                continue
            if op.kind == "pick":
                layer = models[op.member].model.layers[i]
            else:
                layer = copy.deepcopy(base.model.layers[i])
                states = [models[m].model.layers[i].state_dict() for m in op.members]
                layer.load_state_dict(reference_merge(op, i, states, base.model.layers[i].state_dict()))
            h = layer(h, attention_mask=mask, position_embeddings=pe, position_ids=pos)
            h = h[0] if isinstance(h, tuple) else h
        return base.lm_head(base.model.norm(h))


def reference_merge(op, position: int, states: list[dict], base: dict) -> dict:
    """A merged layer by mergekit's own methods (TIES and DARE at our default density .5 when the plan
    gives none). DARE's masks: torch's generator seeded, as documented, with crc32("position:parameter")."""
    weights = [w for _, w in op.weights]

    def one(key: str) -> torch.Tensor:
        tensors = [s[key] for s in states]
        if op.method == "linear":
            return mergekit_merge("linear", tensors, weight=weights)
        if op.method == "slerp":  # from the first member toward the second
            return mergekit_merge("slerp", tensors[1:], tensors[0], t=weights[1] / sum(weights))
        dense = op.method in ("ties", "dare_ties", "dare_linear")
        params = {"density": 0.5 if op.density is None else op.density} if dense else {}
        torch.manual_seed(zlib.crc32(f"{position}:{key}".encode()))
        return mergekit_merge(op.method, tensors, base[key], weight=weights, **params)
    return {k: one(k) for k in states[0]}


@pytest.mark.parametrize("text", PLANS)
def test_logits_match_layer_by_layer_reference(tiny_family, refs, text):
    plan = Plan.from_text(text)
    model = Stitcher(tiny_family).build(plan)
    ids = torch.randint(7, 100, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(input_ids=ids).logits
        want = reference_logits(refs, plan, ids)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert model.config.num_hidden_layers == plan.n_kept
    assert [l.self_attn.layer_idx for l in model.model.layers] == list(range(plan.n_kept))
    assert all(l.self_attn.config is model.config for l in model.model.layers)


def test_pick_shares_storage_merge_does_not(tiny_family):
    """Same dtype on the CPU: picks are the memory-mapped checkpoint tensors themselves (no copy)."""
    model = Stitcher(tiny_family).build(Plan.from_text("0:base 1:math 2:drop 3:merge(math=1,code=1)"))
    src = tiny_family.layer_state("math", 1)["mlp.up_proj.weight"]
    assert src.data_ptr() == tiny_family.raw_layer("math", 1)["mlp.up_proj.weight"].data_ptr()
    assert model.model.layers[1].mlp.up_proj.weight.data_ptr() == src.data_ptr()
    assert model.model.layers[0].self_attn.q_proj.weight.data_ptr() == \
        tiny_family.layer_state("base", 0)["self_attn.q_proj.weight"].data_ptr()
    assert model.model.embed_tokens.weight.data_ptr() == \
        tiny_family.shared_state()["model.embed_tokens.weight"].data_ptr()
    merged = model.model.layers[2].mlp.up_proj.weight
    assert all(merged.data_ptr() != tiny_family.layer_state(m, 3)["mlp.up_proj.weight"].data_ptr()
               for m in tiny_family.member_names)


def test_generate_with_cache_equals_without(tiny_family):
    ids = torch.randint(7, 100, (1, 6), generator=torch.Generator().manual_seed(1))
    for text in PLANS[1:4]:
        model = Stitcher(tiny_family).build(Plan.from_text(text))
        a = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
        b = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
        assert torch.equal(a, b)


def test_family_files_unchanged_and_cache_bounded_in_bytes(tiny_spec):
    """Many builds (bfloat16 compute: every layer converted) never write into the checkpoints and the
    cache never holds more than its byte budget."""
    import hashlib

    def digests():
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tiny_spec.parent.rglob("*.safetensors"))}

    before = digests()
    fam = Family.from_spec(tiny_spec, dtype="bfloat16", cache_mb=0.05)
    layer_bytes = 2 * fam.layer_params()
    assert fam.cache.max_bytes == int(0.05 * 2 ** 20) < 4 * layer_bytes  # room for a few layers only
    st = Stitcher(fam)
    for _ in range(3):
        for text in PLANS:
            model = st.build(Plan.from_text(text))
            assert fam.cache.nbytes <= fam.cache.max_bytes
            assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert fam.cache.count("layer") >= 1 and fam.cache.misses > 0
    assert digests() == before
    assert Family.from_spec(tiny_spec).raw_layer("math", 2)["mlp.up_proj.weight"].dtype == torch.float32


def test_merge_cache_hits(tiny_family):
    st = Stitcher(tiny_family)
    plan = Plan.from_text("0:base 1:merge(math=.5,code=.5) 2:base 3:base")
    st.build(plan)
    misses = st.cache.misses
    hits = st.cache.hits
    st.build(plan)
    assert st.cache.misses == misses and st.cache.hits == hits + 1
    assert st.cache.count("merge") >= 1


def test_own_cache_budget_and_setting(tiny_spec, monkeypatch):
    st = Stitcher(Family.from_spec(tiny_spec), cache_mb=0)
    st.build(Plan.from_text("0:base 1:merge(math=.5,code=.5) 2:base 3:base"))
    assert len(st.cache) == 0 and st.family.cache.count("merge") == 0  # budget 0: nothing kept
    monkeypatch.setenv("GPTAILOR_CACHE_MB", "12")
    fam = Family.from_spec(tiny_spec)
    assert fam.cache.max_bytes == 12 * 2 ** 20 and fam.info()["cache_mb"] == 12
    monkeypatch.setenv("GPTAILOR_CACHE_MB", "lots")
    with pytest.raises(FamilyError, match="GPTAILOR_CACHE_MB must be a number of megabytes >= 0, got 'lots'"):
        Family.from_spec(tiny_spec)
    monkeypatch.delenv("GPTAILOR_CACHE_MB")
    info = Family.from_spec(tiny_spec).info()
    assert 0 < info["cache_mb"] and "free on cpu" in info["cache_budget"]


def test_param_count_drops_layers(tiny_family):
    full = Stitcher(tiny_family).build(Plan.identity(4))
    small = Stitcher(tiny_family).build(Plan.from_text("base drop drop base"))
    assert param_count(full) == tiny_family.param_count()
    assert param_count(full) - param_count(small) == 2 * tiny_family.layer_params()
    assert param_count(small) == tiny_family.param_count(2)


def test_tied_embeddings_and_qwen3_family(tmp_path):
    fam = Family.from_spec(make_tiny_family(tmp_path / "q", model_type="qwen3", tie=True))
    plan = Plan.from_text("0:math 1:drop 2:merge(math=1,code=1) 3:base")
    model = Stitcher(fam).build(plan)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(7, 100, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = reference_logits(reference_models(fam), plan, ids)
        assert torch.allclose(model(input_ids=ids).logits, want, atol=1e-5)


def test_mismatched_member_is_refused_with_its_name(tmp_path):
    make_tiny_family(tmp_path / "a", n_layers=4)
    make_tiny_family(tmp_path / "b", n_layers=3)
    spec = FamilySpec("mixed", str(tmp_path / "a/base"), {"short": str(tmp_path / "b/math")}, device="cpu")
    with pytest.raises(FamilyError, match="member 'short' has num_hidden_layers=3 but the base has num_hidden_layers=4"):
        Family.from_spec(spec)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(FamilyError, match="architecture 'gpt2' is not supported yet"):
        Family.from_spec(FamilySpec("g", str(tmp_path / "gpt2"), device="cpu"))


@pytest.mark.parametrize("spec,msg", [
    ({"base": "x"}, "missing name"),
    ({"name": "x", "base": "b", "candidates": {"base": "y"}}, "cannot be called 'base'"),
    ({"name": "x", "base": "b", "colour": 1}, "unknown keys"),
    ({"name": "x", "base": "b", "dtype": "int3"}, "dtype 'int3'"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(FamilyError, match=msg):
        FamilySpec.from_dict(spec)


def test_missing_family_and_missing_member(tmp_path):
    with pytest.raises(FamilyError, match="no family"):
        FamilySpec.load(tmp_path / "nowhere.yaml")
    make_tiny_family(tmp_path / "ok", n_layers=2, members=())
    with pytest.raises(FamilyError, match="member 'ghost': folder .*nothing-here does not exist"):
        Family.from_spec(FamilySpec("x", str(tmp_path / "ok/base"), {"ghost": str(tmp_path / "nothing-here")}))


def test_shared_from_member_rebuilds_that_member_exactly(tiny_family, refs):
    ids = torch.randint(7, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    model = Stitcher(tiny_family).build(Plan.identity(4, "math"), shared_from="math")
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, refs["math"](input_ids=ids).logits, atol=1e-6)
        # the default takes embeddings and head from the base, as the paper's stitched model does
        stitched = Stitcher(tiny_family).build(Plan.identity(4, "math"))
        assert not torch.allclose(stitched(input_ids=ids).logits, model(input_ids=ids).logits)


def test_laco_collapse_sources_at_other_positions(tiny_family):
    from gptailor.search.baselines import laco_plan_at
    from gptailor.plan import PlanError

    plan = laco_plan_at(tiny_family, 2, 0)
    assert plan.to_text() == "0:merge[task_arithmetic](base@1=1,base@2=1) 1:drop 2:drop 3:base"
    model = Stitcher(tiny_family).build(plan)
    b = [tiny_family.layer_state("base", i) for i in range(3)]
    want = {k: b[0][k] + (b[1][k] - b[0][k]) + (b[2][k] - b[0][k]) for k in b[0]}
    got = model.model.layers[0].state_dict()
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    with pytest.raises(PlanError, match="names layer 9"):
        Plan.from_text("merge(base@9=1) base base base").validate(tiny_family.member_names, 4)


def test_models_built_inside_inference_mode_do_not_poison_the_cache(tiny_family):
    st = Stitcher(tiny_family)
    plan = Plan.from_text("0:base 1:merge(math=1,code=1) 2:drop 3:base")
    with torch.inference_mode():
        st.build(plan)
    model = st.build(plan)  # reuses the cached merge outside inference mode
    assert not model.model.layers[1].mlp.up_proj.weight.is_inference()


def test_layer_modules_compute_as_the_reference(tiny_family, refs):
    h = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(4))
    pos = torch.arange(5)[None]
    pe = refs["base"].model.rotary_emb(h, pos)
    with torch.no_grad():
        for i, layer in enumerate(tiny_family.layers("code")):
            want = refs["code"].model.layers[i](h, position_embeddings=pe, position_ids=pos)
            got = layer(h, position_embeddings=pe, position_ids=pos)
            want, got = (x[0] if isinstance(x, tuple) else x for x in (want, got))
            assert torch.equal(got, want)
