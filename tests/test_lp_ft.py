"""LP-FT (Kumar et al., ICLR 2022) as a freezing schedule: phase 1 IS a head-only run, phase 2 starts from it.

The reference for phase 1 is an ordinary head-only run of N steps with the same learning rate,
trained through the same ``loop.fit`` (not numbers of our own). Resume across the boundary after
SIGKILL is tested in ``tests/test_resume.py``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine_worker import random_variables
from tl_jax import loop, models
from tl_jax.checkpoint import Checkpointer
from tl_jax.freeze import FreezeSpec
from tl_jax.optim import OptimConfig
from tl_jax.tree import flat

N, TOTAL, SIZE = 4, 7, 32


@pytest.fixture(scope="module")
def base():
    model = models.create("resnet18", "torchvision", num_classes=5)
    variables = random_variables(model, SIZE, seed=2, calibrate=True)
    r = np.random.RandomState(0)
    images, labels = r.randn(24, SIZE, SIZE, 3).astype(np.float32), r.randint(0, 5, 24).astype(np.int32)

    def data(start):
        for i in range(start, 1000):
            rows = np.arange(8) + 8 * (i % 3)
            yield {"image": images[rows], "label": labels[rows]}
    spec = FreezeSpec(model.stage_names, schedule=((0, -1), (N, 0)), schedule_learning_rates=(1e-2, 1e-3))
    return loop.Setup(model=model, variables=variables, freeze=spec, num_steps=TOTAL, train_data=data,
                      optim=OptimConfig(name="adamw", learning_rate=1.0, weight_decay=1e-4, schedule="cosine"))


def test_phase_one_is_a_head_only_run_and_phase_two_starts_from_it(base, tmp_path):
    head_only = dataclasses.replace(base, freeze=FreezeSpec(base.model.stage_names, -1), num_steps=N,
                                    optim=dataclasses.replace(base.optim, learning_rate=1e-2))
    ref = loop.fit(head_only, log=lambda r: None)
    records = []
    cadence = loop.Cadence(log_every=1, checkpoint_every=1, keep_checkpoints=TOTAL)
    res = loop.fit(dataclasses.replace(base, cadence=cadence), str(tmp_path), log=records.append)
    with Checkpointer(tmp_path / "checkpoints", keep=TOTAL) as ckpt:
        _, items, meta = ckpt.restore({"params": base.variables["params"]}, step=N)
    assert meta["phase"] == 0 and meta["frozen_stages"] == list(base.model.stage_names[:-1])
    boundary, want = flat(items["params"]), flat(ref.state.params)
    for k, v in want.items():
        np.testing.assert_allclose(boundary[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    init, final = flat(base.variables["params"]), flat(res.state.params)
    assert any(not np.array_equal(boundary[k], init[k]) for k in boundary if k.startswith("head/"))
    assert all(np.array_equal(boundary[k], init[k]) for k in boundary if not k.startswith("head/"))
    for stage in base.model.stage_names:      # phase 2 trains every stage
        assert any(not np.array_equal(final[k], boundary[k]) for k in final if k.startswith(stage + "/")), stage
    # The learning rate restarts at the phase's peak; each phase is a cosine over its own steps.
    lrs = {r["step"]: r["lr"] for r in records if r.get("split") == "train"}
    assert lrs[1] == pytest.approx(1e-2) and lrs[N + 1] == pytest.approx(1e-3)
    assert lrs[N] < 1e-2 and lrs[TOTAL] < 1e-3
    assert [r["phase"] for r in records if r.get("event") == "phase"] == [1]


def test_optimizer_state_of_the_head_carries_into_phase_two(base):
    run = loop.Run(base)
    assert run.program(N - 1).phase == 0 and run.program(N).phase == 1
    res = loop.fit(dataclasses.replace(base, num_steps=N), log=lambda r: None)
    moved = run.repartition(res.state, run.program(N))
    adam = lambda s: s.opt_state.inner_states["trainable"].inner_state[0]  # noqa: E731
    np.testing.assert_array_equal(adam(moved).mu["head"]["kernel"], adam(res.state).mu["head"]["kernel"])
    assert float(np.abs(adam(moved).mu["head"]["kernel"]).sum()) > 0
    assert float(np.abs(adam(moved).mu["layer1"]["block0"]["conv1"]["kernel"]).sum()) == 0   # newly trainable
    assert int(adam(moved).count) == N
