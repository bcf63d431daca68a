"""Where a sweep's stack lives on the devices, and how its steps are compiled there."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tl_jax.parallel import DataParallel

MEMBERS = "members"     # mesh axis when the member axis is sharded over devices


class Layout:
    """Where the stack lives: like one run's state under ``DataParallel`` (member axis replicated,
    batch split), or with the member axis split over the devices and the batch replicated."""

    def __init__(self, dp: DataParallel, shard_members: bool, k: int):
        self.dp, self.shard = dp, shard_members
        if shard_members:
            devices = list(dp.mesh.devices.flat) if dp.kind != "none" else jax.devices()
            if k % len(devices):
                raise ValueError(f"{k} members do not split over {len(devices)} devices; use a multiple of "
                                 f"{len(devices)} members, or split the batch instead")
            self.mesh = Mesh(np.asarray(devices), (MEMBERS,))

    @property
    def axis_name(self) -> str | None:
        return None if self.shard else self.dp.axis_name

    def put_state(self, tree: Any) -> Any:
        if self.shard:
            return jax.device_put(jax.tree.map(np.asarray, tree), NamedSharding(self.mesh, P(MEMBERS)))
        return self.dp.put_state(tree)

    def put_shared(self, tree: Any) -> Any:
        if self.shard:
            return jax.device_put(jax.tree.map(np.asarray, tree), NamedSharding(self.mesh, P()))
        return self.dp.put_state(tree)

    def put_batch(self, batch: Mapping[str, np.ndarray]) -> Any:
        if self.shard:
            return jax.device_put({k: np.asarray(v) for k, v in batch.items()}, NamedSharding(self.mesh, P()))
        return self.dp.put_batch(dict(batch))

    def get(self, tree: Any) -> Any:
        return tree if self.shard else self.dp.get(tree)

    def global_batch_size(self, batch: Any) -> int:
        return int(batch["label"].shape[0]) if self.shard else self.dp.global_batch_size(batch)

    def state_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(MEMBERS)) if self.shard else self.dp.state_sharding()

    def wrap(self, fn: Callable, n_state: int, donate: bool) -> Callable:
        """Compile ``fn(*state_args, shared, batch)``; ``n_state`` leading arguments carry the member axis."""
        if not self.shard:     # like one run's state: the data-parallel wrapper of tl_jax.parallel
            return self.dp.wrap(fn, donate, replicated=n_state + 1)
        specs = (*(P(MEMBERS),) * n_state, P(), P())
        return jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=specs, out_specs=P(MEMBERS), check_vma=False),
                       donate_argnums=(0,) if donate else ())
