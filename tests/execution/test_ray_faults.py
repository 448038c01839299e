"""Faults on a local Ray: dead actors, broken candidates, workers that cannot start, a killed driver.

Every test checks the same promise: each candidate is evaluated and counted exactly once, and the
run's log ends up equal to an uninterrupted in-process run's (genomes and scores; not timing).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from evomerge.config.search import load_config
from evomerge.errors import EvomergeError
from evomerge.execution.executor import Job
from evomerge.execution.ray_executor import RayExecutor
from evomerge.run.log import RunLog
from evomerge.run.search import Search

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def short_dir():
    """A folder with a short path (pytest's tmp_path is too long for Ray's socket paths)."""
    path = Path(tempfile.mkdtemp(prefix="evm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def drain(ex, n):
    return [ex.next_result() for _ in range(n)]


@pytest.fixture(scope="class")
def one_actor(ray_cluster, spec):
    with RayExecutor(spec, workers=1) as ex:
        yield ex


class TestOneActor:
    """One Ray worker shared by these tests, in order: each leaves it serving for the next."""

    def test_broken_candidates_are_logged_and_the_actor_keeps_serving(self, one_actor, make_recipe, local_scores,
                                                                      weights):
        ex = one_actor
        ex.submit(Job(0, make_recipe(weights[0], method="no_such_method")))  # raises in the worker
        ex.submit(Job(1, make_recipe((1e300, 1e300, 1e300))))  # inf/NaN weights
        ex.submit(Job(2, make_recipe(weights[2])))
        results = {r.job.index: r.outcome for r in drain(ex, 3)}
        assert ex.restarted == 0 and not ex._running
        assert results[0].error and "no_such_method" in results[0].error and results[0].scores is None
        assert results[1].error and "NaN" in results[1].error and results[1].scores is None
        assert results[2].error is None and results[2].scores == local_scores[2]

    def test_actor_killed_mid_evaluation_reruns_the_job_once(self, one_actor, ray_cluster, make_recipe, local_scores,
                                                             weights):
        ray, ex = ray_cluster, one_actor
        before = (ex.resubmitted, ex.restarted)

        def killed_while_running(kill, jobs):
            for i in jobs:
                ex.submit(Job(i, make_recipe(weights[i])))
            got = drain(ex, 1)  # the second job was handed to the only actor as the first came back
            assert [job.index for _, job, _ in ex._running.values()] == [jobs[1]]
            kill()
            return got + drain(ex, len(jobs) - 1)

        def frozen_then(ray_kill):
            """ray.kill lands asynchronously, maybe after a short job has finished: the actor's process is stopped
            first, so the job is still running when the kill lands; the process is then killed at once, as Ray
            would kill it after a grace period (~5 s)."""
            pid = ex._nodes[0]["pid"]
            os.kill(pid, signal.SIGSTOP)
            ray_kill()
            os.kill(pid, signal.SIGKILL)

        # 1) ray.kill with restart: Ray restarts the actor (Worker.__init__ again); the job runs again
        results = killed_while_running(lambda: frozen_then(lambda: ray.kill(ex._actors[0], no_restart=False)), [0, 1])
        # 2) the actor's process killed from outside (as the OOM killer would): same
        results += killed_while_running(lambda: os.kill(ex._nodes[0]["pid"], signal.SIGKILL), [2, 3])
        # 3) dead for good (no restart left): a fresh actor takes the slot; the job runs there
        first = ex._actors[0]
        results += killed_while_running(lambda: frozen_then(lambda: ray.kill(first, no_restart=True)), [4, 5])
        assert ex._actors[0] is not first
        assert (ex.resubmitted - before[0], ex.restarted - before[1]) == (3, 3)
        assert sorted(r.job.index for r in results) == list(range(6))  # nothing lost, nothing twice
        assert {r.job.index: r.outcome.scores for r in results} == local_scores
        assert set(ex.utilization()) == {ex._slot_name[0]}


def test_a_missing_source_is_one_line_before_any_worker_starts(ray_cluster, spec, tmp_path):
    """The driver reads the sources into the object store: a missing one is the driver's error, not a node's."""
    missing = tmp_path / "nowhere"
    with pytest.raises(EvomergeError) as err:
        RayExecutor(replace(spec, sources=(spec.sources[0], missing)), workers=2)
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg and "\n" not in msg


def test_worker_that_cannot_start_names_node_and_cause(ray_cluster, spec, tmp_path):
    ray = ray_cluster
    missing = tmp_path / "not-on-this-node"
    # what each node still reads itself: tasks, the base's config and tokenizer
    bad = replace(spec, scoring=replace(spec.scoring, task_path=missing))
    with pytest.raises(EvomergeError) as err:
        RayExecutor(bad, workers=2)
    msg = str(err.value)
    ip = ray.util.get_node_ip_address()
    assert f"{socket.gethostname()} ({ip})" in msg and str(missing) in msg
    assert "\n" not in msg and "\x1b" not in msg  # one clean line for the CLI
    deadline = time.time() + 30  # the started actors are stopped: the cluster's CPUs are free again
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def test_run_stops_cleanly_when_workers_cannot_start(ray_cluster, search_config_file, tmp_path):
    cfg = load_config(search_config_file)
    run = RunLog.create(tmp_path / "run", cfg, {})
    missing = tmp_path / "gone"

    def factory(spec):
        return RayExecutor(replace(spec, scoring=replace(spec.scoring, task_path=missing)), workers=1)

    with pytest.raises(EvomergeError, match="could not start on node"):
        Search(run, factory, quiet=True).run_to_budget()
    text = (run.root / "log.jsonl").read_text()
    assert text == "" or text.endswith("\n")
    assert all(json.loads(line) for line in text.splitlines())  # no half-written record
    assert RunLog.open(run.root).candidates() == []


def test_same_log_as_local_with_two_workers(ray_cluster, search_config_file, reference_log, candidates_of, tmp_path):
    """(1 worker: test_cli_joins_a_running_cluster_and_leaves_it_up; killed and resumed: the driver test.)"""
    run = RunLog.create(tmp_path / "ray2", load_config(search_config_file), {})
    Search(run, lambda spec: RayExecutor(spec, workers=2), quiet=True).run_to_budget()
    assert candidates_of(run.root) == reference_log
    session = RunLog.open(run.root).sessions()[-1]
    assert session.backend == "local"  # the config's; the factory chose Ray
    assert session.workers == 2 and len(session.utilization) == 2


def test_racing_gives_the_same_log_on_ray_with_two_workers_as_in_process(ray_cluster, search_config_file, candidates_of,
                                                                        tmp_path):
    """scoring.fidelity racing: chunks of several candidates run on two workers in any order; the driver's
    decisions read results in hand-out order, so the log is the in-process one."""
    from evomerge.execution.executor import LocalExecutor

    config = tmp_path / "racing.yaml"
    config.write_text(search_config_file.read_text().replace(
        "batch_size: 64}", "batch_size: 64, fidelity: racing, chunk_items: 25, racing_z: 1.0}"))
    logs = []
    for name, factory in (("local", LocalExecutor), ("ray", lambda spec: RayExecutor(spec, workers=2))):
        run = RunLog.create(tmp_path / name, load_config(config), {})
        Search(run, factory, quiet=True).run_to_budget()
        logs.append(candidates_of(run.root))
    assert logs[0] == logs[1]
    assert any(r["items"] is not None and r["items"] < 200 for r in logs[0])  # some were resolved early


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "evomerge.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc)
    return proc.returncode, out + err


def _kill_group(proc: subprocess.Popen) -> None:
    """Ray helpers a SIGKILLed driver leaves behind share its process group: end them."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_driver_killed_then_resumed_equals_uninterrupted_run(search_config_file, reference_log, candidates_of,
                                                             short_dir):
    run_dir = short_dir / "run"  # short enough for Ray's sockets: Ray's session folder lives in the run folder
    proc = _cli("search", str(search_config_file), "--run-dir", str(run_dir), "--backend", "ray", "--workers", "2",
                "--quiet")
    log = run_dir / "log.jsonl"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if log.is_file() and log.read_text().count('"type": "candidate"') >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_group(proc)
    killed_at = len(RunLog.open(run_dir).candidates())
    assert 3 <= killed_at < len(reference_log)

    code, output = _finish(_cli("resume", str(run_dir), "--quiet"))
    assert code == 0, output
    assert candidates_of(run_dir) == reference_log
    sessions = RunLog.open(run_dir).sessions()
    assert [s.backend for s in sessions] == ["ray"] and sessions[0].workers == 2  # the killed one wrote none
    assert len(list((run_dir / "ray").glob("session_2*"))) == 2  # one Ray session per driver, in the run folder
    assert "too long for Ray" not in output


@pytest.mark.slow
def test_cli_joins_a_running_cluster_and_leaves_it_up(ray_cluster, search_config_file, reference_log, candidates_of,
                                                      short_dir):
    ray = ray_cluster
    run_dir = short_dir / "join"
    code, output = _finish(_cli("search", str(search_config_file), "--run-dir", str(run_dir), "--backend", "ray",
                                "--workers", "1", "--ray-address", ray.get_runtime_context().gcs_address, "--quiet"))
    assert code == 0, output
    assert candidates_of(run_dir) == reference_log  # 1 Ray worker, same log as in process
    assert not (run_dir / "ray").exists()  # a joined cluster keeps its own session folder
    assert ray.cluster_resources().get("CPU") == 2  # still up after the driver left


def test_a_worker_killed_for_memory_is_named_by_what_was_used_of_what_limit() -> None:
    from evomerge.execution.ray_executor import _cause

    text = ("1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 10.0.0.2) was "
            "22.53GB used / 23.54GB limit (0.957)\nOOM kill reason: Memory usage exceeded threshold\n"
            "Object store memory usage: [- objects spillable: 27\n- bytes restored: 0")
    assert _cause(RuntimeError(text)) == ("1 worker(s) were killed due to the node running low on memory. Memory on "
                                          "the node (IP: 10.0.0.2) was 22.53GB used / 23.54GB limit (0.957)")
