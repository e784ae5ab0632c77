import json

import pytest

from gptailor.eval.tasks import TaskError, load_task
from gptailor.eval.suite import load_suite


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
    write(tmp_path / "a.jsonl", ['{"text": "x"}', '{"text": "y"}'])
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


def test_make_suite_infers_kinds_and_stores_a_loadable_suite(tmp_path):
    from gptailor.eval.suite import make_suite

    up = tmp_path / "upload"
    up.mkdir()
    a = write(up / "adds.jsonl", ['{"prompt": "1+1=", "target": "2"}', '{"prompt": "2+2=", "target": "4"}'])
    b = write(up / "pick.jsonl", ['{"context": "sky is", "choices": [" blue", " green"], "answer": 0}',
                                  '{"context": "grass is", "choices": [" blue", " green"], "answer": 1}'])
    c = write(up / "prose.jsonl", ['{"text": "hello there"}', '{"text": "good night"}'])
    suite = make_suite([a, b, c], tmp_path / "suites" / "mine", "mine")
    assert suite.name == "mine" and suite.names == ["adds", "pick", "prose"]
    assert [t.kind for t in suite] == ["exact_match", "multiple_choice", "perplexity"]
    assert load_suite(tmp_path / "suites" / "mine").names == suite.names  # stored, reloadable
    with pytest.raises(TaskError, match="already stored"):
        make_suite([a], tmp_path / "suites" / "mine", "mine")


@pytest.mark.parametrize("files,msg", [
    ({"x.jsonl": ['{"prompt": "p", "target": "t"}', '{"prompt": "p"}']}, r"^x\.jsonl:2: exact_match example needs"),
    ({"x.jsonl": ['{"question": "q"}']}, r"^x\.jsonl:1: cannot tell the task kind"),
    ({"x.jsonl": ['{"prompt": "p", "target"']}, r"^x\.jsonl:1: not valid JSON"),
    ({"suite.yaml": ["tasks:", "  - {name: a, kind: perplexity, path: ../../etc/passwd}"],
      "x.jsonl": ['{"text": "t"}']}, r"names file '../../etc/passwd', which was not uploaded"),
    ({"suite.yaml": ["tasks:", "  - {name: a, kind: essay, path: x.jsonl}"], "x.jsonl": ['{"text": "t"}']},
     "unknown kind 'essay'"),
    ({"notes.txt": ["hi"]}, "expected JSONL task files"),
])
def test_make_suite_rejects_bad_uploads_and_leaves_nothing(tmp_path, files, msg):
    from gptailor.eval.suite import make_suite

    up = tmp_path / "upload"
    up.mkdir()
    paths = [write(up / n, lines) for n, lines in files.items()]
    with pytest.raises(TaskError, match=msg):
        make_suite(paths, tmp_path / "suites" / "s", "s")
    assert not (tmp_path / "suites").exists() or list((tmp_path / "suites").iterdir()) == []


def test_make_suite_checks_name_and_size(tmp_path):
    from gptailor.eval.suite import make_suite

    f = write(tmp_path / "x.jsonl", ['{"text": "' + "a" * 2000 + '"}'])
    with pytest.raises(TaskError, match="suite name"):
        make_suite([f], tmp_path / "s", "../evil")
    with pytest.raises(TaskError, match="at most 0.0 MB"):
        make_suite([f], tmp_path / "s", "s", max_bytes=1000)


def test_make_suite_caps_examples_per_task_and_keeps_yaml_positions(tmp_path):
    from gptailor.eval.suite import make_suite

    many = tmp_path / "many.jsonl"
    many.write_text("".join('{"text": "line %d"}\n' % i for i in range(30)))
    with pytest.raises(TaskError, match="task 'many' has 30 examples; this app takes at most 25 per task"):
        make_suite([many], tmp_path / "suites" / "big", "big", max_examples=25)
    assert not (tmp_path / "suites" / "big").exists()
    assert len(next(iter(make_suite([many], tmp_path / "suites" / "ok", "ok", max_examples=30)))) == 30
    bad = tmp_path / "suite.yaml"
    bad.write_text("name: x\ntasks:\n  - {name: a, kind: perplexity, path: many.jsonl\n")
    with pytest.raises(TaskError) as e:
        make_suite([many, bad], tmp_path / "suites" / "y", "y")
    assert "cannot parse suite.yaml: line 4, column 1: expected ',' or '}'" in str(e.value)
    assert "<unicode string>" not in str(e.value) and "\n" not in str(e.value)
