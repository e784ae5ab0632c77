"""Short unique study names: chosen at creation, unique per family with a suffix, renamable (store and CLI)."""
import pytest

from db.runs import short_name
from db.store import Store, StoreError


def new(store: Store, family: str = "tiny", method: str = "smac", name: str | None = None) -> int:
    return store.create_study(family_name=family, family_source="demo", family_spec={}, family_info={},
                              method=method, budget={"remove_layers": 2}, settings={}, n_trials=3, name=name)


def names(store: Store) -> dict[int, str]:
    return {s["id"]: s["name"] for s in store.studies()}


def test_short_names_say_method_budget_and_seed():
    assert short_name("smac", 2, 0) == "smac-r2-s0"
    assert short_name("random", 3, 7) == "random-r3-s7"
    assert short_name("last_n", 2, 5) == "last_n-r2"  # a heuristic does not depend on the seed


def test_names_are_unique_per_family_with_a_suffix(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    a, b, c = new(store, name="smac-r2-s0"), new(store, name="smac-r2-s0"), new(store, name="smac-r2-s0")
    other = new(store, family="other", name="smac-r2-s0")
    assert [names(store)[i] for i in (a, b, c, other)] == ["smac-r2-s0", "smac-r2-s0-2", "smac-r2-s0-3", "smac-r2-s0"]
    manual = new(store, method="manual")
    assert names(store)[manual] == "manual"


def test_rename_is_checked(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    a, b = new(store, name="first"), new(store, name="second")
    assert store.rename_study(a, "  my   best  ") == "my best" and names(store)[a] == "my best"
    with pytest.raises(StoreError, match=f"study {b} on this family is already named 'second'"):
        store.rename_study(a, "second")
    with pytest.raises(StoreError, match="cannot be empty"):
        store.rename_study(a, "   ")
    with pytest.raises(StoreError, match="at most 60 characters"):
        store.rename_study(a, "x" * 61)
    with pytest.raises(StoreError, match="no study 99"):
        store.rename_study(99, "x")
    assert names(store) == {a: "my best", b: "second"}


def test_rename_from_the_cli(tmp_path, capsys):
    from db.cli import main

    db = f"sqlite:///{tmp_path / 's.db'}"
    store = Store(db)
    a, b = new(store, name="one"), new(store, name="two")
    assert main(["studies", "--db", db, "--rename", str(a), "short"]) == 0
    assert f"study {a} is now named 'short'" in capsys.readouterr().out
    assert main(["studies", "--db", db, "--rename", str(b), "short"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already named 'short'" in err
    assert names(store) == {a: "short", b: "two"}
    assert main(["studies", "--db", db]) == 0 and "short" in capsys.readouterr().out
