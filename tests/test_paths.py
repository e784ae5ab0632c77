"""Every name that becomes a path: one rule (gptailor.common.paths), refused with a clear message."""
import copy
import dataclasses
from pathlib import Path

import pytest

from gptailor.common.paths import PathError, child, inside, safe_name

BAD_NAMES = ["../../../../tmp/x/ESCAPED", "..", "../x", "a/../../b", "/etc/passwd", "x/y", "..\\..\\x",
             ".hidden", "a..b", "", " ", "name with space", "x" * 65, "ünïcode", "a\0b", "-rf", None, 3]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_names_are_refused_with_the_rule(name):
    with pytest.raises(PathError, match="family name .* is not allowed: use 1 to 64 letters"):
        safe_name("family", name)


@pytest.mark.parametrize("name", ["demo", "my-tasks", "v1.2_final", "A", "x" * 64])
def test_safe_names_pass(name):
    assert safe_name("suite", name) == name


def test_a_link_inside_the_data_dir_pointing_out_is_refused(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir(), outside.mkdir()
    (data / "families").symlink_to(outside)
    with pytest.raises(PathError, match="outside the app's data folder"):
        child(data, "family spec", "mine", ".yaml", under="families")
    (data / "suites").mkdir()
    (data / "suites" / "evil").symlink_to(outside)
    with pytest.raises(PathError, match="outside"):
        child(data, "suite", "evil", under="suites")
    assert child(data, "suite", "fine", under="suites") == (data / "suites" / "fine").resolve()
    with pytest.raises(PathError):
        inside(data, "/etc/passwd")
    with pytest.raises(PathError):
        inside(data, data / ".." / "elsewhere")


def test_make_suite_refuses_unsafe_suite_and_file_names(tmp_path):
    from gptailor.eval.tasks import TaskError
    from gptailor.eval.suite import make_suite

    good = tmp_path / "ok.jsonl"
    good.write_text('{"text": "fine"}\n')
    with pytest.raises(TaskError, match="suite name '../escape' is not allowed"):
        make_suite([good], tmp_path / "suites" / "x", "../escape")
    spaced = tmp_path / "my tasks.jsonl"
    spaced.write_text('{"text": "fine"}\n')
    with pytest.raises(TaskError, match="task file name 'my tasks.jsonl' is not allowed"):
        make_suite([spaced], tmp_path / "suites" / "s", "s")
    assert not (tmp_path / "suites" / "s").exists()


def test_analysis_cache_refuses_a_family_name_that_is_a_path(tiny_family, tmp_path):
    from gptailor.analysis.layers import cached_analysis

    spec = dataclasses.replace(tiny_family.spec, name="../../escaped")
    fam = copy.copy(tiny_family)  # the same loaded family under a name that is a path
    fam.spec = spec
    with pytest.raises(PathError, match="family name '../../escaped' is not allowed"):
        cached_analysis(fam, ["some text"], tmp_path / "analysis")
    assert not any(tmp_path.rglob("*.json")) and not (tmp_path.parent / "escaped").exists()


def test_the_rule_lives_in_one_place():
    root = Path(__file__).resolve().parents[1]
    pattern = "[A-Za-z0-9][A-Za-z0-9_.-]"
    holders = [p.relative_to(root).as_posix() for d in ("gptailor", "db", "ui") for p in (root / d).rglob("*.py")
               if pattern in p.read_text()]
    assert holders == ["gptailor/common/paths.py"]
