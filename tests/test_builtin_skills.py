"""The built-in families' train/test split: one helper, each family's own rule, shipped tasks unchanged."""
import json
import random
import zlib

from gptailor.builtin import demo, skills
from gptailor.family.spec import DEMO_DIR


def _raw(prompt: str) -> str:
    return prompt.removeprefix("<|user|>").removesuffix("<|assistant|>")


def test_rules_by_hand():
    # weighted_chars: sum of (position + 1) * code point; 'h' = 104 = 13 * 8, 'ab' = 97 + 2 * 98 = 293
    assert skills.split_of("h", "weighted_chars") == "test" and skills.split_of("ab", "weighted_chars") == "train"
    keys = [f"k{i}" for i in range(400)]
    assert [skills.split_of(k, "crc32") for k in keys] == \
        ["test" if zlib.crc32(k.encode()) % 8 == 0 else "train" for k in keys]
    share = sum(skills.split_of(k, "weighted_chars") == "test" for k in keys) / len(keys)
    assert 0.06 < share < 0.2  # about one in eight held out


def test_the_shipped_demo_tasks_are_all_held_out_and_regenerate_byte_for_byte(tmp_path):
    for skill in ("math", "strings"):
        rows = [json.loads(x) for x in (DEMO_DIR / "tasks" / f"{skill}.jsonl").read_text().splitlines()]
        assert rows and all(skills.split_of(_raw(r["prompt"]), "weighted_chars") == "test" for r in rows)
    demo.write_tasks(tmp_path)
    for name in ("math.jsonl", "strings.jsonl", "facts.jsonl", "chat_ppl.jsonl"):
        assert (tmp_path / "tasks" / name).read_bytes() == (DEMO_DIR / "tasks" / name).read_bytes(), name


def test_sample_draws_from_the_split_and_recall_skills_have_none():
    rng = random.Random(0)
    for split in ("train", "test"):
        for _ in range(30):
            p, _a = demo.sample("math", rng, split)
            assert skills.split_of(p, "weighted_chars") == split
    facts = {demo.sample("facts", rng, "test")[0] for _ in range(50)}
    assert any(skills.split_of(p, "weighted_chars") == "train" for p in facts)  # recall: no held-out split


def test_smol_samples_follow_its_own_rule():
    from gptailor.builtin import smol

    rng = random.Random(1)
    prompts = [smol.sample("reverse", rng, "test")[0] for _ in range(20)]
    assert all(zlib.crc32(p.encode()) % 8 == 0 for p in prompts)
