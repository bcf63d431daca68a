"""Sweeps: K hyperparameter variants of one run, trained side by side in one compiled step.

What is shared and what is not. The frozen prefix (stages ``[0, d)``, ``d`` = the frozen depth)
is the same for every member: its parameters and BatchNorm statistics are held once and every
batch goes through it once. The trainable suffix, its BatchNorm statistics, its optimizer state,
its rng and step carry a leading member axis of size K, and so do the per-member hyperparameters
(:data:`HYPER`), which reach the step as arrays: one compiled program serves every value.

Splitting the model needs no model API: a Flax method interceptor (:mod:`tl_jax.sweep.split`).
Everything from the stage boundary on, pooling and dropout included, runs per member with that
member's rng, exactly as in a single run.

Modules: ``state`` (members, the stacked state, the result), ``split`` (prefix and suffix),
``step`` (the pure steps), ``layout`` (devices and compilation), ``fit`` (the loop).

Members run vmapped (``batching="vmap"``, the default: one batched computation) or as a loop
unrolled in the program (``"loop"``), which repeats a single run's float32 operations in the same
order. Both compute the same function: with float64 arithmetic every vmapped member equals its
separate run to float32 storage precision. In float32 a vmapped convolution over K members sums in
another order than K separate ones, and training amplifies those last-bit differences as it
amplifies any perturbation; the loop reproduces a ``train.py`` run to the last bits on CPU, at
about the cost of the sequential runs it replaces.

Equal to separate runs: each member's updates are those of ``loop.fit`` with its values (same
batches, same rng, same optax chain; a member whose weight decay or momentum is 0 adds ``0 * x``
inside a chain that has the part). Every member sees the same batches in the same order. A member
whose loss stops being finite does not stop the others: its numbers are reported as they are.
"""
from tl_jax.sweep.fit import evaluate, fit, initial, state_items
from tl_jax.sweep.layout import MEMBERS, Layout
from tl_jax.sweep.split import merge, prefix_apply, split, suffix_apply
from tl_jax.sweep.state import BATCHINGS, HYPER, Member, Sweep, SweepResult, SweepState
from tl_jax.sweep.step import eval_step, train_step

__all__ = ["BATCHINGS", "HYPER", "Layout", "MEMBERS", "Member", "Sweep", "SweepResult", "SweepState", "eval_step", "evaluate",
           "fit", "initial", "merge", "prefix_apply", "split", "state_items", "suffix_apply", "train_step"]
