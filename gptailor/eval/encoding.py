"""How a task's example becomes the model's tokens: the chat template, special tokens and the split into
context and scored continuation. One place, read by scoring (``eval/evaluator.py``) and by the
calibration texts the heuristics and the layer analysis run on (``search/baselines.py``), so both see
the same tokens.

``chat_template: true`` renders the prompt as one user turn with the tokenizer's own template,
``apply_chat_template([{"role": "user", ...}], add_generation_prompt=True)``: whatever the template
adds comes with it, a default system turn included (SmolLM2's adds "You are a helpful AI assistant
named SmolLM, ..."; the demo family's adds none).
"""
from __future__ import annotations

from typing import Any

from gptailor.eval.tasks import Task, TaskError


def start_id(tokenizer) -> int:
    """What precedes the first scored token when the text itself gives nothing: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def context_text(tokenizer, task: Task, text: str) -> tuple[str, bool]:
    """The context as the model sees it, and whether the tokenizer should add its special tokens (not
    after a chat template: the template writes them)."""
    if not task.chat_template:
        return text, True
    if not getattr(tokenizer, "chat_template", None):
        raise TaskError(f"task {task.name!r} asks for chat_template, but the family's tokenizer has none; "
                        f"set chat_template: false and write the prompt format into the prompts")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True), False


def encode_pair(tokenizer, task: Task, ctx: str, cont: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), as lm-eval splits them: the continuation is what tokenizing the
    whole text adds after the context's tokens (its own tokens when that prefix does not hold)."""
    ctx, special = context_text(tokenizer, task, ctx)
    c = tokenizer(ctx, add_special_tokens=special)["input_ids"]
    if not c:  # no BOS and an empty context: something must precede the first scored token
        return [start_id(tokenizer)], tokenizer(cont, add_special_tokens=False)["input_ids"]
    whole = tokenizer(ctx + cont, add_special_tokens=special)["input_ids"]
    ok = whole[: len(c)] == c and len(whole) > len(c)
    return c, whole[len(c):] if ok else tokenizer(cont, add_special_tokens=False)["input_ids"]


def encode_text(tokenizer, text: str) -> list[int]:
    """A perplexity text's ids: at least two (the first is context, the rest scored)."""
    ids = tokenizer(text)["input_ids"]
    return ids if len(ids) >= 2 else [start_id(tokenizer), *ids]


def example_ids(tokenizer, task: Task, ex: dict[str, Any]) -> list[int]:
    """One example's whole scored sequence, as scoring feeds it: prompt and target (exact match), the
    right choice behind its context (multiple choice), the text (perplexity)."""
    if task.kind == "exact_match":
        c, t = encode_pair(tokenizer, task, ex["prompt"], ex["target"])
    elif task.kind == "multiple_choice":
        ctx = ex["context"]  # a list for lm-eval's partial-evaluation tasks: one context per choice
        c, t = encode_pair(tokenizer, task, ctx[ex["answer"]] if isinstance(ctx, list) else ctx,
                           ex["choices"][ex["answer"]])
    else:
        return encode_text(tokenizer, ex["text"])
    return c + t
