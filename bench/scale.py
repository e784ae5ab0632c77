"""Memory and per-trial cost at a real model size: GPTailor's in-memory trials vs write-and-reload.

Run on a synthetic real-shape family (random bfloat16 weights at a published model's shape; see
``gptailor/synth.py``)::

    python -m gptailor.builtin synth --shape llama-3.2-1b --members 4 --out /data/synth-1b
    python -m bench.scale --family /data/synth-1b [--trials 4] [--fidelity 4] [--cache-mb 2048]

Each memory figure is measured in a fresh child process (peak RSS is per process):
- ``trials``: open the family, run N trials (stitch + merges + score + store in SQLite), peak RSS
  (also split into anonymous memory and memory-mapped file pages, which the OS can drop);
- ``from_pretrained``: what the obvious alternative costs -- every member loaded with
  ``AutoModelForCausalLM.from_pretrained`` in the same dtype, all resident.
Costs, in this process, per plan (pick-only and with merges):
- ours: stitch (cold = empty cache; merges included) and the whole trial (stitch + score + store);
- pure forward: ``model(input_ids, attention_mask, use_cache=False)`` over the same batches;
- naive: write the stitched model (``save_pretrained``; and ``mergekit-yaml`` from the exported
  YAML), reload it with ``from_pretrained``, score it.
Targets (issue #10): peak RSS <= one member's bf16 size + cache budget + 20 %; naive non-forward /
ours non-forward >= 20x; whole trial / pure forward <= 1.10. Ratios are printed last.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bench.timing import pure_forward, timed  # noqa: E402

hf_logging.disable_progress_bar()

GiB = 2 ** 30


# ----------------------------------------------------------------------------- memory sampling
def _status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile of this process in bytes (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) * 1024
    return out


class PeakSampler:
    """Samples /proc/self/status every few ms; peak RSS also from getrusage (the kernel's own peak)."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.peak = every_s, {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, v in _status().items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(self.every_s)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------- plans
def plans_for(fam, rng_seed: int = 0):
    """Pick-only and merge plans removing a quarter of the layers, plus N random plans for the RSS run."""
    from gptailor import Plan

    n, cands = fam.n_layers, fam.member_names[1:] or ["base"]
    q = max(1, n // 4)
    dropped = set(range(n - q - 1, n - 1))
    pick = ["drop" if i in dropped else cands[i % len(cands)] for i in range(n)]
    merge = ["drop" if i in dropped else (f"merge({cands[0]}=.5,{cands[-1]}=.5)" if i % 2 else "base")
             for i in range(n)]
    return {"pick-only": Plan.from_text(" ".join(pick)), "linear merges": Plan.from_text(" ".join(merge))}


def random_plans(fam, k: int, seed: int = 0):
    """``k`` plans drawing each position's op at random (pick any member, a 2-member merge, or drop)."""
    import random

    from gptailor import Plan

    rng = random.Random(seed)
    members, n = fam.member_names, fam.n_layers
    out = []
    for _ in range(k):
        ops = []
        for _i in range(n):
            r = rng.random()
            if r < 0.2:
                ops.append("drop")
            elif r < 0.45:
                a, b = rng.sample(members, 2)
                ops.append(f"merge({a}=.5,{b}=.5)")
            else:
                ops.append(rng.choice(members))
        out.append(Plan.from_text(" ".join(ops)))
    return out


# ----------------------------------------------------------------------------- pieces
def open_family(path: str, dtype: str, cache_mb: float | None):
    from gptailor import Evaluator, Family, load_suite

    fam = Family.from_spec(path, dtype=dtype, cache_mb=cache_mb)
    return fam, Evaluator(fam, load_suite(fam.spec.suite_path()))


def cheap_references(ev, fidelity: int):
    """References from the base alone at the bench's fidelity: retention is arithmetic on the scores,
    so this keeps the bench's time on what it measures (a study fixes its references once anyway)."""
    from gptailor.eval.results import References

    kinds = {t.name: t.kind for t in ev.suite}
    return References("search", kinds, {"base": ev.member_scores("base", fidelity, "search")}, ev.near_zero)


def trial(ev, store, study_id: int, number: int, plan, fidelity: int, refs) -> float:
    """One whole trial as a search runs it: stitch + merges + score + store. Its wall time."""
    from gptailor.search.trials import TrialRecord

    t = time.perf_counter()
    res = ev.evaluate(plan, fidelity, split="search", references=refs)
    store.record_trial(study_id, TrialRecord(number, plan, fidelity, res, wall_s=time.perf_counter() - t))
    return time.perf_counter() - t


def new_store(folder: Path, fam):
    from db.store import Store

    store = Store(f"sqlite:///{folder / 'bench.db'}")
    sid = store.create_study(family_name=fam.name, family_source=str(fam.spec.root), family_spec=fam.spec.to_dict(),
                             family_info={}, method="manual", budget={}, settings={}, n_trials=0, name="scale bench")
    return store, sid


def member_bytes(fam, member: str = "base") -> int:
    ck = fam.checkpoints[member]
    return sum(ck.numel([n]) * torch.tensor([], dtype=ck.dtype(n)).element_size() for n in ck.headers)


# ----------------------------------------------------------------------------- child phases
def phase_trials(args) -> dict:
    """Peak RSS through N trials of random plans (in a fresh process)."""
    import transformers  # noqa: F401 - imported before the baseline is read: libraries are not the family

    import gptailor  # noqa: F401
    import db.store  # noqa: F401

    before = _status()
    with PeakSampler() as ps:
        fam, ev = open_family(args.family, args.dtype, args.cache_mb)
        refs = cheap_references(ev, args.fidelity)
        with tempfile.TemporaryDirectory() as d:
            store, sid = new_store(Path(d), fam)
            times = [trial(ev, store, sid, i, p, args.fidelity, refs)
                     for i, p in enumerate(random_plans(fam, args.trials, args.seed))]
            store.engine.dispose()
    return {"peak": ps.peak, "start": before, "trial_s": times, "cache_budget": fam.cache.max_bytes,
            "member_bytes": member_bytes(fam), "cache_source": fam.cache_source,
            "family_bytes": sum(member_bytes(fam, m) for m in fam.member_names)}


def phase_from_pretrained(args) -> dict:
    """Peak RSS of every member loaded with from_pretrained, all held, one forward each (the obvious
    alternative: transformers memory-maps bf16 safetensors too, so the pages count once touched)."""
    from transformers import AutoModelForCausalLM

    from gptailor.family.spec import FamilySpec
    from gptailor.family.device import resolve_dtype

    spec = FamilySpec.load(args.family)
    dt = resolve_dtype(args.dtype, torch.device("cpu"))
    before = _status()
    with PeakSampler() as ps:
        models = [AutoModelForCausalLM.from_pretrained(spec.source(m), dtype=dt).eval() for m in spec.member_names]
        ids = torch.arange(1, 33).unsqueeze(0)
        with torch.inference_mode():  # a forward per member: what scoring them touches (mmap pages included)
            for m in models:
                m(input_ids=ids, use_cache=False)
        resident = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    return {"peak": ps.peak, "start": before, "members": len(models), "param_bytes": resident}


def memory_cgroup(limit_bytes: int) -> tuple[Path, str] | None:
    """A child memory cgroup of this process's own, limited to ``limit_bytes`` (cgroup v1 or v2), and the
    file holding its peak usage; None where the system does not let us make one (then say so)."""
    lines = [ln.split(":", 2) for ln in Path("/proc/self/cgroup").read_text().splitlines()]
    v1 = next((path for _, ctrl, path in lines if ctrl == "memory"), None)
    if v1 is not None and Path("/sys/fs/cgroup/memory").is_dir():
        parent, limit_file, peak_file = Path("/sys/fs/cgroup/memory") / v1.lstrip("/"), "memory.limit_in_bytes", \
            "memory.max_usage_in_bytes"
    else:
        v2 = next((path for h, _, path in lines if h == "0"), "/")
        parent, limit_file, peak_file = Path("/sys/fs/cgroup") / v2.lstrip("/"), "memory.max", "memory.peak"
    cg = parent / f"gptailor-bench-{os.getpid()}-{time.monotonic_ns()}"
    try:
        cg.mkdir()
        (cg / limit_file).write_text(str(int(limit_bytes)))
    except OSError:
        return None
    return cg, peak_file


def evict_page_cache(folder: str) -> None:
    """Drop the family's files from the OS page cache (POSIX_FADV_DONTNEED), so that a memory-limited
    run has to read them again and their pages are charged to its cgroup, not to whoever read them first."""
    root = Path(folder)
    root = root if root.is_dir() else root.parent
    for p in root.rglob("*.safetensors"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_child(phase: str, args, limit_bytes: int | None = None) -> dict:
    cmd = [sys.executable, "-m", "bench.scale", "--family", args.family, "--dtype", args.dtype, "--trials", str(args.trials),
           "--fidelity", str(args.fidelity), "--seed", str(args.seed), "--phase", phase]
    if args.cache_mb is not None:
        cmd += ["--cache-mb", str(args.cache_mb)]
    if limit_bytes is None:
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"phase {phase} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    made = memory_cgroup(limit_bytes)
    if made is None:
        return {"limited": False, "why": "cannot create a memory cgroup here (needs write access to /sys/fs/cgroup)"}
    cg, peak_file = made
    procs = str(cg / "cgroup.procs")
    evict_page_cache(args.family)

    def join() -> None:
        Path(procs).write_text(str(os.getpid()))

    try:
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=join)
        res = {"limited": True, "limit": limit_bytes, "rc": out.returncode, "wall_s": time.perf_counter() - t,
               "cgroup_peak": int((cg / peak_file).read_text()), "ok": out.returncode == 0,
               "error": "" if out.returncode == 0 else (out.stderr.strip().splitlines() or ["killed"])[-1][-300:]}
        if out.returncode == 0:
            res.update(json.loads(out.stdout.strip().splitlines()[-1]))
        return res
    finally:
        try:
            cg.rmdir()
        except OSError:
            pass


# ----------------------------------------------------------------------------- costs (this process)


def costs(args) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from gptailor.export.mergekit import mergekit_yaml
    from gptailor.search.trials import TrialRecord

    fam, ev = open_family(args.family, args.dtype, args.cache_mb)
    refs = cheap_references(ev, args.fidelity)
    rows, numbers = [], itertools.count(10_000)
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        store, sid = new_store(Path(d), fam)
        for name, plan in plans_for(fam).items():
            fam.cache.clear()
            t = time.perf_counter()
            model = ev.stitcher.build(plan)
            stitch_cold = time.perf_counter() - t
            stitch_warm, _ = timed(lambda: ev.stitcher.build(plan), args.repeats, warmup=False)
            t = time.perf_counter()
            store.record_trial(sid, TrialRecord(next(numbers), plan, args.fidelity, None))
            store_s = time.perf_counter() - t
            batches = [b for task in ev.suite for b in ev._prepare(task, args.fidelity, "search")[0]]
            pure_forward(model, batches)  # warm-up
            # Interleaved, so that load from other processes hits both sides alike; medians.
            fwds, wholes, scores = [], [], []
            for _ in range(args.repeats):
                fwds.append(timed(lambda: pure_forward(model, batches), 1, warmup=False)[0])
                wholes.append(timed(lambda: trial(ev, store, sid, next(numbers), plan, args.fidelity, refs), 1, warmup=False)[0])
                scores.append(timed(lambda: ev.score_model(model, args.fidelity, "search"), 1, warmup=False)[0])
            fwd, whole, score = (statistics.median(x) for x in (fwds, wholes, scores))

            def naive_write_reload(write) -> tuple[float, float]:
                out = Path(d) / "naive"
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                write(out)
                m = AutoModelForCausalLM.from_pretrained(out, dtype=fam.dtype).eval()
                t2 = time.perf_counter()
                ev.score_model(m, args.fidelity, "search")
                del m
                shutil.rmtree(out, ignore_errors=True)
                return t2 - t0, time.perf_counter() - t0  # non-forward (write + reload), whole

            def save_pretrained(out: Path) -> None:
                model.save_pretrained(out)
                fam.tokenizer.save_pretrained(out)

            def mergekit(out: Path) -> None:
                cfg = Path(d) / "plan.yaml"
                cfg.write_text(mergekit_yaml(fam, plan))
                r = subprocess.run(["mergekit-yaml", str(cfg), str(out), "--lazy-unpickle", "--copy-tokenizer"],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    raise RuntimeError(f"mergekit-yaml failed: {r.stderr[-2000:]}")

            sp = naive_write_reload(save_pretrained)
            sp = (sp[0] + stitch_cold, sp[1] + stitch_cold)  # the naive route builds the model first, too
            mk = naive_write_reload(mergekit) if shutil.which("mergekit-yaml") else (float("nan"), float("nan"))
            ours_nonfwd = stitch_cold + store_s
            row = dict(plan=name, text=plan.to_text(), stitch_cold=stitch_cold, stitch_warm=stitch_warm,
                       store=store_s, score=score, forward=fwd, whole=whole, save_nonfwd=sp[0], save_whole=sp[1],
                       mk_nonfwd=mk[0], mk_whole=mk[1], ours_nonfwd=ours_nonfwd)
            rows.append(row)
            print(f"\n{name}: {plan.to_text()}\n  stitch cold {stitch_cold:.3f} s (warm {stitch_warm:.3f} s), store "
                  f"{store_s * 1e3:.1f} ms, score {score:.2f} s, pure forward {fwd:.2f} s, whole trial {whole:.2f} s\n"
                  f"  naive save_pretrained: write+reload {sp[0]:.2f} s, whole {sp[1]:.2f} s; mergekit-yaml: "
                  f"write+reload {mk[0]:.2f} s, whole {mk[1]:.2f} s", flush=True)
            del model
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", required=True, help="a family folder/spec (e.g. a synth family)")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (default bfloat16, the checkpoints')")
    ap.add_argument("--cache-mb", type=float, default=2048.0)
    ap.add_argument("--trials", type=int, default=4, help="trials in the peak-RSS run")
    ap.add_argument("--fidelity", type=int, default=4, help="examples per task")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="where the naive route writes (default: the system temp dir)")
    ap.add_argument("--no-limit", action="store_true", help="skip the runs under a memory cgroup of the target size")
    ap.add_argument("--phase", choices=["trials", "from_pretrained"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        res = phase_trials(args) if args.phase == "trials" else phase_from_pretrained(args)
        print(json.dumps(res))
        return 0
    print(f"bench/scale.py on {args.family}: dtype {args.dtype}, cache {args.cache_mb} MB, {args.trials} trials, "
          f"fidelity {args.fidelity}, {torch.get_num_threads()} threads", flush=True)
    tr = run_child("trials", args)
    fp = run_child("from_pretrained", args)
    libs = tr["start"]["VmRSS"]  # the interpreter with torch, transformers and gptailor imported
    grown = tr["peak"]["maxrss"] - libs
    fp_grown = fp["peak"]["maxrss"] - fp["start"]["VmRSS"]
    print(f"process with libraries imported: {libs / GiB:.2f} GiB RSS before the family is opened")
    print(f"peak RSS through {args.trials} trials: {tr['peak']['maxrss'] / GiB:.2f} GiB, +{grown / GiB:.2f} GiB over the "
          f"libraries (peak anon {tr['peak']['RssAnon'] / GiB:.2f}, peak file-backed {tr['peak']['RssFile'] / GiB:.2f}); "
          f"trials {', '.join(f'{t:.1f}' for t in tr['trial_s'])} s", flush=True)
    print(f"peak RSS, every member with from_pretrained: {fp['peak']['maxrss'] / GiB:.2f} GiB, +{fp_grown / GiB:.2f} GiB "
          f"({fp['members']} members, {fp['param_bytes'] / GiB:.2f} GiB of parameters)", flush=True)
    member, cache = tr["member_bytes"], tr["cache_budget"]
    target = 1.2 * (member + cache)
    limited = {}
    if not args.no_limit:  # the same runs under a hard memory limit of the target (+ the libraries)
        limit = int(target + libs)
        for phase in ("trials", "from_pretrained"):
            r = limited[phase] = run_child(phase, args, limit)
            if not r.get("limited"):
                print(f"memory-limited runs skipped: {r['why']}")
                break
            print(f"{phase} under a {limit / GiB:.2f} GiB memory cgroup (family on disk: {tr['family_bytes'] / GiB:.1f} GiB): "
                  f"{'completed' if r['ok'] else 'FAILED (rc ' + str(r['rc']) + ': ' + r['error'] + ')'} in "
                  f"{r['wall_s']:.0f} s, cgroup peak {r['cgroup_peak'] / GiB:.2f} GiB (page cache included)", flush=True)
    rows = costs(args)
    print("\nratios (targets: RSS growth <= 1.2 x (member + cache); naive/ours non-forward >= 20x; whole/forward <= 1.10)")
    print(f"memory: peak growth {grown / GiB:.2f} GiB vs target {target / GiB:.2f} GiB (member {member / GiB:.2f} + "
          f"cache {cache / GiB:.2f}, +20%): {'met' if grown <= target else 'MISSED'}; from_pretrained of every member "
          f"grows {fp_grown / max(grown, 1):.1f}x as much")
    print(f"{'plan':<15}{'save/ours nonfwd':>18}{'mergekit/ours nonfwd':>22}{'save/ours whole':>17}"
          f"{'mergekit/ours whole':>21}{'whole/forward':>15}")
    for r in rows:
        print(f"{r['plan']:<15}{r['save_nonfwd'] / r['ours_nonfwd']:>17.1f}x{r['mk_nonfwd'] / r['ours_nonfwd']:>21.1f}x"
              f"{r['save_whole'] / r['whole']:>16.2f}x{r['mk_whole'] / r['whole']:>20.2f}x{r['whole'] / r['forward']:>15.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
