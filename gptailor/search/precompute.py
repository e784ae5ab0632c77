"""Pre-trial work done once per (family, suite, split) and reused by every later study.

A study needs two things before its first trial: the references (every member scored on the whole
search split) and the heuristics' plans (ShortGPT / angular / LaCo look at layer statistics on a
calibration set). Both depend only on the family's weights, the suite's content and the split, so
they are stored as JSON under a content key:

- the family: its spec, compute device and dtype, and every weight file's resolved path, size and
  modification time (a changed checkpoint is a new key; hashing gigabytes of weights is not needed
  because a hub snapshot's path already names its commit);
- the suite: a hash of every task's examples and options (a changed example is a new key; the path
  alone is not enough, an uploaded suite can be replaced under the same name);
- the split, the fidelity (None: the whole split) and what else the result depends on.

A cache hit is told to the ``progress`` listener (``cached=True``), so a page shows "references (cached)".
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from gptailor.search.baselines import HEURISTICS, LACO_CANDIDATES, SharedStates, calibration_ids, heuristic_plan
from gptailor.analysis.states import Calibration, LayerStates
from gptailor.eval.evaluator import Evaluator
from gptailor.eval.results import References
from gptailor.family.family import Family
from gptailor.common.paths import inside, safe_name
from gptailor.plan import Plan
from gptailor.common.progress import Phase, Progress, listening
from gptailor.stitch import Stitcher
from gptailor.eval.suite import Suite

VERSION = 1  # bump when what is cached changes meaning


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def family_fingerprint(family: Family) -> str:
    """The family's spec, compute device/dtype and every weight file's (path, size, mtime)."""
    files = []
    for m in family.member_names:
        for p in sorted({str(Path(p).resolve()) for p in family.checkpoints[m].files.values()}):
            st = os.stat(p)
            files.append([m, p, st.st_size, st.st_mtime_ns])
    return _digest({"spec": family.spec.to_dict(), "device": str(family.device), "dtype": str(family.dtype),
                    "files": files})


def suite_fingerprint(suite: Suite) -> str:
    """Every task's name, kind, options and examples: the suite's content, not its path."""
    return _digest([{"name": t.name, "kind": t.kind, "until": t.until, "filter": t.filter, "metric": t.metric,
                     "chat_template": t.chat_template, "max_gen_toks": t.max_gen_toks,
                     "test_fraction": t.test_fraction, "examples": t.examples,
                     **({"test_only": t.n_test_only} if t.n_test_only else {})} for t in suite])


class Precompute:
    """A JSON cache under ``folder`` (None: no cache, everything is computed)."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def _path(self, kind: str, family: Family, key: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        name = safe_name("family", family.name)
        return inside(self.folder, self.folder / f"{kind}-{name}-{_digest({'v': VERSION, **key})}.json", "cache")

    def get(self, kind: str, family: Family, key: dict[str, Any]) -> Any | None:
        path = self._path(kind, family, key)
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # a torn or foreign file: compute again and overwrite it
            return None

    def put(self, kind: str, family: Family, key: dict[str, Any], value: Any) -> None:
        path = self._path(kind, family, key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)  # atomic: two studies starting together both read a whole file

    # -- references --------------------------------------------------------------------
    def references(self, ev: Evaluator, split: str = "search", progress: Progress | None = None) -> References:
        """Every member scored on the whole ``split`` (the evaluator's ``references``), from the cache when
        this family, suite content and split were scored before; the evaluator adopts them. ``progress``
        (default: the listener in force) is told each member scored and gets the engine's ticks."""
        with listening(progress) as p:
            return self._references(ev, split, p)

    def _references(self, ev: Evaluator, split: str, progress: Progress) -> References:
        fam = ev.family
        K = len(fam.member_names)
        if ev.has_references(split):  # already in memory: nothing to read or hash
            progress.phase(Phase("references", K, K, "already loaded", cached=True))
            return ev.references(split)
        key = {"family": family_fingerprint(fam), "suite": suite_fingerprint(ev.suite), "split": split,
               "fidelity": None, "near_zero": ev.near_zero}
        hit = self.get("refs", fam, key)
        if hit is not None:
            refs = References.from_dict(hit)
            ev.use_references(refs)
            progress.phase(Phase("references", K, K, "every member on the search split", cached=True))
            return refs

        refs = ev.references(split, progress=progress)
        progress.phase(Phase("references", K, K, "every member on the search split"))
        self.put("refs", fam, key, refs.to_dict())
        return refs

    # -- heuristics ---------------------------------------------------------------------
    def heuristic_plan(self, name: str, family: Family, n: int, suite: Suite, member: str = "base",
                       stitcher: Stitcher | None = None, texts: Calibration | None = None,
                       on_compute: Callable[[], None] | None = None,
                       states: Callable[[], LayerStates] | None = None) -> tuple[Plan, bool]:
        """One heuristic's plan (``baselines.heuristic_plan``) on the suite's calibration texts, and whether
        it came from the cache; ``on_compute`` is called only when it has to be computed; ``states``
        hands out the member's hidden-state statistics when several heuristics share one forward."""
        texts = texts if texts is not None else calibration_ids(suite, family.tokenizer)
        key = {"family": family_fingerprint(family), "texts": _digest(texts), "heuristic": name, "member": member,
               "n": n}
        if name == "laco":  # a different bound is a different algorithm: never serve the other's plan
            key["candidates"] = LACO_CANDIDATES
        hit = self.get("heuristic", family, key) if name != "last_n" else None
        if hit is not None:
            return Plan.from_dict(hit), True
        if on_compute is not None and name != "last_n":
            on_compute()
        plan = heuristic_plan(name, family, n, texts, member=member, stitcher=stitcher,
                              states=states() if states is not None and name != "last_n" else None)
        if name != "last_n":  # last_n needs no statistics: nothing to save
            self.put("heuristic", family, key, plan.to_dict())
        return plan, name == "last_n"

    def heuristic_removals(self, family: Family, n: int, suite: Suite, stitcher: Stitcher | None = None,
                           progress: Progress | None = None) -> dict[str, list[int]]:
        """The positions each heuristic removes (the search's seeded initial design). The base runs
        forward once for all of them (LaCo then runs at most ``LACO_CANDIDATES`` collapsed models).
        ``progress`` (default: the listener in force) is told each heuristic computed."""
        with listening(progress) as p:
            return self._heuristic_removals(family, n, suite, stitcher, p)

    def _heuristic_removals(self, family: Family, n: int, suite: Suite, stitcher: Stitcher | None,
                            progress: Progress) -> dict[str, list[int]]:
        texts = calibration_ids(suite, family.tokenizer)
        states = SharedStates(family, texts, stitcher).of("base")
        out: dict[str, list[int]] = {}
        K = len(HEURISTICS)
        all_cached = True
        for k, h in enumerate(HEURISTICS):
            plan, cached = self.heuristic_plan(h, family, n, suite, stitcher=stitcher, texts=texts,
                                               on_compute=lambda: progress.phase(Phase("heuristics", k, K, h)),
                                               states=states)
            all_cached = all_cached and cached
            out[h] = [i for i, op in enumerate(plan.ops) if op.kind == "drop"]
        progress.phase(Phase("heuristics", K, K, ", ".join(HEURISTICS), cached=all_cached))
        return out


__all__ = ["Precompute", "family_fingerprint", "suite_fingerprint"]
