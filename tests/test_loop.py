"""``loop.fit`` reuses compiled programs across runs only when nothing that shapes the computation differs."""
from __future__ import annotations

import numpy as np

from tl_jax import loop
from tl_jax.experiment.probe import HeadOnly
from tl_jax.freeze import FreezeSpec
from tl_jax.optim import OptimConfig
from tl_jax.tree import flat


def _setup(lr: float, seed: int = 0) -> loop.Setup:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 6)).astype(np.float32), rng.integers(0, 3, 32).astype(np.int32)

    def batches(start):
        for i in range(start, 100):
            rows = np.arange(8) + 8 * (i % 4)
            yield {"image": x[rows], "label": y[rows]}

    head = {"kernel": np.zeros((6, 3), np.float32), "bias": np.zeros(3, np.float32)}
    return loop.Setup(model=HeadOnly(3), variables={"params": {"head": head}}, freeze=FreezeSpec(("head",), 0),
                      optim=OptimConfig(name="sgd", learning_rate=lr), num_steps=5, train_data=batches, seed=seed)


def test_programs_are_shared_exactly_when_the_computation_is_the_same():
    loop._RECENT.clear()
    a = loop.fit(_setup(0.1), log=lambda r: None)
    assert len(loop._RECENT) == 1
    again = loop.fit(_setup(0.1, seed=1), log=lambda r: None)         # another seed: same program
    assert len(loop._RECENT) == 1
    other = loop.fit(_setup(0.2), log=lambda r: None)                 # another learning rate: its own program
    assert len(loop._RECENT) == 2
    reused = loop.fit(_setup(0.2), log=lambda r: None)                # served from the cache
    assert len(loop._RECENT) == 2
    loop._RECENT.clear()
    fresh = loop.fit(_setup(0.2), log=lambda r: None)                 # built again from nothing
    fa, fo, fg = flat(a.state.params), flat(other.state.params), flat(again.state.params)
    fr, ff = flat(reused.state.params), flat(fresh.state.params)
    for k in fa:
        np.testing.assert_array_equal(fg[k], fa[k])                   # HeadOnly has no randomness: seeds agree
        assert not np.allclose(fo[k], fa[k])                          # the learning rate was not shared
        np.testing.assert_array_equal(fr[k], ff[k])
        np.testing.assert_array_equal(fo[k], ff[k])
