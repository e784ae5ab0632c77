"""Measured latency and throughput of a model: prefill and decode tokens per second.

Why measured, not derived from the layer count: dropping a quarter of the layers does not make a model
a quarter faster (embeddings, the LM head, the KV cache and the framework's fixed costs stay), and a
merged layer costs what a picked one does. Users choosing a plan want the figure for their machine, so
every evaluation times the stitched model and the base the same way, on the same device, back to back.

- prefill: one forward pass over ``batch`` prompts of ``prompt_len`` tokens, with the KV cache built
  (what answering a prompt costs before the first token); tokens/s = batch * prompt_len / time;
- decode: the greedy steps of one token each, reusing that cache, until ``new_tokens`` tokens exist
  (the first comes from the prefill's logits); tokens/s = batch * (new_tokens - 1) / time.
Each is the median of ``repeats`` runs after one warm-up run.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class Speed:
    """Tokens per second of one model, and how it was measured."""

    prefill_tok_s: float
    decode_tok_s: float
    prompt_len: int
    new_tokens: int
    batch: int
    device: str
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SpeedSettings:
    prompt_len: int = 128
    new_tokens: int = 32
    batch: int = 1
    repeats: int = 3


# What the app's tabs measure: a quarter of the default's work, so an interactive evaluation pays ~0.1 s
# on the demo family instead of ~0.6 s; the CLI and the model card use the defaults.
INTERACTIVE = SpeedSettings(prompt_len=64, new_tokens=16, batch=1, repeats=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prompt(model, settings: SpeedSettings, seed: int = 0) -> torch.Tensor:
    """Fixed random token ids (the same for every model of a family: same vocabulary)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low=0, high=vocab, size=(settings.batch, settings.prompt_len), generator=g)
    return ids.to(model.device)


@torch.inference_mode()
def _run(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float, torch.Tensor]:
    """(prefill seconds, decode seconds, the greedy tokens) of one run with the KV cache."""
    dev = ids.device
    _sync(dev)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    tok = out.logits[:, -1:].argmax(-1)
    _sync(dev)
    t1 = time.perf_counter()
    toks = [tok]
    for _ in range(new_tokens - 1):
        out = model(input_ids=tok, past_key_values=past, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)
        toks.append(tok)
    _sync(dev)
    return t1 - t0, time.perf_counter() - t1, torch.cat(toks, dim=1)


def measure(model, settings: SpeedSettings | None = None) -> Speed:
    """Prefill and decode tokens/s of ``model`` (median of ``repeats`` runs after a warm-up)."""
    s = settings or SpeedSettings()
    ids = _prompt(model, s)
    if s.new_tokens < 2:
        raise ValueError(f"new_tokens={s.new_tokens}: decode speed needs at least 2 new tokens")
    _run(model, ids, 2)  # warm-up: kernels, allocator
    runs = [_run(model, ids, s.new_tokens) for _ in range(max(1, s.repeats))]
    pre = statistics.median(r[0] for r in runs)
    dec = statistics.median(r[1] for r in runs)
    return Speed(prefill_tok_s=s.batch * s.prompt_len / pre,
                 decode_tok_s=s.batch * (s.new_tokens - 1) / dec,
                 prompt_len=s.prompt_len, new_tokens=s.new_tokens, batch=s.batch, device=str(ids.device),
                 dtype=str(next(model.parameters()).dtype).replace("torch.", ""))


def compare(model, base_model, settings: SpeedSettings | None = None) -> dict[str, Any]:
    """Both models measured back to back, and the stitched/base ratios (above 1 = faster than the base)."""
    base = measure(base_model, settings)
    ours = measure(model, settings)
    return {"model": ours.to_dict(), "base": base.to_dict(),
            "prefill_ratio": ours.prefill_tok_s / base.prefill_tok_s,
            "decode_ratio": ours.decode_tok_s / base.decode_tok_s}


def describe(speed: dict[str, Any]) -> str:
    """One line for tables and logs."""
    m, b = speed["model"], speed["base"]
    return (f"speed ({m['device']}, {m['dtype']}, batch {m['batch']}, prompt {m['prompt_len']}, {m['new_tokens']} new "
            f"tokens): prefill {m['prefill_tok_s']:,.0f} tok/s (base {b['prefill_tok_s']:,.0f}, "
            f"{speed['prefill_ratio']:.2f}x), decode {m['decode_tok_s']:,.1f} tok/s (base {b['decode_tok_s']:,.1f}, "
            f"{speed['decode_ratio']:.2f}x)")


def short(speed: dict[str, Any]) -> str:
    """The same in a few words, for a page's summary line."""
    m = speed["model"]
    return (f"prefill {m['prefill_tok_s']:,.0f} tok/s ({speed['prefill_ratio']:.2f}x the base), decode "
            f"{m['decode_tok_s']:,.1f} tok/s ({speed['decode_ratio']:.2f}x), measured on {m['device']} in {m['dtype']}")
