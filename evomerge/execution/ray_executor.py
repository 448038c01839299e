"""RayExecutor: one resident Worker actor per GPU (or per CPU slot), steady state, fault tolerant.

Each actor is the unchanged ``Worker`` class wrapped by ``ray.remote``: it keeps one preallocated
model and the lm-eval requests, and evaluates candidates in place. Recipes go in and plain scores
come out. The cluster they run on, and the sources they map, are ``RayCluster``'s (ray_cluster.py).

Steady state: ``submit`` hands a job to a free actor at once (or queues it); ``next_result``
waits for whichever call finishes first and gives that actor the next queued job before
returning. Every actor holds at most one call, so a queued job always goes to the first actor
that frees up, and a dead actor never takes queued work down with it.

Faults:
- an actor process dies mid-evaluation (killed, crashed, node lost): Ray restarts it
  (``max_restarts``; the restart re-runs ``Worker.__init__``) and the job is put back at the head
  of the queue. The lost attempt never produced a result, so the job is counted exactly once.
  An actor out of restarts is replaced by a fresh one; a job that kills its worker
  ``MAX_ATTEMPTS`` times comes back as a failed candidate instead of looping.
- a candidate that raises or scores NaN: ``Worker.evaluate`` already returns an ``Outcome`` with
  ``error`` set, and the actor keeps serving.
- a worker that cannot start (task files or the base's folder missing on its node, out of memory):
  an ``EvomergeError`` naming the node and the cause; all actors are stopped. (The sources are read
  by the driver: a missing one is an error before any worker starts.)
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from evomerge.errors import EvomergeError
from evomerge.execution.executor import Executor, Job, JobResult
from evomerge.execution.ray_cluster import RayCluster
from evomerge.execution.worker import Outcome, Worker, WorkerSpec
from evomerge.recipes.recipe import Recipe

MAX_RESTARTS = 3  # Ray restarts of one actor before it is replaced by a fresh one
MAX_REPLACEMENTS = 2  # fresh actors per worker slot before the slot is given up
MAX_ATTEMPTS = 3  # a job that kills its worker this often is logged as a failed candidate
RETRY_S = 0.5  # pause between readiness checks of a restarting actor


def _actor_info(worker: Worker) -> dict[str, Any]:
    """Runs inside an actor (via ``__ray_call__``): who and where it is."""
    import ray

    return {"name": worker.name, "host": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid()}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _cause(error: BaseException) -> str:
    """The last line of a Ray error's remote traceback: the original exception, as its user would say it; for Ray's
    memory monitor killing a worker, its first line (what was used of what limit)."""
    text = _ANSI.sub("", str(error)).strip()
    if m := re.search(r"[^\n]*running low on memory[^\n]*", text):
        return m.group(0).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not set(line.strip()) <= {"^", "~"}]
    last = lines[-1] if lines else type(error).__name__
    return re.sub(r"^evomerge\.errors\.EvomergeError: ", "", last)


class RayExecutor(Executor):
    """Builds its ``RayCluster`` first, then one worker actor per slot on it; ``close`` stops both."""

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        workers: int,
        gpus_per_worker: float = 0.0,
        address: str | None = None,
        temp_root: Path | None = None,
        max_restarts: int = MAX_RESTARTS,
        start_timeout_s: float = 1800.0,
    ):
        import ray

        self.cluster = RayCluster(spec, workers=workers, gpus_per_worker=gpus_per_worker, address=address,
                                  temp_root=temp_root)
        self.workers, self._closed = workers, False
        self._actors: list[Any] = []
        try:
            self._actor_class = ray.remote(Worker).options(
                **self.cluster.worker_options, max_restarts=max_restarts, max_task_retries=0, max_concurrency=1)
            self._actors = [self._new_actor(slot) for slot in range(workers)]
            self._nodes = self._wait_ready(start_timeout_s)
        except BaseException:
            self.close()
            raise
        self._slot_name = [info["name"] for info in self._nodes]
        self._queue: deque[tuple[Job, int]] = deque()  # (job, attempts so far)
        self._held: dict[int, Recipe] = {}  # slot -> the recipe its actor was last handed
        self._running: dict[Any, tuple[int, Job, int]] = {}  # object ref -> (slot, job, attempt)
        self._idle: deque[int] = deque(range(workers))
        self._done: deque[JobResult] = deque()
        self._probes: dict[Any, int] = {}  # readiness call -> slot of an actor coming back
        self._recovering: dict[int, float] = {}  # slot -> when to ask its actor again whether it is back
        self._replacements = [0] * workers
        self.resubmitted = 0  # jobs re-run after their actor died (the fault tests read it)
        self._restarted = 0  # actor deaths seen (each followed by a Ray restart or a replacement)
        self.busy = dict.fromkeys(self._slot_name, 0.0)
        self.started = time.perf_counter()

    # --- actors -------------------------------------------------------------------------------

    def _new_actor(self, slot: int) -> Any:
        return self._actor_class.remote(self.cluster.spec, name=f"ray-{slot}")

    def _wait_ready(self, timeout_s: float) -> list[dict[str, Any]]:
        """Block until every actor has loaded its sources; a failure names the node and the cause."""
        import ray

        refs = {actor.__ray_call__.remote(_actor_info): slot for slot, actor in enumerate(self._actors)}
        infos: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise EvomergeError(
                    f"{len(pending)} of {self.workers} Ray workers did not start within {timeout_s:.0f} s "
                    "(not enough free CPUs/GPUs in the cluster, or a very slow model load)"
                )
            slot = refs[ready[0]]
            try:
                infos[slot] = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as e:
                raise self._start_error(slot, e, None) from None
        return [infos[s] for s in range(self.workers)]

    def _start_error(self, slot: int, error: BaseException, known_ip: str | None) -> EvomergeError:
        """One line naming the node a worker could not (re)start on (the error's IP, else the one it ran on)."""
        text = _ANSI.sub("", str(error))
        ip = m.group(1) if (m := re.search(r"\bip=([0-9a-fA-F.:]+)", text)) else known_ip
        host = self.cluster.host_of(ip) if ip else None
        node = f"{host} ({ip})" if host and ip else (ip or "an unknown node")
        return EvomergeError(
            f"Ray worker ray-{slot} could not start on node {node}: {_cause(error)}; "
            "every node needs the base's folder (config, tokenizer) and the task files at the same paths, and memory "
            "for its workers' live models"
        )

    def _slot_node(self, slot: int) -> str:
        info = self._nodes[slot]
        return f"{info['host']} ({info['ip']})"

    # --- executor interface -------------------------------------------------------------------

    @property
    def n_workers(self) -> int:
        return self.workers

    def submit(self, job: Job) -> None:
        self._queue.append((job, 0))
        self._harvest(timeout=0.0)  # free actors that finished meanwhile, so the new job starts at once
        self._dispatch()

    def next_result(self) -> JobResult:
        while not self._done:
            if not self._running and not self._queue:
                raise RuntimeError("next_result() called with no job submitted")
            self._harvest(timeout=None)
        return self._done.popleft()

    @property
    def restarted(self) -> int:
        return self._restarted

    def utilization(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        return {name: (busy / wall if wall > 0 else 0.0) for name, busy in self.busy.items()}

    def close(self) -> None:
        """Stop the actors, then the cluster (which stops a Ray it started)."""
        if self._closed:
            return
        self._closed = True
        import ray

        if ray.is_initialized():
            for actor in self._actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # already dead
                    pass
        self.cluster.close()

    # --- scheduling ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Free actors take queued jobs: one of the recipe an actor last merged first (a raced candidate's next
        chunk, no merge), else the oldest. Only speed depends on it: a worker merges whatever it is handed."""
        while self._idle and self._queue:
            slot = self._idle.popleft()
            pick = next((i for i, (job, _) in enumerate(self._queue) if job.recipe == self._held.get(slot)), 0)
            job, attempt = self._queue[pick]
            del self._queue[pick]
            self._held[slot] = job.recipe
            ref = self._actors[slot].evaluate.remote(job.recipe, job.split, job.items)
            self._running[ref] = (slot, job, attempt)

    def _harvest(self, timeout: float | None) -> None:
        """Collect finished calls (wait for at least one unless ``timeout`` is 0) and refill freed actors."""
        import ray

        now = time.monotonic()
        for slot, due in list(self._recovering.items()):
            if due <= now:  # ask a restarting actor again whether it is back
                del self._recovering[slot]
                self._probes[self._actors[slot].__ray_call__.remote(_actor_info)] = slot
        refs = [*self._running, *self._probes]
        wait = timeout
        if self._recovering:
            next_due = max(0.0, min(self._recovering.values()) - now)
            wait = next_due if wait is None else min(wait, next_due)
        if not refs:
            time.sleep(wait or 0.0)
            return
        # non-blocking: take everything already finished; blocking: return as soon as one call is done
        ready, _ = ray.wait(refs, num_returns=len(refs) if timeout == 0.0 else 1, timeout=wait)
        for ref in ready:
            if ref in self._probes:
                slot = self._probes.pop(ref)
                try:
                    self._nodes[slot] = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    self._actor_down(slot, e)
                else:
                    self._idle.append(slot)  # back in service
                continue
            slot, job, attempt = self._running.pop(ref)
            try:
                outcome: Outcome = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                self._job_lost(slot, job, attempt, e)
                continue
            self.busy[outcome.worker] = self.busy.get(outcome.worker, 0.0) + outcome.merge_s + outcome.score_s
            self._done.append(JobResult(job, outcome))
            self._idle.append(slot)
        self._dispatch()

    def _job_lost(self, slot: int, job: Job, attempt: int, error: BaseException) -> None:
        """The actor died under a job: the job goes back to the head of the queue (any actor may take it);
        the lost attempt produced no result, so the job is still counted exactly once."""
        self._restarted += 1
        if attempt + 1 >= MAX_ATTEMPTS:
            outcome = Outcome(None,
                              error=f"the worker process died {attempt + 1} times while evaluating this candidate "
                                          f"(last: {_cause(error)})", worker=self._slot_name[slot])
            self._done.append(JobResult(job, outcome))
        else:
            self.resubmitted += 1
            self._queue.appendleft((job, attempt + 1))
        self._actor_down(slot, error)

    def _actor_down(self, slot: int, error: BaseException) -> None:
        """Keep the slot out of service until its actor answers again: Ray is restarting it (calls sent
        meanwhile would fail), or it is dead for good and a fresh actor takes its place."""
        import ray

        if isinstance(error, ray.exceptions.ActorDiedError):
            if error.actor_init_failed:
                # a (re)start could not load the sources: stop cleanly
                raise self._start_error(slot, error, self._nodes[slot]["ip"])
            if self._replacements[slot] >= MAX_REPLACEMENTS:
                raise EvomergeError(
                    f"Ray worker ray-{slot} keeps dying ({self._restarted} worker deaths so far, last on node "
                    f"{self._slot_node(slot)}: {_cause(error)}); check that node's memory and Ray logs"
                )
            self._replacements[slot] += 1
            self._actors[slot] = self._new_actor(slot)
        self._recovering[slot] = time.monotonic() + RETRY_S
