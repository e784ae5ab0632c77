"""bench/load.py at a tiny size, so the load script cannot rot: a real app server under 2 clients, real
SMAC workers with a reader on SQLite and (when a server can be started here) on PostgreSQL."""
import numpy as np
import pytest

from bench.load import StudyFigures, http_load, overload_load, percentile, postgres_load, sqlite_load


def test_percentile_is_numpys_nearest_rank():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 17, 80):
        xs = list(rng.exponential(size=n))
        for q in (50, 95, 100):
            assert percentile(xs, q) == np.percentile(xs, q, method="inverted_cdf")


def test_lost_counts_trials_short_of_the_ask_or_of_what_a_worker_recorded():
    fig = StudyFigures("sqlite", studies=2, n_trials=3, readers=1, stored={1: 3, 2: 2}, reported={1: 3, 2: 3})
    assert fig.lost == 1
    assert StudyFigures("x", 1, 3, 1, stored={1: 3}, reported={1: 4}).lost == 1  # recorded but not stored
    assert StudyFigures("x", 1, 3, 1, stored={1: 3}, reported={1: 3}).lost == 0


def test_two_clients_on_one_public_server():
    fig = http_load(clients=2, requests=2, public=True, fidelity=4, timeout_s=240)
    assert fig.errors == [] and len(fig.latencies) == 4, fig.errors
    assert 0 < percentile(fig.latencies, 50) <= percentile(fig.latencies, 95) <= fig.wall_s + 1
    assert 0 < fig.rss_idle_mb and 0 < fig.rss_before_mb <= fig.rss_peak_mb and fig.rss_after_mb <= fig.rss_peak_mb
    assert "2 clients x 2 evaluations" in fig.line() and "0 errors" in fig.line()


def _check_studies(fig: StudyFigures) -> None:
    assert fig.skipped is None
    assert fig.reader_errors == [] and fig.lock_errors == 0, fig.reader_errors
    assert set(fig.statuses.values()) == {"finished"}, fig.statuses
    assert list(fig.stored.values()) == [2, 2] and fig.reported == fig.stored  # each worker's own count
    assert fig.lost == 0 and fig.duplicated == 0 and fig.failed_trials == 0 and fig.reads > 0


@pytest.fixture
def patient(monkeypatch):
    """The studies run until their workers end, however loaded the machine: no run deadline (an infinite
    ``timeout_s``), no reader declaring a slow worker dead (a heartbeat grace of an hour; the workers and
    the reader inherit it), and PostgreSQL's start waited for (pg_ctl -w gives up after PGCTLTIMEOUT s)."""
    monkeypatch.setenv("GPTAILOR_GRACE_S", "3600")
    monkeypatch.setenv("PGCTLTIMEOUT", "3600")
    return float("inf")


def test_two_studies_and_a_reader_on_sqlite(patient):
    _check_studies(sqlite_load(studies=2, n_trials=2, readers=1, timeout_s=patient))


def test_two_studies_and_a_reader_on_postgresql(patient):
    fig = postgres_load(studies=2, n_trials=2, readers=1, timeout_s=patient)
    if fig.skipped:
        pytest.skip(f"no PostgreSQL here: {fig.skipped}")
    _check_studies(fig)


def test_overload_phase_counts_every_client_as_answered_or_refused():
    """6 clients at once against a queue of 1: each completes or is refused with Gradio's message, each
    refusal is in the server's log, none is silent (the patience is no deadline: an hour). How many are
    refused depends on the machine's timing; tests/test_overload.py pins the exact split with a gate."""
    fig = overload_load(clients=6, queue_max=1, fidelity=4, patience_s=3600)
    assert fig.silent == 0 and fig.errors == [], fig.errors
    assert len(fig.latencies) + len(fig.refused_s) == 6 and fig.latencies, fig.line()
    assert fig.messages <= {"Queue is full! Please try again."} and fig.logged == len(fig.refused_s)
    assert "0 silent timeouts" in fig.line() and "queue holds 1" in fig.line()
