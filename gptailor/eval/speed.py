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

A speed ratio is noise unless the runs say otherwise (on a busy machine one run of a small model varies
several-fold), so ``compare`` times the two models in turns (base, model, model, base, ...: a slow drift
of the machine's load falls on both alike) and reports each ratio with its **range**: from the slowest
model run over the fastest base run to the fastest over the slowest. The ratio is a finding only when
that whole range lies on one side of 1 (every model run faster, or slower, than every base run: a
rank test whose false-alarm chance for two equal models is 2 / C(2n, n), 0.2% at 6 runs each);
otherwise it reads "same as the base within noise".
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Speed:
    """Tokens per second of one model (the median run's), each run's, and how it was measured."""

    prefill_tok_s: float
    decode_tok_s: float
    prompt_len: int
    new_tokens: int
    batch: int
    device: str
    dtype: str
    prefill_runs: list[float] = field(default_factory=list)  # tokens/s of each timed run
    decode_runs: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SpeedSettings:
    prompt_len: int = 128
    new_tokens: int = 32
    batch: int = 1
    repeats: int = 6  # per model; 6 each puts a false "faster"/"slower" for equal models at 0.2%


# What the app's tabs measure: a quarter of the default's work per run, so that an interactive evaluation
# stays short; as many runs as the default, since fewer cannot tell a ratio from noise.
INTERACTIVE = SpeedSettings(prompt_len=64, new_tokens=16, batch=1, repeats=6)


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


def _speed(model, ids: torch.Tensor, s: SpeedSettings, runs: list[tuple[float, float, Any]]) -> Speed:
    """The Speed of ``runs`` (prefill s, decode s, tokens) of ``model``: tokens over the median time."""
    pre, dec = [r[0] for r in runs], [r[1] for r in runs]
    n_pre, n_dec = s.batch * s.prompt_len, s.batch * (s.new_tokens - 1)
    return Speed(prefill_tok_s=n_pre / statistics.median(pre), decode_tok_s=n_dec / statistics.median(dec),
                 prompt_len=s.prompt_len, new_tokens=s.new_tokens, batch=s.batch, device=str(ids.device),
                 dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
                 prefill_runs=[n_pre / t for t in pre], decode_runs=[n_dec / t for t in dec])


def _checked(settings: SpeedSettings | None) -> SpeedSettings:
    s = settings or SpeedSettings()
    if s.new_tokens < 2:
        raise ValueError(f"new_tokens={s.new_tokens}: decode speed needs at least 2 new tokens")
    return s


def measure(model, settings: SpeedSettings | None = None) -> Speed:
    """Prefill and decode tokens/s of ``model`` (median of ``repeats`` runs after a warm-up)."""
    s = _checked(settings)
    ids = _prompt(model, s)
    _run(model, ids, 2)  # warm-up: kernels, allocator
    return _speed(model, ids, s, [_run(model, ids, s.new_tokens) for _ in range(max(1, s.repeats))])


def ratio_range(model_runs: list[float], base_runs: list[float]) -> list[float] | None:
    """[slowest model run / fastest base run, fastest / slowest]: every ratio the runs allow. None
    without runs (a result stored before runs were kept)."""
    if not model_runs or not base_runs:
        return None
    return [min(model_runs) / max(base_runs), max(model_runs) / min(base_runs)]


def compare(model, base_model, settings: SpeedSettings | None = None) -> dict[str, Any]:
    """Both models timed in turns (base, model, model, base, ...) after a warm-up each: their tokens/s,
    the model/base ratios (above 1 = faster than the base) and each ratio's range over the runs."""
    s = _checked(settings)
    ids = _prompt(base_model, s)
    _run(base_model, ids, 2)  # warm-ups: kernels, allocator
    _run(model, ids, 2)
    runs: dict[str, list] = {"base": [], "model": []}
    for k in range(max(1, s.repeats)):
        for key in (("base", "model") if k % 2 == 0 else ("model", "base")):
            runs[key].append(_run(base_model if key == "base" else model, ids, s.new_tokens))
    base, ours = _speed(base_model, ids, s, runs["base"]), _speed(model, ids, s, runs["model"])
    return {"model": ours.to_dict(), "base": base.to_dict(), "repeats": max(1, s.repeats),
            "prefill_ratio": ours.prefill_tok_s / base.prefill_tok_s,
            "decode_ratio": ours.decode_tok_s / base.decode_tok_s,
            "prefill_range": ratio_range(ours.prefill_runs, base.prefill_runs),
            "decode_range": ratio_range(ours.decode_runs, base.decode_runs)}


def verdict(speed: dict[str, Any], kind: str) -> str:
    """"faster" or "slower" when the whole range of ``kind``'s ratio ("prefill", "decode") lies on one
    side of 1, else "same" (within noise); "unknown" for a ratio of one run with no range."""
    rng = speed.get(f"{kind}_range")
    if not rng:
        return "unknown"
    return "faster" if rng[0] > 1 else "slower" if rng[1] < 1 else "same"


def ratio_text(speed: dict[str, Any], kind: str) -> str:
    """``kind``'s ratio as a page shows it: a ratio only when it is larger than the noise, always with
    its range ("1.31x the base (1.12-1.52x over 6 runs each)", "same as the base within noise (...)")."""
    v, rng = verdict(speed, kind), speed.get(f"{kind}_range")
    if v == "unknown":
        return f"{speed[f'{kind}_ratio']:.2f}x the base (one run: noise not measured)"
    spread = f"{rng[0]:.2f}-{rng[1]:.2f}x over {speed.get('repeats', len(speed['model'][f'{kind}_runs']))} runs each"
    if v == "same":
        return f"same as the base within noise ({spread})"
    return f"{speed[f'{kind}_ratio']:.2f}x the base, {v} ({spread})"


def describe(speed: dict[str, Any]) -> str:
    """One line for tables and logs."""
    m, b = speed["model"], speed["base"]
    return (f"speed ({m['device']}, {m['dtype']}, batch {m['batch']}, prompt {m['prompt_len']}, {m['new_tokens']} new "
            f"tokens): prefill {m['prefill_tok_s']:,.0f} tok/s (base {b['prefill_tok_s']:,.0f}; "
            f"{ratio_text(speed, 'prefill')}), decode {m['decode_tok_s']:,.1f} tok/s (base {b['decode_tok_s']:,.1f}; "
            f"{ratio_text(speed, 'decode')})")


def short(speed: dict[str, Any]) -> str:
    """The same in a few words, for a page's summary line."""
    m = speed["model"]
    return (f"prefill {m['prefill_tok_s']:,.0f} tok/s ({ratio_text(speed, 'prefill')}), decode "
            f"{m['decode_tok_s']:,.1f} tok/s ({ratio_text(speed, 'decode')}), measured on {m['device']} in {m['dtype']}")
