"""Test-session setup shared by every test file."""
import gc
import os
import tempfile

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
# One persistent XLA compilation cache for the session, shared by both pytest-xdist workers and every
# subprocess the tests start: many tests compile the same small programs (ResNet-18 steps at 8 or 32 px).
# A fresh directory per test run, so nothing carries over between runs.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"tl_jax_tests_xla_{_run}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# One OpenMP / MKL thread for torch's references (here and in every subprocess): pytest-xdist already runs one
# worker per core, and torch's threads, sized to the core count, spin-wait on the other worker's core (measured
# on the 2-core machine: the four parity files took 221-223 s with one thread, 236-241 s without).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Python's cyclic garbage collector, at its default thresholds (700, 10, 10), runs a young collection every 700
# net allocations, and tracing a model allocates millions: over test_fold.py and test_stages.py it ran 4,418
# times and walked the whole heap 19 times (5 s of GC, 115-117 s in all). One young collection per 20,000
# allocations still frees short-lived cycles within a test; over those files: 78 young collections, one of the
# whole heap (1 s of GC, 109 s in all).
gc.set_threshold(20_000, 10, 10)

try:
    # torchvision (through triton) segfaults when imported after TensorFlow in one process: load it first.
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError:  # the torch extra is optional
    pass


# The longest files first, by their summed test seconds in a --durations=0 run on the 2-core machine: pytest-xdist's
# loadfile hands out one file at a time in collection order (with --no-loadscope-reorder), so a long file collected
# last would keep one worker busy while the other idles; the rest keep their collection order.
LONGEST_FIRST = ("test_reliability.py", "test_sweep.py", "test_fold.py", "test_parity_hub.py", "test_parity_vgg.py",
                 "test_readme.py", "test_step.py", "test_export.py", "test_cli.py", "test_parity_keras3.py",
                 "test_parity_resnet.py", "test_transfer_study.py", "test_stages.py", "test_activations.py",
                 "test_fuzz_weights.py", "test_parity_inception.py", "test_export_keras.py", "test_resume.py",
                 "test_quickstart.py", "test_benchmark.py", "test_weight_sources.py", "test_parallel.py",
                 "test_multiprocess.py", "test_ablation.py", "test_convert_cli.py", "test_workflow.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: same order within a file


def pytest_unconfigure(config):
    """pytest's unraisable-exception plugin collects garbage five times as the session ends, over a heap that holds
    every program and model a worker compiled (about 6 s a worker here, the last seconds of the run). Frozen
    first, the heap is left out of those collections, which then look at what the session's end frees; unraisable
    exceptions during the tests are still reported, test by test."""
    gc.freeze()


@pytest.fixture(scope="module")
def photos():
    """Two real photos (scikit-image's astronaut and cat) for the parity tests."""
    data = pytest.importorskip("skimage.data")
    return [data.astronaut(), data.chelsea()]
