"""The Ray cluster a RayExecutor's workers run on: started or joined, sized, holding the sources.

The sources are read once, by the driver, block by block into Ray's object store; every actor maps them
from its node's store without a copy (Ray moves each block to a node once, and the actors of a node share
those pages), so a node holds the K+1 models once however many workers it runs. The store is sized for
them, and every node is checked to hold them, before any worker starts.

Without an address this starts a private local Ray (no dashboard, quiet, its temp folder inside the run
folder when the path is short enough for Ray's sockets) and stops it on ``close``. With an address
(``auto`` or ``host:port``) it joins that cluster and leaves it running.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from evomerge.config.sizes import format_size
from evomerge.env import offline_env
from evomerge.errors import EvomergeError
from evomerge.execution.worker import WorkerSpec
from evomerge.sources.folder import weight_bytes
from evomerge.sources.pool import SharedSources, check_compatible, share

# AF_UNIX socket paths hold at most 107 bytes. Ray puts its sockets at
# <temp>/session_<YYYY-mm-dd_HH-MM-SS_usec>_<pid>/sockets/plasma_store, 64 bytes after <temp>
# for a 7-digit pid, so a temp folder longer than this cannot host a Ray session.
SOCKET_PATH_MAX = 107
SESSION_SOCKET_SUFFIX = len("/session_2025-01-01_00-00-00_000000_4194304/sockets/plasma_store")
MAX_TEMP_DIR = SOCKET_PATH_MAX - SESSION_SOCKET_SUFFIX

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


class _Connection:
    """This driver's connection to Ray: on close, disconnect (stopping a Ray it started) and remove a fallback
    temp folder. A Ray the caller (a test, a notebook) connected already is used and left alone."""

    def __init__(self, address: str | None, temp_root: Path | None, workers: int, store_bytes: int):
        import ray

        self.address, self.connected, self.fallback_temp = address, False, None
        if ray.is_initialized():
            return
        address = address or os.environ.get("RAY_ADDRESS")  # inside a Ray job: join its cluster, as ray.init() would
        if address is not None:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise EvomergeError(
                    f"could not join the Ray cluster at '{address}': {e}; start one with 'ray start --head' "
                    "(and 'ray start --address=HEAD:6379' on the other nodes), or drop --ray-address to run locally"
                ) from None
            self.connected = True
            return
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        temp, fallback = ray_temp_dir(temp_root)
        if fallback:
            self.fallback_temp = temp
            if temp_root is not None:
                print(
                    f"evomerge: note: {Path(temp_root).resolve() / 'ray'} is too long for Ray's socket paths "
                    f"(over {MAX_TEMP_DIR} characters); Ray's session folder is {temp} instead (removed on exit)",
                    file=sys.stderr,
                )
        temp.mkdir(parents=True, exist_ok=True)
        ray.init(
            num_cpus=max(os.cpu_count() or 1, workers), include_dashboard=False, log_to_driver=False,
            logging_level=logging.WARNING, _temp_dir=str(temp),
            object_store_memory=OBJECT_STORE_BYTES + math.ceil(store_bytes / SPILL_AT),
        )
        self.connected = True

    def where(self) -> str:
        return f"the Ray cluster at '{self.address}'" if self.address else "the local Ray"

    def close(self) -> None:
        import ray

        if self.connected and ray.is_initialized():
            ray.shutdown()  # stops the cluster only if we started it; a joined cluster keeps running
        if self.fallback_temp is not None:
            shutil.rmtree(self.fallback_temp, ignore_errors=True)


def _check_fits(cluster: dict[str, float], workers: int, num_gpus: float, where: str) -> None:
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    short = []
    if workers > cpus:
        short.append(f"{workers} CPUs (one per worker) but it has {cpus:g}")
    if num_gpus > 0 and workers * num_gpus > gpus:
        short.append(f"{workers * num_gpus:g} GPUs ({num_gpus:g} per worker) but it has {gpus:g}")
    if short:
        raise EvomergeError(
            f"{where} cannot place {workers} workers: they need {' and '.join(short)}; "
            "lower --workers or --gpus-per-worker, or add nodes to the cluster"
        )


def _check_store(store_bytes: int, address: str | None) -> None:
    """Every node's object store must hold the sources (actors map them from there)."""
    import ray

    for node in ray.nodes():
        have = node.get("Resources", {}).get("object_store_memory", 0.0)
        if node.get("Alive") and have < store_bytes:
            host = node.get("NodeManagerHostname", "?")
            where = f"node {host} of the Ray cluster at '{address}'" if address else "the local Ray"
            raise EvomergeError(
                f"{where} has {format_size(have)} of object store but the sources need {format_size(store_bytes)} "
                f"(read once per node, shared by its workers): start it with 'ray start --object-store-memory="
                f"{store_bytes + OBJECT_STORE_BYTES}' or more"
            )


def _share_sources(spec: WorkerSpec) -> tuple[Any, SharedSources, str]:
    """Read the sources into the object store (block by block, by this driver) and start the actor that hands
    their handles to the workers: (that actor, the driver's handles, its name). (Handles as constructor arguments
    would make Ray warn that actor restarts depend on them; asked for in ``Worker.__init__``, they do not.)"""
    import ray

    # numpy arrays: Ray maps them read-only from its store on get (a torch tensor would be unpickled into a copy)
    shared = share(spec.base, spec.sources, lambda block: ray.put(block.numpy()), allow_pickle=spec.allow_pickle,
                   trust_remote_code=spec.trust_remote_code)
    name = f"evomerge-sources-{uuid.uuid4().hex[:12]}"
    store: Any = ray.remote(_SourcesStore).options(name=name, num_cpus=0, max_restarts=0).remote()
    try:
        ray.get(store.keep.remote(shared))
    except BaseException:
        ray.kill(store, no_restart=True)
        raise
    return store, shared, name


class RayCluster:
    """Ray connected for this driver, checked to place ``workers`` workers, with the sources in its object store.

    ``spec`` is the workers' spec, naming the actor that hands out the sources; ``worker_options`` are the Ray
    options of a worker actor (its CPU and GPUs, its environment)."""

    def __init__(self, spec: WorkerSpec, *, workers: int, gpus_per_worker: float = 0.0, address: str | None = None,
                 temp_root: Path | None = None):
        import ray

        if workers < 1:
            raise EvomergeError(f"--workers must be >= 1, got {workers}")
        if gpus_per_worker < 0:
            raise EvomergeError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
        check_compatible(spec.base, spec.sources, allow_pickle=spec.allow_pickle,
                         trust_remote_code=spec.trust_remote_code)
        store_bytes = sources_bytes(spec)
        self._connection = _Connection(address, temp_root, workers, store_bytes)
        try:
            # the config's device decides: a cuda worker holds GPUs (Ray sets CUDA_VISIBLE_DEVICES per actor)
            num_gpus = (gpus_per_worker or 1.0) if spec.device.startswith("cuda") else 0.0
            _check_fits(ray.cluster_resources(), workers, num_gpus, self._connection.where())
            _check_store(store_bytes, address)
            self._store, shared, name = _share_sources(spec)
        except BaseException:
            self._connection.close()
            raise
        self._shared: SharedSources | None = shared  # the driver owns the objects: they live while it holds them
        self.spec = replace(spec, sources_store=name)
        self.worker_options: dict[str, Any] = dict(num_cpus=1, num_gpus=num_gpus, runtime_env={"env_vars": WORKER_ENV})

    def host_of(self, ip: str | None) -> str | None:
        """The host name of the node at ``ip``, if the cluster still answers."""
        import ray

        try:
            return next((n["NodeManagerHostname"] for n in ray.nodes() if n["NodeManagerAddress"] == ip), None)
        except Exception:  # the cluster itself may be going down; the IP alone still names the node
            return None

    def close(self) -> None:
        """Stop the sources' actor, drop the driver's handles, disconnect."""
        import ray

        if ray.is_initialized():
            try:
                ray.kill(self._store, no_restart=True)
            except Exception:  # already dead
                pass
        self._shared = None  # the driver's references: the objects go once no worker holds them
        self._connection.close()
