"""Test-session setup shared by every test file."""
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

try:
    # torchvision (through triton) segfaults when imported after TensorFlow in one process: load it first.
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError:  # the torch extra is optional
    pass


@pytest.fixture(scope="module")
def photos():
    """Two real photos (scikit-image's astronaut and cat) for the parity tests."""
    data = pytest.importorskip("skimage.data")
    return [data.astronaut(), data.chelsea()]
