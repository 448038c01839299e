"""RayExecutor on a local 2-CPU Ray: same outcomes as in process, steady state, utilization, temp dirs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from evomerge.errors import EvomergeError
from evomerge.execution.executor import Job
from evomerge.execution.ray_cluster import MAX_TEMP_DIR, ray_temp_dir
from evomerge.execution.ray_executor import RayExecutor


def scores_of(results):
    return {r.job.index: r.outcome.scores for r in results}


def test_two_workers_match_local_and_share_the_work(ray_cluster, spec, make_recipe, local_scores, weights):
    with RayExecutor(spec, workers=2) as ex:
        assert ex.n_workers == 2
        assert ex.cluster.worker_options["num_cpus"] == 1 and ex.cluster.worker_options["num_gpus"] == 0
        assert ex.cluster.spec.threads == 1  # one torch thread per worker, as in process
        for i, w in enumerate(weights):
            ex.submit(Job(i, make_recipe(w)))
        assert len(ex._running) == 2 and len(ex._queue) == len(weights) - 2  # no barrier: both busy at once
        results = [ex.next_result() for _ in weights]
        util = ex.utilization()
        with pytest.raises(RuntimeError, match="no job submitted"):
            ex.next_result()
    assert sorted(r.job.index for r in results) == list(range(len(weights)))  # each job exactly once
    assert scores_of(results) == local_scores  # plain data back, bit-identical to in-process scoring
    assert {r.outcome.worker.split("@")[0] for r in results} == {"ray-0", "ray-1"}
    assert sorted(n.split("@")[0] for n in util) == ["ray-0", "ray-1"]
    assert all(0.0 < u <= 1.0 for u in util.values())


def test_too_many_workers_for_the_cluster(ray_cluster, spec):
    with pytest.raises(EvomergeError, match="cannot place 3 workers.*3 CPUs"):
        RayExecutor(spec, workers=3)
    with pytest.raises(EvomergeError, match=r"1 GPUs \(1 per worker\) but it has 0"):  # ray_cluster declares none
        RayExecutor(replace(spec, device="cuda"), workers=1)


def test_ray_temp_dir_in_run_folder_or_short_fallback(tmp_path: Path):
    short = Path("/tmp/r")
    assert ray_temp_dir(short) == (short / "ray", False)
    long_root = tmp_path / ("x" * MAX_TEMP_DIR)
    path, fallback = ray_temp_dir(long_root)
    try:
        assert fallback and path.is_dir() and len(str(path)) <= MAX_TEMP_DIR
        assert path.name.startswith("evomerge-ray-")
    finally:
        path.rmdir()
    # the limit leaves room for Ray's longest socket path under AF_UNIX's 107 bytes
    assert MAX_TEMP_DIR + len("/session_2025-01-01_00-00-00_000000_4194304/sockets/plasma_store") <= 107


def _source_memory(worker) -> tuple[set[str], set[int]]:
    """Runs in an actor: the mappings that hold every model's every block, and the blocks' addresses modulo 64."""
    maps = []
    for line in open("/proc/self/maps"):
        parts = line.split()
        low, high = (int(x, 16) for x in parts[0].split("-"))
        maps.append((low, high, " ".join(parts[5:])))
    ptrs = [b.data_ptr() for model in (worker.pool.base, *worker.pool.sources) for b in model.buffers]
    return {next((name for low, high, name in maps if low <= p < high), "") for p in ptrs}, {p % 64 for p in ptrs}


def test_workers_map_one_shared_copy_of_the_sources(ray_cluster, spec):
    import ray

    with RayExecutor(spec, workers=2) as ex:
        places = ray.get([actor.__ray_call__.remote(_source_memory) for actor in ex._actors])
    (first, first_align), (second, second_align) = places
    # every block in one shared file mapping (Ray's store)
    assert first == second and len(first) == 1 and "" not in first
    assert first_align == second_align == {0}
