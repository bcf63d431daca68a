"""The core and the benchmark import without TensorFlow, tfds or ml_collections (the GPU machine has none)."""
import subprocess
import sys

CORE = ["tl_jax", "tl_jax.tree", "tl_jax.models", "tl_jax.weights.convert", "tl_jax.weights.keras",
        "tl_jax.weights.store", "tl_jax.weights.importer", "tl_jax.weights.timm", "tl_jax.weights.hf",
        "tl_jax.weights.tensors", "tl_jax.weights.fetch", "tl_jax.preprocess", "tl_jax.freeze", "tl_jax.optim",
        "tl_jax.step", "tl_jax.parallel", "tl_jax.checkpoint", "tl_jax.loop", "tl_jax.data",
        # what the GPU benchmark imports (that machine has no TensorFlow, tfds or ml_collections)
        "tl_jax.experiment.cli", "tl_jax.bench.step_speed", "tl_jax.bench.torch_peer"]


def test_core_imports_without_tensorflow():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'ml_collections'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"for m in {CORE!r}: __import__(m)\n"
            "import tl_jax.models as M\n"
            "for arch, source in M.available(): M.model_config(arch, source)\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
