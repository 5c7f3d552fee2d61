"""``flask vault worker``: cycles of jobs, scheduled jobs' claims, heartbeats, signals, /health."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from tests.support.refresh_fixtures import both_backends, load, make_connection, postgresql_only
from vault.extensions import db as _db
from vault.models import WorkerHeartbeat, WorkerJob, utcnow
from vault.refresh.batch import refresh_due
from vault.worker import heartbeat
from vault.worker.jobs import Job, default_jobs, note, stop_requested
from vault.worker.runner import Worker

pytestmark = pytest.mark.shared_postgres_database  # one database for the module


def worker_cli(runner, *args):
    return runner.invoke(args=["vault", "worker", *args])


@both_backends
def test_once_refreshes_what_is_due_writes_a_heartbeat_and_exits_0(vault_app, db, stub, runner):
    due = make_connection(stub, subject="due", expires_in=60)
    later = make_connection(stub, subject="later", expires_in=7200)

    result = worker_cli(runner, "--once")

    assert result.exit_code == 0, result.output
    assert "refresh-due: ok (Refreshed 1, failed 0" in result.output
    assert stub.count() == 1
    assert load(due).last_refreshed_at is not None and load(later).last_refreshed_at is None
    beats = db.session.scalars(select(WorkerHeartbeat)).all()
    assert len(beats) == 1 and beats[0].last_ok and beats[0].interval_seconds == 60
    assert beats[0].worker_id == heartbeat.worker_id()


@both_backends
def test_once_exits_1_when_a_refresh_failed(vault_app, db, stub, runner):
    make_connection(stub, subject="failing", expires_in=60)
    stub.fail_next(503, {"error": "temporarily_unavailable"})
    result = worker_cli(runner, "--once", "--interval", "30")
    assert result.exit_code == 1
    assert "refresh-due: FAILED (Refreshed 0, failed 1" in result.output
    beat = db.session.scalars(select(WorkerHeartbeat)).one()
    assert (beat.last_ok, beat.interval_seconds) == (False, 30)


@both_backends
def test_a_job_that_raises_is_a_failure_and_the_next_job_still_runs(vault_app, db, caplog):
    ran = []

    def broken(now):
        raise RuntimeError("boom")

    def fine(now):
        ran.append(now)
        note("did one thing")
        return True

    worker = Worker(vault_app, interval_seconds=60, jobs=[Job("broken", broken), Job("fine", fine)])
    report = worker.cycle()

    assert not report.ok and len(ran) == 1
    assert report.results == {
        "broken": (False, "error: RuntimeError"), "fine": (True, "did one thing")
    }
    assert "worker job broken failed" in caplog.text
    assert db.session.scalars(select(WorkerHeartbeat.last_ok)).one() is False


def test_refresh_due_is_the_first_job():
    assert default_jobs()[0].name == "refresh-due" and default_jobs()[0].every is None


@both_backends
def test_a_scheduled_job_runs_once_per_period_whatever_the_number_of_workers(vault_app, db):
    runs = []
    job = Job("daily-check", lambda now: runs.append(now) or True, every=timedelta(hours=24))
    workers = [Worker(vault_app, interval_seconds=60, jobs=[job], worker_id=f"host-{n}:1")
               for n in range(3)]
    reports = [worker.cycle() for worker in workers]

    assert len(runs) == 1
    assert [list(report.results) for report in reports] == [["daily-check"], [], []]
    row = db.session.get(WorkerJob, "daily-check")
    assert row.last_ok is True and row.last_worker_id == "host-0:1"
    assert row.next_run_at - row.last_started_at == timedelta(hours=24)
    # Once its period is over, the next cycle of any worker runs it again.
    row.next_run_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    workers[2].cycle()
    assert len(runs) == 2
    assert db.session.get(WorkerJob, "daily-check").last_worker_id == "host-2:1"


@postgresql_only
def test_concurrent_workers_claim_a_scheduled_run_once(vault_app, db):
    runs, lock = [], threading.Lock()
    start = threading.Barrier(4)

    def job_run(now):
        with lock:
            runs.append(now)
        return True

    job = Job("sealing", job_run, every=timedelta(minutes=1))

    def one_worker(n):
        start.wait()
        Worker(vault_app, interval_seconds=60, jobs=[job], worker_id=f"w{n}:1").cycle()

    threads = [threading.Thread(target=one_worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runs) == 1
    assert len(db.session.scalars(select(WorkerHeartbeat)).all()) == 4


@both_backends
def test_stop_lets_the_connection_in_hand_finish_and_claims_no_other(vault_app, db, stub):
    for n in range(4):
        make_connection(stub, subject=f"due-{n}", expires_in=60)
    stop = threading.Event()

    summary = refresh_due(concurrency=1, progress=lambda _result: stop.set(), stop=stop.is_set)

    assert (summary.refreshed, summary.stopped, stub.count()) == (1, True, 1)


@both_backends
def test_a_stopped_worker_starts_no_further_job(vault_app, db):
    ran = []
    worker = Worker(vault_app, interval_seconds=60, jobs=[])

    def first(now):
        worker.stop()  # as SIGTERM would, while this job runs
        ran.append(("first", stop_requested()))
        return True

    worker.jobs = [Job("first", first), Job("second", lambda now: ran.append("second") or True)]
    assert worker.run() is True  # returns instead of waiting for the next cycle
    assert ran == [("first", True)]


@both_backends
def test_heartbeats_of_long_gone_workers_are_pruned(vault_app, db):
    now = utcnow()
    db.session.add_all([
        WorkerHeartbeat(worker_id="gone:1", started_at=now - timedelta(days=3),
                        last_cycle_at=now - timedelta(days=2), interval_seconds=60),
        WorkerHeartbeat(worker_id="recent:1", started_at=now - timedelta(hours=3),
                        last_cycle_at=now - timedelta(hours=2), interval_seconds=60),
    ])
    db.session.commit()
    Worker(vault_app, interval_seconds=60, jobs=[], worker_id="here:1").cycle()
    assert sorted(db.session.scalars(select(WorkerHeartbeat.worker_id))) == ["here:1", "recent:1"]


# -- /health and /healthz ------------------------------------------------------------------


def add_heartbeat(seconds_ago: int, *, interval: int = 60, ok: bool = True, worker: str = "h:1"):
    moment = utcnow() - timedelta(seconds=seconds_ago)
    _db.session.add(WorkerHeartbeat(worker_id=worker, started_at=moment, last_cycle_at=moment,
                                    interval_seconds=interval, last_ok=ok))
    _db.session.commit()


def test_health_says_when_no_worker_has_run(app, viewer_client, client):
    page = viewer_client.get("/health").get_data(as_text=True)
    assert "No worker has run" in page and "flask --app app vault worker" in page
    answer = client.get("/healthz")
    assert answer.status_code == 200  # the web process is alive: the worker is reported
    assert answer.get_json()["worker"] == {
        "last_run_at": None, "seconds_ago": None, "ok": False, "late": True, "running": 0
    }


def test_health_shows_when_the_worker_last_ran(app, viewer_client, client):
    add_heartbeat(40)
    page = viewer_client.get("/health").get_data(as_text=True)
    assert "Worker last ran" in page and " s ago" in page and "1 running" in page
    assert "flash-warning" not in page.split('id="worker-status"')[0].rsplit("<p", 1)[-1]
    worker = client.get("/healthz").get_json()["worker"]
    assert worker["ok"] is True and worker["late"] is False and worker["running"] == 1
    assert 40 <= worker["seconds_ago"] < 100


def test_health_warns_when_the_newest_heartbeat_is_older_than_three_intervals(
    app, viewer_client, client
):
    add_heartbeat(4 * 60, worker="old:1")
    add_heartbeat(5 * 60, worker="older:1")
    page = viewer_client.get("/health").get_data(as_text=True)
    assert "Worker last ran" in page and "4 min ago" in page
    assert "more than 3 intervals of 60 s" in page
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.get_json()["worker"]["late"] is True
    assert answer.get_json()["worker"]["running"] == 0


def test_health_mentions_a_failed_last_cycle(app, viewer_client):
    add_heartbeat(5, ok=False)
    page = viewer_client.get("/health").get_data(as_text=True)
    assert "its last cycle had failures" in page


@both_backends
def test_database_trouble_in_a_claim_or_the_heartbeat_does_not_end_the_worker(
    vault_app, db, monkeypatch, caplog
):
    from vault.worker import runner

    def unavailable(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    monkeypatch.setattr(runner.schedule, "claim", unavailable)
    monkeypatch.setattr(runner.heartbeat, "beat", unavailable)
    ran = []
    jobs = [Job("hourly", lambda now: ran.append(now) or True, every=timedelta(hours=1)),
            Job("each-cycle", lambda now: ran.append(now) or True)]
    report = Worker(vault_app, interval_seconds=60, jobs=jobs).cycle()

    assert report.results["hourly"] == (False, "error: OperationalError")
    assert report.results["each-cycle"][0] is True and len(ran) == 1
    assert "heartbeat not recorded" in caplog.text


@both_backends
def test_a_cycle_in_progress_keeps_the_heartbeat_fresh(vault_app, db):
    # A long cycle (thousands of refreshes) must not look like a dead worker on /health.
    seen = []

    def long_job(now):
        with vault_app.app_context():
            seen.append(_db.session.get(WorkerHeartbeat, "busy:1"))
        return False

    worker = Worker(vault_app, interval_seconds=60, jobs=[Job("long", long_job)],
                    worker_id="busy:1")
    worker.cycle()
    assert seen[0] is not None and seen[0].last_ok is True  # written as the cycle started
    worker.jobs = [Job("quick", lambda now: True)]
    worker.cycle()
    db.session.expire_all()
    assert seen[0].last_cycle_at <= db.session.get(WorkerHeartbeat, "busy:1").last_cycle_at
    # While a cycle runs, the outcome shown is the last finished cycle's.
    worker.jobs = [Job("long", long_job)]
    worker.cycle()
    assert seen[1].last_ok is True
    db.session.expire_all()
    assert db.session.get(WorkerHeartbeat, "busy:1").last_ok is False
