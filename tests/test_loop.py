"""``loop.fit`` reuses compiled programs across runs only when nothing that shapes the computation differs."""
from __future__ import annotations

import numpy as np

from tl_jax import loop, models
from tl_jax.freeze import FreezeSpec
from tl_jax.optim import OptimConfig
from tl_jax.tree import flat


def _setup(lr: float, seed: int = 0) -> loop.Setup:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 512)).astype(np.float32), rng.integers(0, 3, 32).astype(np.int32)

    def batches(start):
        for i in range(start, 100):
            rows = np.arange(8) + 8 * (i % 4)
            yield {"image": x[rows], "label": y[rows]}

    head = {"kernel": np.zeros((512, 3), np.float32), "bias": np.zeros(3, np.float32)}
    model = models.create("resnet18", num_classes=3).clone(input_stage="head")    # its head alone, on features
    return loop.Setup(model=model, variables={"params": {"head": head}}, freeze=FreezeSpec(model.stage_names, 0),
                      optim=OptimConfig(name="sgd", learning_rate=lr), num_steps=5, train_data=batches, seed=seed)


def test_programs_are_shared_exactly_when_the_computation_is_the_same():
    loop.forget_programs()
    a = loop.fit(_setup(0.1), log=lambda r: None)
    assert loop.kept_programs() == 1
    again = loop.fit(_setup(0.1, seed=1), log=lambda r: None)         # another seed: same program
    assert loop.kept_programs() == 1
    other = loop.fit(_setup(0.2), log=lambda r: None)                 # another learning rate: its own program
    assert loop.kept_programs() == 2
    reused = loop.fit(_setup(0.2), log=lambda r: None)                # served from the cache
    assert loop.kept_programs() == 2
    loop.forget_programs()
    fresh = loop.fit(_setup(0.2), log=lambda r: None)                 # built again from nothing
    fa, fo, fg = flat(a.state.params), flat(other.state.params), flat(again.state.params)
    fr, ff = flat(reused.state.params), flat(fresh.state.params)
    for k in fa:
        np.testing.assert_array_equal(fg[k], fa[k])                   # the head has no randomness: seeds agree
        assert not np.allclose(fo[k], fa[k])                          # the learning rate was not shared
        np.testing.assert_array_equal(fr[k], ff[k])
        np.testing.assert_array_equal(fo[k], ff[k])
