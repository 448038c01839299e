"""RayExecutor: one resident Worker actor per GPU (or per CPU slot), steady state, fault tolerant.

Each actor is the unchanged ``Worker`` class wrapped by ``ray.remote``: it keeps one preallocated
model and the lm-eval requests, and evaluates candidates in place. Recipes go in and plain scores
come out. The sources are read once, by the driver, block by block into Ray's object store; every
actor maps them from its node's store without a copy (Ray moves each block to a node once, and the
actors of a node share those pages), so a node holds the K+1 models once however many workers it runs.

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

Without an address the executor starts a private local Ray (no dashboard, quiet, its temp folder
inside the run folder when the path is short enough for Ray's sockets) and stops it on ``close``.
With an address (``auto`` or ``host:port``) it joins that cluster and leaves it running.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

from evomerge.config.sizes import format_size
from evomerge.env import offline_env
from evomerge.errors import EvomergeError
from evomerge.execution.executor import Executor, Job, JobResult
from evomerge.execution.worker import Outcome, Worker, WorkerSpec
from evomerge.recipes.recipe import Recipe
from evomerge.sources.folder import weight_bytes
from evomerge.sources.pool import SharedSources, check_compatible, share

# AF_UNIX socket paths hold at most 107 bytes. Ray puts its sockets at
# <temp>/session_<YYYY-mm-dd_HH-MM-SS_usec>_<pid>/sockets/plasma_store, 64 bytes after <temp>
# for a 7-digit pid, so a temp folder longer than this cannot host a Ray session.
SOCKET_PATH_MAX = 107
SESSION_SOCKET_SUFFIX = len("/session_2025-01-01_00-00-00_000000_4194304/sockets/plasma_store")
MAX_TEMP_DIR = SOCKET_PATH_MAX - SESSION_SOCKET_SUFFIX

MAX_RESTARTS = 3  # Ray restarts of one actor before it is replaced by a fresh one
MAX_REPLACEMENTS = 2  # fresh actors per worker slot before the slot is given up
MAX_ATTEMPTS = 3  # a job that kills its worker this often is logged as a failed candidate
RETRY_S = 0.5  # pause between readiness checks of a restarting actor
# set in every actor before it imports anything: offline, and no progress bars in the workers' log files
WORKER_ENV = {**offline_env(quiet=True), "TQDM_DISABLE": "1"}
OBJECT_STORE_BYTES = 256 * 2**20  # besides the sources, only recipes and score lists travel
SPILL_AT = 0.8  # Ray's default object_spilling_threshold: a store fuller than this spills objects to disk


def ray_temp_dir(temp_root: Path | None) -> tuple[Path, bool]:
    """Where a locally started Ray keeps its session: ``<temp_root>/ray`` if short enough, else a fresh
    short folder under the system temp dir. Returns (path, is_fallback)."""
    if temp_root is not None:
        wanted = Path(temp_root).resolve() / "ray"
        if len(str(wanted)) <= MAX_TEMP_DIR:
            return wanted, False
    base = tempfile.gettempdir()
    if len(base) + len("/evomerge-ray-xxxxxxxx") > MAX_TEMP_DIR:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="evomerge-ray-", dir=base)), True


def sources_bytes(spec: WorkerSpec) -> int:
    """Object-store bytes the sources take: their weight files, plus each tensor's alignment padding."""
    return sum(weight_bytes(p) for p in (spec.base, *spec.sources))


class _SourcesStore:
    """A Ray actor holding the sources' object-store handles for the workers to ask for."""

    def __init__(self) -> None:
        self.shared: SharedSources | None = None

    def keep(self, shared: SharedSources) -> None:
        self.shared = shared

    def get(self) -> SharedSources | None:
        return self.shared


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

        if workers < 1:
            raise EvomergeError(f"--workers must be >= 1, got {workers}")
        if gpus_per_worker < 0:
            raise EvomergeError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
        self.workers, self.max_restarts = workers, max_restarts
        self._connected = False  # we connected this driver: on close, disconnect (and stop a Ray we started)
        self._fallback_temp: Path | None = None
        self._actors: list[Any] = []
        self._store: Any = None  # the actor handing out the sources' handles
        self._shared: SharedSources | None = None
        self._closed = False
        self._queue: deque[tuple[Job, int]] = deque()  # (job, attempts so far)
        self._held: dict[int, Recipe] = {}  # slot -> the recipe its actor was last handed
        self._running: dict[Any, tuple[int, Job, int]] = {}  # object ref -> (slot, job, attempt)
        self._idle: deque[int] = deque()
        self._done: deque[JobResult] = deque()
        self._probes: dict[Any, int] = {}  # readiness call -> slot of an actor coming back
        self._recovering: dict[int, float] = {}  # slot -> when to ask its actor again whether it is back
        self._replacements = [0] * workers
        self.resubmitted = 0  # jobs re-run after their actor died (tests and status read it)
        self._restarted = 0  # actor deaths seen (each followed by a Ray restart or a replacement)
        try:
            check_compatible(spec.base, spec.sources, allow_pickle=spec.allow_pickle, trust_remote_code=spec.trust_remote_code)
            store_bytes = sources_bytes(spec)
            self._connect(address, temp_root, workers, store_bytes)
            cluster = ray.cluster_resources()
            # the config's device decides: a cuda worker holds GPUs (Ray sets CUDA_VISIBLE_DEVICES per actor)
            num_gpus = (gpus_per_worker or 1.0) if spec.device.startswith("cuda") else 0.0
            self._check_fits(cluster, workers, num_gpus, address)
            self._check_store(store_bytes, address)
            self.spec = replace(spec, sources_store=self._share_sources(spec))
            self.options = dict(
                num_cpus=1, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0, max_concurrency=1,
                runtime_env={"env_vars": WORKER_ENV},
            )
            self._actor_class = ray.remote(Worker)
            self._actors = [self._new_actor(slot) for slot in range(workers)]
            self._nodes = self._wait_ready(start_timeout_s)
        except BaseException:
            self.close()
            raise
        self.busy = {info["name"]: 0.0 for info in self._nodes}
        self._slot_name = [info["name"] for info in self._nodes]
        self._idle.extend(range(workers))
        self.started = time.perf_counter()

    # --- cluster ------------------------------------------------------------------------------

    def _connect(self, address: str | None, temp_root: Path | None, workers: int, store_bytes: int) -> None:
        import ray

        if ray.is_initialized():
            return  # the caller (a test, a notebook) already connected Ray: use it, leave it alone
        address = address or os.environ.get("RAY_ADDRESS")  # inside a Ray job: join its cluster, as ray.init() would
        if address is not None:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise EvomergeError(
                    f"could not join the Ray cluster at '{address}': {e}; start one with 'ray start --head' "
                    "(and 'ray start --address=HEAD:6379' on the other nodes), or drop --ray-address to run locally"
                ) from None
            self._connected = True
            return
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        temp, fallback = ray_temp_dir(temp_root)
        if fallback:
            self._fallback_temp = temp
            if temp_root is not None:
                print(
                    f"evomerge: note: {Path(temp_root).resolve() / 'ray'} is too long for Ray's socket paths "
                    f"(over {MAX_TEMP_DIR} characters); Ray's session folder is {temp} instead (removed on exit)",
                    file=sys.stderr,
                )
        temp.mkdir(parents=True, exist_ok=True)
        ray.init(
            num_cpus=max(os.cpu_count() or 1, workers), include_dashboard=False, log_to_driver=False,
            logging_level=logging.WARNING, _temp_dir=str(temp), object_store_memory=OBJECT_STORE_BYTES + math.ceil(store_bytes / SPILL_AT),
        )
        self._connected = True

    @staticmethod
    def _check_fits(cluster: dict[str, float], workers: int, num_gpus: float, address: str | None) -> None:
        cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
        short = []
        if workers > cpus:
            short.append(f"{workers} CPUs (one per worker) but it has {cpus:g}")
        if num_gpus > 0 and workers * num_gpus > gpus:
            short.append(f"{workers * num_gpus:g} GPUs ({num_gpus:g} per worker) but it has {gpus:g}")
        if short:
            where = f"the Ray cluster at '{address}'" if address else "the local Ray"
            raise EvomergeError(
                f"{where} cannot place {workers} workers: they need {' and '.join(short)}; "
                "lower --workers or --gpus-per-worker, or add nodes to the cluster"
            )

    def _share_sources(self, spec: WorkerSpec) -> str:
        """Read the sources into the object store (block by block, by this driver) and start the actor that hands
        their handles to the workers; returns its name. (Handles as constructor arguments would make Ray warn
        that actor restarts depend on them; asked for in ``Worker.__init__``, they do not.)"""
        import ray

        # numpy arrays: Ray maps them read-only from its store on get (a torch tensor would be unpickled into a copy)
        shared = share(spec.base, spec.sources, lambda block: ray.put(block.numpy()), allow_pickle=spec.allow_pickle,
                       trust_remote_code=spec.trust_remote_code)
        name = f"evomerge-sources-{uuid.uuid4().hex[:12]}"
        self._store = ray.remote(_SourcesStore).options(name=name, num_cpus=0, max_restarts=0).remote()
        ray.get(self._store.keep.remote(shared))
        self._shared = shared  # the driver owns the objects: they live while the executor does
        return name

    @staticmethod
    def _check_store(store_bytes: int, address: str | None) -> None:
        """Every node's object store must hold the sources (actors map them from there)."""
        import ray

        for node in ray.nodes():
            have = node.get("Resources", {}).get("object_store_memory", 0.0)
            if node.get("Alive") and have < store_bytes:
                where = f"node {node.get('NodeManagerHostname', '?')} of the Ray cluster at '{address}'" if address else "the local Ray"
                raise EvomergeError(
                    f"{where} has {format_size(have)} of object store but the sources need {format_size(store_bytes)} "
                    f"(read once per node, shared by its workers): start it with 'ray start --object-store-memory="
                    f"{store_bytes + OBJECT_STORE_BYTES}' or more"
                )

    def _new_actor(self, slot: int) -> Any:
        return self._actor_class.options(**self.options).remote(self.spec, name=f"ray-{slot}")

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
                raise self._start_error(slot, e) from None
        return [infos[s] for s in range(self.workers)]

    def _start_error(self, slot: int, error: BaseException) -> EvomergeError:
        import ray

        text = _ANSI.sub("", str(error))
        ip = m.group(1) if (m := re.search(r"\bip=([0-9a-fA-F.:]+)", text)) else None
        known = getattr(self, "_nodes", None)
        if ip is None and known:
            ip = known[slot]["ip"]
        host = None
        try:
            host = next((n["NodeManagerHostname"] for n in ray.nodes() if n["NodeManagerAddress"] == ip), None)
        except Exception:  # the cluster itself may be going down; the IP alone still names the node
            pass
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
        wall = time.perf_counter() - self.started if hasattr(self, "started") else 0.0
        return {name: (busy / wall if wall > 0 else 0.0) for name, busy in getattr(self, "busy", {}).items()}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        import ray

        if ray.is_initialized():
            for actor in [*self._actors, *([self._store] if self._store is not None else [])]:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # already dead
                    pass
            if self._connected:
                ray.shutdown()  # stops the cluster only if we started it; a joined cluster keeps running
        self._shared = None  # the driver's references: the objects go once no worker holds them
        if self._fallback_temp is not None:
            shutil.rmtree(self._fallback_temp, ignore_errors=True)

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
            outcome = Outcome(None, error=f"the worker process died {attempt + 1} times while evaluating this candidate "
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
                raise self._start_error(slot, error)  # a (re)start could not load the sources: stop cleanly
            if self._replacements[slot] >= MAX_REPLACEMENTS:
                raise EvomergeError(
                    f"Ray worker ray-{slot} keeps dying ({self._restarted} worker deaths so far, last on node "
                    f"{self._slot_node(slot)}: {_cause(error)}); check that node's memory and Ray logs"
                )
            self._replacements[slot] += 1
            self._actors[slot] = self._new_actor(slot)
        self._recovering[slot] = time.monotonic() + RETRY_S
