"""Data parallelism: the per-device step of ``tl_jax.step`` under ``shard_map`` or ``pmap``.

The step is written once with a named ``"data"`` axis. Two wrappers run it:

* ``"shard_map"`` (default): ``jax.jit(jax.shard_map(step, mesh=Mesh(devices, ("data",))))``;
  the state is a replicated global array, the batch is sharded along ``"data"``.
  Works across processes (multi-host) unchanged.
* ``"pmap"``: ``jax.pmap(step, axis_name="data")``; the state carries a leading
  device axis (stacked copies), the batch is reshaped to (devices, per-device, ...).
  Single process only here (pmap is in maintenance mode since JAX 0.8).
* ``"none"``: plain ``jax.jit`` on one device (the reference).

The state is donated in every wrapper. Trainable BatchNorm syncs its batch
statistics across the axis when the model has ``bn_axis_name="data"``
(``DataParallel.bn_axis_name`` when ``sync_bn``); without sync the step averages the new
running statistics across devices so replicas stay identical. The step itself lives in
``tl_jax.step`` only: this module wraps it.
``DataParallel`` owns every layout decision (stacked copies under pmap, global arrays
under shard_map): callers put and get states, batches and metrics through it.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tl_jax import step as step_lib

AXIS = "data"
KINDS = ("shard_map", "pmap", "none")
log = logging.getLogger(__name__)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, local_device_ids: Sequence[int] | None = None,
                           timeout_s: int = 300) -> None:
    """Start multi-host JAX. With no arguments JAX detects the cluster (Slurm, Open MPI, TPU);
    where it finds none this is a single-process run and nothing happens. Otherwise pass the
    coordinator ``host:port`` (process 0), the process count and this process's id."""
    if jax.distributed.is_initialized():
        return
    if coordinator_address is None and num_processes is None and process_id is None:
        try:
            jax.distributed.initialize(initialization_timeout=timeout_s)
        except (ValueError, RuntimeError) as e:  # no cluster detected: single process
            log.info("single-process run (%s)", e)
        return
    if None in (coordinator_address, num_processes, process_id):
        raise ValueError("explicit multi-host start needs coordinator_address, num_processes and process_id")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids,
                               initialization_timeout=timeout_s)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D mesh over all devices of all processes (or the given ones), axis ``"data"``."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf as a global array replicated over ``mesh`` (host values must agree across processes)."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global: take the local copy
            x = x.addressable_data(0)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree.map(put, tree)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global batch sharded along ``"data"`` from this process's local rows
    (global batch = concatenation of the processes' local batches, in process order)."""
    sharding = NamedSharding(mesh, P(AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def stack_replicas(tree: Any, n: int) -> Any:
    """pmap layout: ``n`` stacked copies of every leaf (``jax.device_put_replicated`` is gone)."""
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)


def unstack_replica(tree: Any) -> Any:
    """First copy of a pmap-layout tree."""
    return jax.tree.map(lambda x: x[0], tree)


def split_batch(batch: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """pmap layout: (B, ...) -> (n, B // n, ...)."""
    def split(x):
        x = np.asarray(x)
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} does not split over {n} devices")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])
    return {k: split(v) for k, v in batch.items()}


@dataclasses.dataclass
class DataParallel:
    """One object that knows how to lay out the state and the batch and how to run the steps."""
    kind: str = "shard_map"
    mesh: Mesh | None = None
    sync_bn: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown parallel {self.kind!r}; choose one of {KINDS}")
        if self.kind == "none":
            self.mesh = make_mesh(jax.local_devices()[:1])
        elif self.mesh is None:
            self.mesh = make_mesh()
        if self.kind == "pmap" and jax.process_count() > 1:
            raise ValueError("parallel='pmap' is single-process here; use 'shard_map' across processes")

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def axis_name(self) -> str | None:
        """``None`` where there is nothing to average over: a shard_map over a single device
        runs as plain ``jit`` (same arithmetic; the shard_map/collectives cost ~4% on CPU)."""
        if self.kind == "none" or (self.kind == "shard_map" and self.mesh.size == 1):
            return None
        return AXIS

    @property
    def bn_axis_name(self) -> str | None:
        """The models' ``bn_axis_name`` under this wrapper: ``"data"`` when trainable BatchNorm syncs."""
        return AXIS if self.sync_bn and self.axis_name else None

    # --- layouts --------------------------------------------------------------
    def put_state(self, state: Any) -> Any:
        """A state (or variables) in this wrapper's layout, from host values or replicated global arrays."""
        if self.kind == "pmap":
            return jax.device_put(stack_replicas(state, self.num_devices), NamedSharding(self.mesh, P(AXIS)))
        return replicate(state, self.mesh)

    def get(self, tree: Any) -> Any:
        """One logical copy of a state or of step outputs (under pmap: the first replica)."""
        return unstack_replica(tree) if self.kind == "pmap" else tree

    def global_batch_size(self, batch: dict[str, Any]) -> int:
        """Examples in a batch laid out by ``put_batch`` (all devices, all processes)."""
        shape = batch["label"].shape
        return int(shape[0] * shape[1]) if self.kind == "pmap" else int(shape[0])

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        if self.kind == "pmap":
            return split_batch(batch, self.num_devices)
        return shard_batch(batch, self.mesh)

    def state_sharding(self) -> NamedSharding:
        """Where ``get`` leaves live (for restoring checkpoints)."""
        return NamedSharding(self.mesh, P())

    # --- steps -----------------------------------------------------------------
    def train_step(self, *, label_smoothing: float = 0.0, frozen_stats: frozenset[str] = frozenset(),
                   ) -> Callable[[step_lib.TrainState, Any], tuple[step_lib.TrainState, dict]]:
        """Compiled ``step.train_step``, ``(state, batch) -> (state, metrics)`` in this wrapper's layout;
        the state is donated."""
        fn = functools.partial(step_lib.train_step, label_smoothing=label_smoothing, frozen_stats=frozen_stats,
                               axis_name=self.axis_name, pmean_stats=not self.sync_bn)
        return self.wrap(fn, donate=True)

    def eval_step(self, apply_fn: Callable) -> Callable[[Any, Any], dict]:
        """Compiled ``(variables, batch) -> sums`` (see ``step.eval_step``); replicated outputs."""
        return self.wrap(functools.partial(step_lib.eval_step, apply_fn=apply_fn, axis_name=self.axis_name),
                         donate=False)

    def wrap(self, fn: Callable, donate: bool, replicated: int = 1) -> Callable:
        """``fn(*replicated_args, batch)`` compiled in this layout: the first ``replicated`` arguments are
        replicated (a state, variables), the last one is the batch, split along ``"data"``."""
        donate_argnums = (0,) if donate else ()
        if self.axis_name is None:
            return jax.jit(fn, donate_argnums=donate_argnums)
        if self.kind == "pmap":
            return jax.pmap(fn, axis_name=AXIS, devices=list(self.mesh.devices.flat), donate_argnums=donate_argnums)
        # check_vma=False: pmap's semantics (no implicit psum of the gradients of replicated params;
        # the step averages them itself). With vma checking on, JAX would already sum them.
        mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(*(P(),) * replicated, P(AXIS)), out_specs=P(),
                               check_vma=False)
        return jax.jit(mapped, donate_argnums=donate_argnums)
