import json

import pytest

from gptailor.tasks import TaskError, load_suite, load_task


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind,line,msg", [
    ("exact_match", '{"prompt": "a"}', "needs a string 'target'"),
    ("exact_match", '{"prompt": "a", "target": ""}', "'target' is empty"),
    ("exact_match", '{"prompt": "a", "target": 3}', "needs a string 'target'"),
    ("exact_match", '[1, 2]', "expected a JSON object"),
    ("exact_match", '{"prompt": "a", "target": "b"', "not valid JSON"),
    ("multiple_choice", '{"context": "c", "choices": ["x"], "answer": 0}', "at least two"),
    ("multiple_choice", '{"context": "c", "choices": ["x", "y"], "answer": 2}', "index of the right choice"),
    ("multiple_choice", '{"context": "c", "choices": ["x", "y"], "answer": true}', "index of the right choice"),
    ("multiple_choice", '{"choices": ["x", "y"], "answer": 0}', "needs a string 'context'"),
    ("perplexity", '{"txt": "hello"}', "needs a non-empty string 'text'"),
])
def test_malformed_lines_name_file_and_line(tmp_path, kind, line, msg):
    good = {"exact_match": '{"prompt": "p", "target": "t"}',
            "multiple_choice": '{"context": "c", "choices": ["a", "b"], "answer": 1}',
            "perplexity": '{"text": "t"}'}[kind]
    path = write(tmp_path / "t.jsonl", [good, "", good, line])
    with pytest.raises(TaskError, match=rf"t\.jsonl:4: .*{msg}" if "JSON" not in msg or "object" in msg else rf"t\.jsonl:4: {msg}"):
        load_task(path, kind)


def test_unknown_kind_missing_file_and_empty(tmp_path):
    with pytest.raises(TaskError, match="unknown kind 'essay'"):
        load_task(tmp_path / "x.jsonl", "essay")
    with pytest.raises(TaskError, match="does not exist"):
        load_task(tmp_path / "x.jsonl", "perplexity")
    with pytest.raises(TaskError, match="no examples"):
        load_task(write(tmp_path / "e.jsonl", [""]), "perplexity")


def test_fidelity_subsets_are_nested_and_deterministic(tmp_path):
    path = write(tmp_path / "t.jsonl", [json.dumps({"text": f"line {i}"}) for i in range(50)])
    task = load_task(path, "perplexity")
    subsets = [task.subset(n) for n in (1, 5, 17, 50, None)]
    for small, big in zip(subsets, subsets[1:]):
        assert big[: len(small)] == small
    assert load_task(path, "perplexity").subset(17) == subsets[2]  # same order on reload
    assert [e["text"] for e in subsets[2]] != [f"line {i}" for i in range(17)]  # shuffled, not file order
    assert len(task.subset(500)) == 50
    with pytest.raises(TaskError, match="positive"):
        task.subset(0)


def test_suite_loading_and_errors(tmp_path):
    write(tmp_path / "a.jsonl", ['{"text": "x"}'])
    (tmp_path / "suite.yaml").write_text("name: s\ntasks:\n- {name: a, kind: perplexity, path: a.jsonl}\n")
    suite = load_suite(tmp_path)
    assert suite.names == ["a"] and suite.name == "s"
    (tmp_path / "suite.yaml").write_text("name: s\ntasks:\n- {name: a, kind: perplexity, path: a.jsonl}\n"
                                         "- {name: a, kind: perplexity, path: a.jsonl}\n")
    with pytest.raises(TaskError, match="appears twice"):
        load_suite(tmp_path / "suite.yaml")
    (tmp_path / "suite.yaml").write_text("tasks: []\n")
    with pytest.raises(TaskError, match="non-empty 'tasks'"):
        load_suite(tmp_path / "suite.yaml")
