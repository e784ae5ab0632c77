"""Skills of the built-in families: generated (prompt, answer) pairs and their fixed train/test split.

Both built-in families hold out about 1 in 8 generated prompts, decided by a hash of the prompt, so a
finetune never trains on a test prompt and the split needs no stored list. The two families were
trained with different hashes, kept here side by side as named rules: changing a family's rule would
move test prompts into what its shipped weights were trained on.
"""
from __future__ import annotations

import random
import zlib
from typing import Callable

Generator = Callable[[random.Random], tuple[str, str]]


def _weighted_chars(key: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(key))


SPLIT_HASHES: dict[str, Callable[[str], int]] = {
    "weighted_chars": _weighted_chars,  # the demo family
    "crc32": lambda key: zlib.crc32(key.encode()),  # the smol family
}
HELD_OUT = 8  # one prompt in HELD_OUT is a test prompt


def split_of(key: str, rule: str) -> str:
    """``"test"`` for about one key in eight, else ``"train"``; deterministic for a given rule."""
    return "test" if SPLIT_HASHES[rule](key) % HELD_OUT == 0 else "train"


def sample(generators: dict[str, Generator], skill: str, rng: random.Random, split: str, rule: str,
           recall: tuple[str, ...] = ()) -> tuple[str, str]:
    """One (prompt, answer) of ``skill`` from ``split``. A recall skill (facts, capitals) has no split:
    knowing a fact is the skill, so every fact is in both."""
    while True:
        prompt, answer = generators[skill](rng)
        if skill in recall or split_of(prompt, rule) == split:
            return prompt, answer
