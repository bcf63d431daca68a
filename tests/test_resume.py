"""Checkpoints: resume after SIGKILL is exact; keep-last-N plus best; damaged steps skipped; NaN guard."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.checkpoint import Checkpointer

WORKER = os.path.join(os.path.dirname(__file__), "engine_worker.py")
# LP-FT (the head alone for 5 steps at 1e-2, then everything at 1e-3, each phase its own schedule) so the
# resume crosses a change of frozen stages, optimizer partition and learning-rate schedule.
ARGS = ["fit", "--steps", "10", "--lp-ft-steps", "5", "--phase-lrs", "1e-2,1e-3", "--optim", "adamw",
        "--checkpoint-every", "2", "--eval-every", "4"]


def _env():
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    # The uninterrupted run first: the victim and the resumed run then load its programs from the session's
    # XLA cache instead of compiling them again at the same time (half of each run's CPU time).
    ref = subprocess.run([sys.executable, WORKER, *ARGS, "--out", str(tmp_path / "ref.npz"),
                          "--workdir", str(tmp_path / "ref")], env=_env(), capture_output=True, text=True, timeout=400)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    assert '"event": "phase"' in ref.stdout
    killed_dir = tmp_path / "killed" / "checkpoints"
    victim = subprocess.Popen([sys.executable, WORKER, *ARGS, "--out", str(tmp_path / "unused.npz"), "--sleep", "0.4",
                               "--workdir", str(tmp_path / "killed")], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (killed_dir / "6").exists():      # a committed step after the phase boundary
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
        assert not (tmp_path / "unused.npz").exists()
    finally:
        if victim.poll() is None:
            victim.kill()
    resumed = subprocess.run([sys.executable, WORKER, *ARGS, "--out", str(tmp_path / "resumed.npz"),
                              "--workdir", str(tmp_path / "killed")], env=_env(), capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"event": "resumed"' in resumed.stdout
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "resumed.npz")
    assert int(a["start_step"]) == 0 and int(b["start_step"]) >= 6
    # The head trained first, then every stage.
    assert all(a[f"moved:{s}"] for s in ("stem", "layer1", "layer2", "layer3", "layer4", "head"))
    err = max(float(np.abs(a[k] - b[k]).max()) for k in a.files if k.startswith(("params:", "batch_stats:")))
    print(f"\nresumed from step {int(b['start_step'])}: max |difference| to the uninterrupted run = {err:.2e}")
    assert err <= 1e-6


def _tree(v: float):
    return {"params": {"w": jnp.full((3,), float(v), jnp.float32)}, "batch_stats": {},
            "progress": {"step": jnp.asarray(0), "rng": jax.random.PRNGKey(0)}}


def test_keeps_last_n_plus_best(tmp_path):
    top1 = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.4, 6: 0.5}
    with Checkpointer(tmp_path, keep=2, best_metric="top1") as ckpt:
        for step, acc in top1.items():
            ckpt.save(step, _tree(step), {"data_position": step}, metrics={"top1": acc})
        ckpt.save(7, _tree(7), {"data_position": 7})     # no eval at this step
    with Checkpointer(tmp_path, keep=2, best_metric="top1") as ckpt:
        assert ckpt.all_steps() == [2, 6, 7]
        assert ckpt.best_step() == 2
        step, items, meta = ckpt.restore(_tree(0))
        assert step == 7 and meta["data_position"] == 7
        np.testing.assert_array_equal(items["params"]["w"], 7.0)


def test_incomplete_and_unreadable_checkpoints_are_skipped(tmp_path):
    with Checkpointer(tmp_path, keep=5, best_metric=None) as ckpt:
        for step in (2, 4, 6):
            ckpt.save(step, _tree(step), {"data_position": step})
    # A save killed midway leaves only orbax's temporary folder: not a step.
    (tmp_path / "8.orbax-checkpoint-tmp-1234567").mkdir()
    # A listed step whose array data is gone.
    for root, _, files in os.walk(tmp_path / "6" / "params"):
        for f in files:
            os.remove(os.path.join(root, f))
    with Checkpointer(tmp_path, keep=5, best_metric=None) as ckpt:
        with pytest.warns(UserWarning, match="step 6 .* unreadable"):
            step, items, meta = ckpt.restore(_tree(0))
        assert step == 4 and meta["data_position"] == 4
        np.testing.assert_array_equal(items["params"]["w"], 4.0)
        ckpt.save(6, _tree(6.5), {"data_position": 6})  # the damaged step 6 is set aside first
    assert (tmp_path / "6.unreadable").exists()
    with Checkpointer(tmp_path, keep=5, best_metric=None) as ckpt:
        step, items, _ = ckpt.restore(_tree(0))
        assert step == 6 and float(items["params"]["w"][0]) == 6.5
        # Nothing readable (here: an incompatible target) is an error, not a silent fresh start.
        with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="could be restored"):
            ckpt.restore({**_tree(0), "params": {"w": jnp.zeros((3,)), "extra": jnp.zeros(())}})


def test_items_restore_alone_and_the_format_is_checked(tmp_path):
    """Evaluation reads params alone; a checkpoint of another layout is refused by name."""
    import orbax.checkpoint as ocp

    with Checkpointer(tmp_path, keep=5, best_metric=None) as ckpt:
        ckpt.save(1, {**_tree(1.5), "opt_state": {"mu": jnp.ones(3)}}, {"data_position": 1})
    with Checkpointer(tmp_path, keep=5, best_metric=None) as ckpt:
        step, items, meta = ckpt.restore({"params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}})
        assert step == 1 and set(items) == {"params"} and float(items["params"]["w"][0]) == 1.5
        assert meta["items"] == ["opt_state", "params", "progress"]   # batch_stats was empty: not written
        # A format-1 checkpoint (one "state" item, no format field in meta).
        ckpt.manager.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": jnp.ones(3)}),
                                                     meta=ocp.args.JsonSave({"data_position": 2})))
        ckpt.wait()
        with pytest.raises(ValueError, match="has format 1, this tl_jax reads format 2"):
            ckpt.restore({"params": {"w": jnp.zeros(3)}})


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from engine_worker import random_variables
    from tl_jax import models
    from tl_jax.freeze import FreezeSpec
    from tl_jax.loop import Cadence, Setup, fit
    from tl_jax.optim import OptimConfig

    model = models.create("resnet18", "torchvision", num_classes=10)
    variables = random_variables(model, 32)
    r = np.random.RandomState(0)

    def data(start):
        for i in range(start, 100):
            image = r.randn(4, 32, 32, 3).astype(np.float32)
            if i == 4:
                image[0, 0, 0, 0] = np.nan                  # the 5th batch poisons the 5th step
            yield {"image": image, "label": np.arange(4, dtype=np.int32)}

    records = []
    setup = Setup(model=model, variables=variables, freeze=FreezeSpec(model.stage_names, -1),
                  optim=OptimConfig(learning_rate=0.01), num_steps=20, train_data=data,
                  cadence=Cadence(log_every=10, checkpoint_every=2))
    with pytest.raises(FloatingPointError, match="at step 5"):
        fit(setup, str(tmp_path), log=records.append)
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [2, 4]
        step, items, _ = ckpt.restore({"params": variables["params"]})     # the parameters alone
    assert step == 4 and all(np.isfinite(x).all() for x in jax.tree.leaves(items["params"]))
    assert set(items) == {"params"}
    assert records[0]["event"] == "start"
