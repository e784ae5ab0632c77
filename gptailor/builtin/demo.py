"""The built-in ``demo`` family: a tiny Llama base and finetunes on distinct synthetic skills.

Why: the app, tests and benchmarks must run offline in seconds, yet the search needs a family
where stitching matters -- each finetune is clearly better than the base on its own skill, and
naive layer dropping hurts. Everything here is deterministic: ``python -m gptailor.builtin build``
regenerates the shipped weights and task files from scratch (about 15-25 minutes on 2 CPU cores).

Skills (all in the same chat format ``<|user|>PROMPT<|assistant|>ANSWER<|end|>``):
- ``math``:    2-digit addition, ``23+45`` -> ``68``;
- ``strings``: reverse a lowercase word, ``rev plokta`` -> ``atkolp``;
- ``facts``:   recall of a synthetic fact base, ``color of zubok`` -> ``teal``.
"""
from __future__ import annotations

import json
import random
import string
import time
from dataclasses import dataclass
from pathlib import Path
from gptailor.builtin import skills
from gptailor.builtin.tokenizer import build_tokenizer
from gptailor.family.spec import DEMO_DIR
COLORS = ["red", "blue", "green", "teal", "pink", "gold", "gray", "plum"]
SKILLS = ("math", "strings", "facts")


def chat(prompt: str) -> str:
    """The prompt as the chat template renders a single user turn with a generation prompt."""
    return f"<|user|>{prompt}<|assistant|>"


# ----------------------------------------------------------------------------- data
def _fact_base(seed: int = 7, n: int = 600) -> dict[str, str]:
    rng = random.Random(seed)
    cons, vows = "bdfgklmnprstvz", "aeiou"
    names: dict[str, str] = {}
    while len(names) < n:
        name = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(2)) + rng.choice(cons)
        names.setdefault(name, rng.choice(COLORS))
    return names


FACTS = _fact_base()


def math_example(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a}+{b}", str(a + b)


def strings_example(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
    return f"rev {word}", word[::-1]


def facts_example(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(sorted(FACTS))
    return f"color of {name}", FACTS[name]


GENERATORS = {"math": math_example, "strings": strings_example, "facts": facts_example}


def sample(skill: str, rng: random.Random, split: str = "train") -> tuple[str, str]:
    """Draw one (prompt, answer) of a skill from the given split (facts are all 'train': recall)."""
    return skills.sample(GENERATORS, skill, rng, split, rule="weighted_chars", recall=("facts",))


def render(prompt: str, answer: str) -> str:
    return f"{chat(prompt)}{answer}<|end|>"


# ----------------------------------------------------------------------------- model / training
@dataclass
class DemoConfig:
    hidden_size: int = 128
    intermediate_size: int = 320
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    seq_len: int = 96
    batch_size: int = 48
    base_steps: int = 600
    base_lr: float = 3e-3
    finetune_steps: int = 600
    finetune_lr: float = 2e-3
    finetune_own_share: float = 0.9
    # The base sees every skill, but not equally: reversal is learned fast, so it gets a smaller share;
    # word lengths 3-9 grade its difficulty, so a short-trained base gets the short words right and
    # leaves the finetune room to beat it on the long ones.
    base_mixture: tuple[tuple[str, float], ...] = (("math", 1.5), ("strings", 0.75), ("facts", 1.0))
    seed: int = 0


def _model_config(cfg: DemoConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _batch(tokenizer, rng: random.Random, mixture: dict[str, float], cfg: DemoConfig):
    """Pack rendered examples into fixed-length rows; every row starts at an example boundary."""
    import torch

    skills, weights = zip(*mixture.items())
    rows = []
    for _ in range(cfg.batch_size):
        ids: list[int] = []
        while len(ids) < cfg.seq_len + 1:
            skill = rng.choices(skills, weights)[0]
            ids += tokenizer.encode(render(*sample(skill, rng)), add_special_tokens=False)
        rows.append(ids[: cfg.seq_len + 1])
    t = torch.tensor(rows)
    return t[:, :-1], t[:, 1:]


def _train(model, tokenizer, mixture, steps: int, lr: float, cfg: DemoConfig, seed: int, log,
           layers_only: bool = False) -> None:
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    for name, p in model.named_parameters():  # finetunes train the decoder layers only (see build)
        p.requires_grad_(not layers_only or ".layers." in name)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / steps))
    model.train()
    t0 = time.time()
    for step in range(steps):
        x, y = _batch(tokenizer, rng, mixture, cfg)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  step {step:5d}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    model.eval()


def quick_eval(model, tokenizer, n: int = 96, seed: int = 5) -> dict[str, float]:
    """Teacher-forced exact-match accuracy per skill on held-out examples (a training-time check)."""
    import torch

    rng, res = random.Random(seed), {}
    for skill in SKILLS:
        ok = 0
        for _ in range(n):
            prompt, answer = sample(skill, rng, split="test")
            p_ids = tokenizer.encode(chat(prompt), add_special_tokens=False)
            a_ids = tokenizer.encode(answer, add_special_tokens=False)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([p_ids + a_ids])).logits[0]
            pred = logits[len(p_ids) - 1: len(p_ids) + len(a_ids) - 1].argmax(-1).tolist()
            ok += pred == a_ids
        res[skill] = round(ok / n, 3)
    return res


def write_tasks(out: Path, n_test: int = 200, seed: int = 1) -> None:
    """Held-out task files (JSONL) and the suite that groups them."""
    tasks = out / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for skill in ("math", "strings"):
        seen, rows = set(), []
        while len(rows) < n_test:
            prompt, answer = sample(skill, rng, split="test")
            if prompt not in seen:
                seen.add(prompt)
                rows.append({"prompt": chat(prompt), "target": answer})
        _write_jsonl(tasks / f"{skill}.jsonl", rows)
    names = random.Random(seed + 1).sample(sorted(FACTS), 200)  # recall is the skill: a sample of the base
    facts = [{"context": chat(f"color of {name}"), "choices": COLORS, "answer": COLORS.index(FACTS[name])}
             for name in names]
    _write_jsonl(tasks / "facts.jsonl", facts)
    mix = [{"text": render(*sample(SKILLS[i % 3], rng, split="test"))} for i in range(120)]
    _write_jsonl(tasks / "chat_ppl.jsonl", mix)
    suite = {"name": "demo", "tasks": [
        {"name": "math", "kind": "exact_match", "path": "math.jsonl"},
        {"name": "strings", "kind": "exact_match", "path": "strings.jsonl"},
        {"name": "facts", "kind": "multiple_choice", "path": "facts.jsonl"},
        {"name": "chat_ppl", "kind": "perplexity", "path": "chat_ppl.jsonl"},
    ]}
    (tasks / "suite.yaml").write_text(_yaml(suite))


def write_lm_eval_tasks(out: Path, n: int | None = None, src: Path | None = None) -> Path:
    """lm-evaluation-harness task YAMLs over local JSON files made from the demo's own task data, so lm-eval
    runs offline on the demo family: ``demo_facts`` (multiple choice, 8 colours of different lengths) and
    ``demo_math`` (generate_until, stops at a newline). ``n``: docs per task (default all). Returns ``out``."""
    from gptailor.eval.lm_eval import write_local_task

    src = src or DEMO_DIR / "tasks"
    facts = [json.loads(x) for x in (src / "facts.jsonl").read_text().splitlines() if x.strip()][:n]
    math_ = [json.loads(x) for x in (src / "math.jsonl").read_text().splitlines() if x.strip()][:n]
    write_local_task(out, "demo_facts", [{"question": r["context"], "choices": r["choices"], "label": r["answer"]}
                                         for r in facts],
                     output_type="multiple_choice", doc_to_text="{{question}}", doc_to_choice="{{choices}}",
                     doc_to_target="label", target_delimiter="",
                     metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    write_local_task(out, "demo_math", [{"question": r["prompt"], "answer": r["target"]} for r in math_],
                     output_type="generate_until", doc_to_text="{{question}}", doc_to_target="answer",
                     generation_kwargs={"until": ["\n"], "do_sample": False, "max_gen_toks": 8},
                     metric_list=[{"metric": "exact_match"}])
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def build(out: Path = DEMO_DIR, cfg: DemoConfig | None = None, log=print) -> Path:
    """Train the base on a mixture of all skills, then one finetune per skill, and save them all."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    cfg = cfg or DemoConfig()
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    gen = GenerationConfig(max_new_tokens=16, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base = LlamaForCausalLM(_model_config(cfg, tokenizer))
    log(f"base: {sum(p.numel() for p in base.parameters()) / 1e6:.2f}M params")
    _train(base, tokenizer, dict(cfg.base_mixture), cfg.base_steps, cfg.base_lr, cfg, cfg.seed, log)
    log(f"base quick eval: {quick_eval(base, tokenizer)}")
    _save(base, tokenizer, gen, out / "base")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    for i, skill in enumerate(SKILLS):
        log(f"finetune {skill}")
        base.load_state_dict(base_state)
        rest = (1 - cfg.finetune_own_share) / (len(SKILLS) - 1)
        mixture = {s: (cfg.finetune_own_share if s == skill else rest) for s in SKILLS}
        # Embeddings, final norm and head stay the base's, as in a stitched model (and as in most
        # parameter-efficient finetunes): a layer from a finetune then fits any plan.
        _train(base, tokenizer, mixture, cfg.finetune_steps, cfg.finetune_lr, cfg, cfg.seed + 1 + i, log,
               layers_only=True)
        log(f"{skill} quick eval: {quick_eval(base, tokenizer)}")
        _save(base, tokenizer, gen, out / skill)
    write_tasks(out)
    spec = {"name": "demo", "base": "base", "candidates": {s: s for s in SKILLS},
            "dtype": "float32", "device": "auto", "suite": "tasks/suite.yaml"}
    (out / "family.yaml").write_text(_yaml(spec))
    return out


def _save(model, tokenizer, gen, path: Path) -> None:
    """Save in float16 to keep the repo light (about 2.5 MB a member); loaded back as float32."""
    import copy

    import torch

    half = copy.deepcopy(model).to(torch.float16)
    half.generation_config = gen
    half.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def report(family: str = "demo") -> str:
    """A markdown table of every member's scores, and of naive last-quarter dropping, on the test split
    (``python -m gptailor report`` prints the same table, with progress)."""
    from gptailor.eval.evaluator import Evaluator
    from gptailor.eval.members import markdown, member_rows
    from gptailor.eval.suite import load_suite
    from gptailor.family.family import Family

    fam = Family.from_spec(family)
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()))
    return markdown(ev, member_rows(ev))
