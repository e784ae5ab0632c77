"""Load figures: many clients on one app server, concurrent studies on one database. Loopback only.

    python -m bench.load                      # defaults below; about 3-5 minutes on 2 busy cores
    python -m bench.load --clients 8 --requests 10 --studies 3 --trials 20 --readers 2 --only http,sqlite,postgres

1. **http**: the real app (``python app.py``) on 127.0.0.1 with a free port, public mode off then on;
   N gradio_client clients (threads, each its own session) evaluate plans on the demo family, all
   at once: p50/p95 latency per request (queue wait included; the app serves 2 at a time), errors, and
   the server's RSS (psutil) idle, after one warm-up request, after the load and at its peak.
1b. **overload**: the app with a small queue (``--queue-max``, its ``GPTAILOR_QUEUE_MAX``) and more clients
   than it holds (``--overload-clients``), each sending one evaluation at the same moment and polling
   ``Job.status()`` for its place: completed (latency), refused with a message (how soon), silent
   timeouts (no answer within ``--patience`` s: target 0), queued requests told their place, and the
   refusals the server logged. ``--queue-max 0`` is the unbounded queue of before #23.
2. **sqlite**: S concurrent SMAC studies, each in the project's own background worker (``db.workers.launch``),
   plus R reader threads polling the study and trial tables every 50 ms (the first also calls
   ``reconcile`` as the app's refresh does), on one SQLite file: lock errors (readers and worker logs),
   stored trials vs asked and vs what each worker says it recorded, duplicated (study, number). Target 0.
3. **postgres**: the same against a throwaway local PostgreSQL server (bench/pgserver.py); skipped with
   the reason printed when none can be started.

Every count is capped (clients <= 32, requests <= 50, studies <= 6, trials <= 200) and every phase has
a deadline (``--timeout``, per phase): a stuck server or worker is stopped, not waited for. Figures last.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]

LIMITS = {"clients": 32, "requests": 50, "studies": 6, "trials": 200, "readers": 8, "overload_clients": 64,
          "queue_max": 64}
TERMINAL = ("finished", "failed", "cancelled", "interrupted")


def _bounded(name: str, value: int, low: int = 1) -> int:
    if not low <= value <= LIMITS[name]:
        raise ValueError(f"--{name.replace('_', '-')} must be from {low} to {LIMITS[name]}, got {value}")
    return value


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list: the value a q% share does not exceed."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100), at least the first
    return ordered[int(rank) - 1]


# ----------------------------------------------------------------------------- 1. the app under clients
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, public: bool, timeout_s: float = 180,
                 extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, Path]:
    """``python app.py`` on 127.0.0.1 with a free port and its own data dir; returns (process, url, log)."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "GPTAILOR_DATA_DIR": str(data_dir),
           "GPTAILOR_PUBLIC": "1" if public else "0", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           **(extra_env or {})}
    for k in ("GPTAILOR_DB_URL", "GPTAILOR_AUTH"):
        env.pop(k, None)
    log = data_dir / "app.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}/", log
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop_server(proc)
                raise RuntimeError(f"the app did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.3)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def demo_plans(n: int, seed: int = 0, n_drop: int = 2) -> list[str]:
    """``n`` different plans on the demo family: ``n_drop`` positions dropped, the rest picked at random
    from its members (different plans, so no request is answered from a cache)."""
    from gptailor import Family, FamilySpec

    spec = FamilySpec.load("demo")
    n_layers = Family.from_spec(spec).n_layers
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        drops = set(rng.sample(range(n_layers), n_drop))
        plan = " ".join("drop" if i in drops else rng.choice(spec.member_names) for i in range(n_layers))
        if plan not in seen:
            seen.add(plan)
            out.append(plan)
    return out


@dataclass
class HttpFigures:
    public: bool
    clients: int
    requests: int
    fidelity: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss_idle_mb: float = 0.0
    rss_before_mb: float = 0.0  # after one warm-up request: the family is loaded
    rss_after_mb: float = 0.0
    rss_peak_mb: float = 0.0
    wall_s: float = 0.0
    solo_s: float = 0.0  # one evaluation with the server otherwise idle (after the warm-up)

    def line(self) -> str:
        ok = len(self.latencies)
        lat = (f"p50 {percentile(self.latencies, 50):.2f} s, p95 {percentile(self.latencies, 95):.2f} s, "
               f"max {max(self.latencies):.2f} s" if ok else "no request completed")
        return (f"http public={'on' if self.public else 'off'}: {self.clients} clients x {self.requests} "
                f"evaluations (fidelity {self.fidelity}) in {self.wall_s:.1f} s: {ok} ok, {len(self.errors)} errors; "
                f"{lat} (one alone: {self.solo_s:.2f} s); server RSS idle {self.rss_idle_mb:.0f} MB, before {self.rss_before_mb:.0f} MB, "
                f"after {self.rss_after_mb:.0f} MB, peak {self.rss_peak_mb:.0f} MB")


def http_load(clients: int = 8, requests: int = 5, public: bool = False, fidelity: int = 8,
              timeout_s: float = 300, workdir: Path | None = None) -> HttpFigures:
    """Start the app, then ``clients`` threads each send ``requests`` evaluations of different plans at once."""
    from gradio_client import Client

    _bounded("clients", clients), _bounded("requests", requests)
    fig = HttpFigures(public, clients, requests, fidelity)
    data = Path(tempfile.mkdtemp(prefix="gptailor-load-", dir=workdir))
    proc, url, log = start_server(data, public)
    deadline = time.time() + timeout_s
    stop = threading.Event()
    try:
        fig.rss_idle_mb = rss_mb(proc.pid)
        warm = Client(url, verbose=False)
        warm.predict("demo", warm.predict("demo", api_name="/identity_plan"), fidelity, api_name="/evaluate")
        plans = demo_plans(clients * requests + 1)
        t0 = time.perf_counter()
        warm.predict("demo", plans.pop(), fidelity, api_name="/evaluate")
        fig.solo_s = time.perf_counter() - t0
        fig.rss_before_mb = fig.rss_peak_mb = rss_mb(proc.pid)
        conns = [Client(url, verbose=False) for _ in range(clients)]  # connected before the clock starts
        lock, go = threading.Lock(), threading.Barrier(clients + 1)

        def client(k: int) -> None:
            go.wait()
            for j in range(requests):
                if time.time() > deadline:
                    with lock:
                        fig.errors.append("deadline reached before the request was sent")
                    continue
                t0 = time.perf_counter()
                try:
                    summary, _table = conns[k].predict("demo", plans[k * requests + j], fidelity, api_name="/evaluate")
                    if "Retention" not in summary:
                        raise RuntimeError(f"unexpected answer {summary[:80]!r}")
                except Exception as e:  # noqa: BLE001 - every failure is a figure, not a crash
                    with lock:
                        fig.errors.append(f"{type(e).__name__}: {str(e)[:160]}")
                    continue
                with lock:
                    fig.latencies.append(time.perf_counter() - t0)

        def sample() -> None:
            while not stop.wait(0.2):
                try:
                    fig.rss_peak_mb = max(fig.rss_peak_mb, rss_mb(proc.pid))
                except Exception:  # noqa: BLE001 - the server is gone: the clients will say so
                    return

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
        sampler = threading.Thread(target=sample, daemon=True)
        for t in (*threads, sampler):
            t.start()
        go.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join(max(1.0, deadline - time.time()))
        fig.wall_s = time.perf_counter() - t0
        if any(t.is_alive() for t in threads):
            fig.errors.append(f"clients still waiting at the {timeout_s:.0f} s deadline")
        fig.rss_after_mb = rss_mb(proc.pid)
        fig.rss_peak_mb = max(fig.rss_peak_mb, fig.rss_after_mb)
    finally:
        stop.set()
        stop_server(proc)
        shutil.rmtree(data, ignore_errors=True)
    return fig


# ----------------------------------------------------------------------------- 1b. the app over its queue
@dataclass
class OverloadFigures:
    clients: int
    queue_max: int  # GPTAILOR_QUEUE_MAX the server ran with (0: no bound, the app before #23)
    fidelity: int
    patience_s: float  # how long each client waits for its answer before it gives up
    latencies: list[float] = field(default_factory=list)  # completed requests, queue wait included
    refused_s: list[float] = field(default_factory=list)  # how soon a refused request knew it
    messages: set[str] = field(default_factory=set)  # what the refused ones were told
    silent: int = 0  # no answer within the client's patience and never told a place: what must not happen
    gave_up: int = 0  # out of patience while told its place in the queue (a client's choice, not silence)
    errors: list[str] = field(default_factory=list)  # anything else
    told_place: int = 0  # requests that were told a queue position (Job.status().rank) while they waited
    logged: int = 0  # "busy: refused" lines in the server's log
    wall_s: float = 0.0

    def line(self) -> str:
        ok, ref = self.latencies, self.refused_s
        lat = f"p50 {percentile(ok, 50):.2f} s, p95 {percentile(ok, 95):.2f} s" if ok else "none"
        soon = f"answered in p50 {percentile(ref, 50):.2f} s, max {max(ref):.2f} s" if ref else "none"
        bound = f"queue holds {self.queue_max}" if self.queue_max else "queue unbounded"
        return (f"overload: {self.clients} clients at once, {bound}, fidelity {self.fidelity}, patience "
                f"{self.patience_s:.0f} s, {self.wall_s:.1f} s: {len(ok)} completed ({lat}), {len(ref)} refused "
                f"with a message ({soon}; {sorted(self.messages)}), {self.silent} silent timeouts, {self.gave_up} gave "
                f"up while told their place, "
                f"{len(self.errors)} other errors; {self.told_place} told their queue place; server logged "
                f"{self.logged} refusals")


def overload_load(clients: int = 16, queue_max: int = 4, fidelity: int = 8, patience_s: float = 120,
                  workdir: Path | None = None) -> OverloadFigures:
    """More clients than the queue holds, each sending one evaluation at the same moment: each completes,
    is refused with a message, or runs out of ``patience_s``: after being told its place in the queue (it
    polls ``Job.status()``), or, the failure this phase exists to count, without hearing anything."""
    from gradio_client import Client
    from gradio_client.utils import Status

    _bounded("overload_clients", clients)
    fig = OverloadFigures(clients, queue_max, fidelity, patience_s)
    data = Path(tempfile.mkdtemp(prefix="gptailor-overload-", dir=workdir))
    proc, url, log = start_server(data, public=False, extra_env={"GPTAILOR_QUEUE_MAX": str(queue_max)})
    try:
        warm = Client(url, verbose=False)
        warm.predict("demo", warm.predict("demo", api_name="/identity_plan"), fidelity, api_name="/evaluate")
        plans = demo_plans(clients)
        conns = [Client(url, verbose=False) for _ in range(clients)]
        lock, go = threading.Lock(), threading.Barrier(clients + 1)

        def client(k: int) -> None:
            go.wait()
            t0, placed = time.perf_counter(), False
            job = conns[k].submit("demo", plans[k], fidelity, api_name="/evaluate")
            while not job.done() and time.perf_counter() - t0 < patience_s:
                st = job.status()
                placed |= st.code == Status.IN_QUEUE and st.rank is not None
                time.sleep(0.1)
            with lock:
                fig.told_place += placed
                if not job.done():
                    fig.gave_up += placed
                    fig.silent += not placed
            if not job.done():
                job.cancel()
                return
            try:
                summary, _table = job.result()
                ok = "Retention" in summary
            except Exception as e:  # noqa: BLE001 - a refusal or a failure is a figure, not a crash
                message, ok = str(e), False
                with lock:
                    if "busy" in message.lower() or "queue is full" in message.lower():
                        fig.refused_s.append(time.perf_counter() - t0)
                        fig.messages.add(message[:80])
                    else:
                        fig.errors.append(f"{type(e).__name__}: {message[:160]}")
                return
            with lock:
                (fig.latencies.append(time.perf_counter() - t0) if ok
                 else fig.errors.append(f"unexpected answer {summary[:80]!r}"))

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()  # each client ends by itself: answered, refused, or out of patience
        fig.wall_s = time.perf_counter() - t0
    finally:
        stop_server(proc)
        fig.logged = sum(line.startswith("busy: refused") for line in log.read_text(errors="replace").splitlines())
        shutil.rmtree(data, ignore_errors=True)
    return fig


# ----------------------------------------------------------------------------- 2./3. studies on one database
LOCK_WORDS = ("database is locked", "database table is locked", "deadlock", "could not serialize",
              "lock timeout", "sqlite_busy")


@dataclass
class StudyFigures:
    backend: str
    studies: int
    n_trials: int
    readers: int
    reads: int = 0
    reader_errors: list[str] = field(default_factory=list)
    lock_errors: int = 0  # reader errors and worker log lines about locks
    stored: dict[int, int] = field(default_factory=dict)  # study id -> trial rows stored
    reported: dict[int, int | None] = field(default_factory=dict)  # study id -> trials its worker says it recorded
    duplicated: int = 0  # rows sharing a (study, number) with another
    statuses: dict[int, str] = field(default_factory=dict)
    failed_trials: int = 0
    wall_s: float = 0.0
    skipped: str | None = None

    @property
    def lost(self) -> int:
        """Trials asked for but not stored, plus trials a worker recorded that are not stored."""
        short = sum(max(0, self.n_trials - n) for n in self.stored.values())
        unstored = sum(max(0, (self.reported.get(s) or 0) - n) for s, n in self.stored.items())
        return max(short, unstored)

    def line(self) -> str:
        if self.skipped:
            return f"{self.backend}: skipped: {self.skipped}"
        stored = sum(self.stored.values())
        reported = "?" if None in self.reported.values() else str(sum(self.reported.values()))
        return (f"{self.backend}: {self.studies} SMAC studies x {self.n_trials} trials + {self.readers} readers "
                f"every 50 ms, {self.wall_s:.1f} s: {self.reads} reads, {len(self.reader_errors)} reader errors, "
                f"{self.lock_errors} lock errors; trials stored {stored}/{self.studies * self.n_trials} "
                f"(workers report {reported}), lost {self.lost}, duplicated {self.duplicated}, failed "
                f"{self.failed_trials}; statuses {sorted(set(self.statuses.values()))}")


def _is_lock(message: str) -> bool:
    low = message.lower()
    return any(w in low for w in LOCK_WORDS)


def _reader(url: str, sids: list[int], stop: threading.Event, fig: StudyFigures, lock: threading.Lock,
            poll_s: float, reconciles: bool) -> None:
    """What a dashboard does: list studies, read every study's trials (and, for one, reconcile)."""
    from db.workers import reconcile
    from db.store import Store

    store = Store(url)
    while not stop.wait(poll_s):
        try:
            store.studies()
            for sid in sids:
                store.trials(sid)
            if reconciles:
                reconcile(store)
            with lock:
                fig.reads += 1
        except Exception as e:  # noqa: BLE001 - counted, the readers go on
            with lock:
                fig.reader_errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                fig.lock_errors += _is_lock(str(e))
    store.engine.dispose()


REPORT = re.compile(r"study (\d+): (\w+) \((\d+) trials recorded by this worker\)")


def study_load(url: str, backend: str, studies: int = 3, n_trials: int = 20, readers: int = 2,
               poll_s: float = 0.05, timeout_s: float = 300, min_fidelity: int = 4) -> StudyFigures:
    """``studies`` SMAC studies on the demo family in their own workers, with readers, on database ``url``."""
    from db.runs import create_study, load_engine
    from db.workers import launch, terminate
    from db.store import Store
    from gptailor.search.settings import SearchSettings
    from gptailor.search.space import Budget

    _bounded("studies", studies), _bounded("trials", n_trials), _bounded("readers", readers)
    fig = StudyFigures(backend, studies, n_trials, readers)
    store = Store(url)
    ev = load_engine("demo")
    sids = [create_study(store, "demo", "smac", Budget(remove_layers=2),
                         SearchSettings(n_trials=n_trials, seed=k, min_fidelity=min_fidelity),
                         name=f"load-{k}", evaluator=ev) for k in range(studies)]
    logs = Path(tempfile.mkdtemp(prefix="gptailor-load-logs-"))
    stop, lock = threading.Event(), threading.Lock()
    threads = [threading.Thread(target=_reader, args=(url, sids, stop, fig, lock, poll_s, k == 0), daemon=True)
               for k in range(readers)]
    t0 = time.perf_counter()
    try:
        for t in threads:
            t.start()
        procs = [launch(store, sid, log_dir=logs) for sid in sids]
        deadline = time.time() + timeout_s
        while time.time() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.2)
        for p in procs:
            if p.poll() is None:
                terminate(p.pid)
                fig.reader_errors.append(f"worker {p.pid} still running at the {timeout_s:.0f} s deadline")
            p.wait()
        fig.wall_s = time.perf_counter() - t0
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    _tally(store, sids, logs, fig)
    store.engine.dispose()
    shutil.rmtree(logs, ignore_errors=True)
    return fig


def _tally(store, sids: list[int], logs: Path, fig: StudyFigures) -> None:
    """Count stored rows per study with plain SQL (not through the store's own reading code)."""
    from sqlalchemy import text

    with store.engine.connect() as c:
        rows = c.execute(text("SELECT study_id, number, status FROM trials")).all()
    for sid in sids:
        mine = [r for r in rows if r[0] == sid]
        fig.stored[sid] = len(mine)
        fig.duplicated += len(mine) - len({r[1] for r in mine})
        fig.failed_trials += sum(r[2] == "failed" for r in mine)
        fig.statuses[sid] = store.study(sid)["status"]
        log = (logs / f"study-{sid}.log").read_text(errors="replace") if (logs / f"study-{sid}.log").exists() else ""
        m = REPORT.search(log)
        fig.reported[sid] = int(m.group(3)) if m else None
        fig.lock_errors += sum(_is_lock(line) for line in log.splitlines())


def postgres_load(**kw) -> StudyFigures:
    """``study_load`` on a fresh database of a throwaway local PostgreSQL server, or a skipped figure."""
    from bench.pgserver import PgUnavailable, new_database, pg_server

    try:
        with pg_server() as server:
            return study_load(new_database(server, "load"), "postgres", **kw)
    except PgUnavailable as e:
        return StudyFigures("postgres", kw.get("studies", 3), kw.get("n_trials", 20), kw.get("readers", 2),
                            skipped=str(e))


def sqlite_load(**kw) -> StudyFigures:
    d = Path(tempfile.mkdtemp(prefix="gptailor-load-db-"))
    try:
        return study_load(f"sqlite:///{d / 'load.db'}", "sqlite", **kw)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=10, help="evaluations per client")
    ap.add_argument("--fidelity", type=int, default=8, help="examples per task of each evaluation")
    ap.add_argument("--studies", type=int, default=3)
    ap.add_argument("--trials", type=int, default=20, help="trials per study")
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300, help="deadline of each phase, seconds")
    ap.add_argument("--overload-clients", type=int, default=16, help="overload: clients sending one request at once")
    ap.add_argument("--queue-max", type=int, default=4,
                    help="overload: GPTAILOR_QUEUE_MAX of its server (0: no bound, as before #23)")
    ap.add_argument("--patience", type=float, default=120, help="overload: seconds a client waits for its answer")
    ap.add_argument("--only", default="http,overload,sqlite,postgres", help="phases to run, comma-separated")
    args = ap.parse_args(argv)
    try:
        for name in ("clients", "requests", "studies", "trials", "readers", "overload_clients"):
            _bounded(name, getattr(args, name))
        _bounded("queue_max", args.queue_max, low=0)
        if not 0 < args.patience < float("inf"):
            raise ValueError(f"--patience must be a number of seconds above 0, got {args.patience}")
    except ValueError as e:
        ap.error(str(e))
    phases = {p.strip() for p in args.only.split(",") if p.strip()}
    if phases - {"http", "overload", "sqlite", "postgres"}:
        ap.error(f"--only takes http, overload, sqlite, postgres; got {args.only!r}")
    t0, figures = time.perf_counter(), []
    if "http" in phases:
        for public in (False, True):
            print(f"http: public mode {'on' if public else 'off'} ...", flush=True)
            figures.append(http_load(args.clients, args.requests, public, args.fidelity, args.timeout))
    if "overload" in phases:
        print(f"overload: {args.overload_clients} clients, queue of {args.queue_max} ...", flush=True)
        figures.append(overload_load(args.overload_clients, args.queue_max, args.fidelity, args.patience))
    kw = dict(studies=args.studies, n_trials=args.trials, readers=args.readers, timeout_s=args.timeout)
    for name, fn in (("sqlite", sqlite_load), ("postgres", postgres_load)):
        if name in phases:
            print(f"{name}: {args.studies} studies ...", flush=True)
            figures.append(fn(**kw))
    import platform

    print(f"\n== load figures ({os.cpu_count()} CPUs, {platform.python_version()}, "
          f"{time.perf_counter() - t0:.0f} s in all) ==")
    for f in figures:
        print(f.line())
    bad = any((getattr(f, "errors", None) or getattr(f, "reader_errors", None) or getattr(f, "lost", 0)
               or getattr(f, "duplicated", 0) or getattr(f, "lock_errors", 0) or getattr(f, "silent", 0))
              for f in figures)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
