"""K members: hyperparameter variants of one run, trained side by side in one compiled step (a sweep).

What is shared and what is not. The frozen prefix (stages ``[0, d)``, ``d`` = the frozen depth)
is the same for every member: its parameters and BatchNorm statistics are held once and every
batch goes through it once. The trainable suffix, its BatchNorm statistics, its optimizer state,
its rng and step carry a leading member axis of size K, and so do the per-member hyperparameters
(:data:`HYPER`), which reach the step as arrays: one compiled program serves every value.

The model is split at the stage boundary by the ports themselves: the prefix runs with
``stop_at`` (the first suffix stage), each member runs the model entered there (``input_stage``).
Everything from the stage boundary on, pooling and dropout included, runs per member with that
member's rng, exactly as in a single run: the member step *is* ``tl_jax.step.train_step``, mapped
over the member axis, and ``tl_jax.loop.fit`` trains the stack as it trains one run.

Modules: ``state`` (members, the stacked state, the result), ``trainee`` (the step over members and
the ``loop.Trainee``), ``layout`` (devices and compilation).

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
whose loss stops being finite is dropped (the loop's policy, the same for one run): the others go on.
"""
from tl_jax.members.layout import MEMBERS, Layout
from tl_jax.members.state import BATCHINGS, HYPER, Member, Sweep, SweepResult, SweepState, merge, split
from tl_jax.members.trainee import Plan, SweepRun, eval_step, fit, train_step

__all__ = ["BATCHINGS", "HYPER", "Layout", "MEMBERS", "Member", "Plan", "Sweep", "SweepResult", "SweepRun",
           "SweepState", "eval_step", "fit", "merge", "split", "train_step"]
