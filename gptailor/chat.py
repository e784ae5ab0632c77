"""Generating text from a (stitched) model with the family's chat template."""
from __future__ import annotations

from threading import Thread
from typing import Iterator

import torch


def render_prompt(tokenizer, messages: list[dict[str, str]] | str) -> str:
    """Messages (or one user prompt) as the model expects them; plain text if there is no template."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages) + "\n"


def _gen_kwargs(tokenizer, max_new_tokens: int, temperature: float) -> dict:
    kw = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
          "eos_token_id": tokenizer.eos_token_id}
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


def _inputs(model, tokenizer, messages):
    text = render_prompt(tokenizer, messages)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=not getattr(tokenizer, "chat_template", None))
    dev = next(model.parameters()).device
    return {k: v.to(dev) for k, v in enc.items()}


@torch.inference_mode()
def reply(model, tokenizer, messages: list[dict[str, str]] | str, max_new_tokens: int = 32,
          temperature: float = 0.0, seed: int | None = 0) -> str:
    """The model's answer to a chat (greedy unless temperature > 0)."""
    if seed is not None:
        torch.manual_seed(seed)
    enc = _inputs(model, tokenizer, messages)
    out = model.generate(**enc, **_gen_kwargs(tokenizer, max_new_tokens, temperature))
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def stream_reply(model, tokenizer, messages: list[dict[str, str]] | str, max_new_tokens: int = 32,
                 temperature: float = 0.0) -> Iterator[str]:
    """Yield the answer as it grows (transformers' TextIteratorStreamer), for chat UIs."""
    from transformers import TextIteratorStreamer

    enc = _inputs(model, tokenizer, messages)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kw = dict(**enc, **_gen_kwargs(tokenizer, max_new_tokens, temperature), streamer=streamer)
    thread = Thread(target=lambda: torch.inference_mode()(model.generate)(**kw), daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()
