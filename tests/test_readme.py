"""The README stays true: each of its commands and Python examples runs, or names the test that covers it.

Commands run as written, from a scratch directory holding what a user would have made first (the weights
the README's convert command writes, photos, an image folder), with three kinds of additions, all listed
in RULES: a local ``--input`` file for a download, flags that shrink a run to two steps at 32 px, and
``tfds.testing.mock_data`` standing in for prepared TFDS datasets. They run one after another in one
process (``tests/readme_runner.py``) so that TensorFlow and JAX start once.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image

import references as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.data.image_size=32", "--config.batch_size=4", "--config.eval_batch_size=4",
        "--config.num_steps=2", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
        "--config.eval_every_epochs=0", "--config.model.dtype=float32"]
# (pattern, ("run", extra arguments) or ("covered", where, why)). Every README command matches one rule.
RULES = [
    (r"^pip install", ("covered", ".ci/run", "CI installs from scratch")),
    (r"^python -m pytest -q$", ("covered", ".ci/run", "the test command itself")),
    (r"^python scripts/quickstart\.py", ("covered", "tests/test_quickstart.py", "5 minutes; run at toy size there")),
    (r"^python scripts/convert_weights\.py --arch resnet50 --source torchvision --output weights/resnet50_tv$",
     ("run", ["--input", "resnet50.pth"])),
    (r"^python scripts/convert_weights\.py --arch (vgg16|inception_v3) --source keras --(output|input inception)",
     ("covered", "tests/test_parity_vgg.py, tests/test_parity_inception.py", "Keras files of 100-530 MB")),
    (r"^python scripts/convert_weights\.py --arch resnet50 --source (torchvision --weights IMAGENET1K_V2|timm)",
     ("covered", "tests/test_weight_sources.py, tests/test_parity_hub.py", "downloads; found in a planted cache there")),
    (r"^python scripts/convert_weights\.py --arch resnet50 --source hf --input",
     ("covered", "tests/test_parity_hub.py", "a transformers save_pretrained directory, built there")),
    (r"^python scripts/convert_weights\.py --arch vgg16 --source keras --input my_model\.keras --backbone_only",
     ("covered", "tests/test_parity_keras3.py", "a user's Keras 3 model, built there")),
    (r"^python scripts/evaluate\.py --weights weights/resnet50_tv --source tfds:imagenet2012",
     ("covered", "tests/test_weight_sources.py", "ImageNet; mocked there, metrics checked against the model")),
    (r"^python scripts/train\.py --config configs/resnet50_tf_flowers\.py", ("run", TINY)),
    (r"^python scripts/train\.py \.\.\. --coordinator_address",
     ("covered", "tests/test_multiprocess.py", "two hosts")),
    (r"^python scripts/(evaluate|predict)\.py --workdir runs/flowers", ("run", [])),
    (r"^python scripts/ablate_frozen_depth\.py", ("covered", "tests/test_ablation.py, tests/test_quickstart.py",
                                                  "18 runs; the same ablation code runs there")),
    (r"^python scripts/probe_stages\.py --weights weights/resnet50_tv", ("run", ["--image_size", "32"])),
    (r"^python scripts/sweep\.py --config configs/resnet50_tf_flowers\.py", ("covered", "tests/test_sweep.py",
                                                                          "12 members; the same sweep code runs there")),
    (r"^bash benchmarks/gpu\.sh", ("covered", "tests/test_benchmark.py", "needs a GPU; its script runs there")),
    (r"^python scripts/transfer_study\.py --study (yosinski|surgical)",
     ("covered", "tests/test_transfer_study.py", "20 and 10 minutes; shrunken versions run there")),
    (r"^python scripts/benchmark_cache\.py", ("covered", "tests/test_activations.py", "minutes; at toy size there")),
    (r"^python scripts/export_weights\.py --workdir runs/flowers --to (torchvision|safetensors)", ("run", [])),
    (r"^python scripts/export_weights\.py --workdir runs/cats_vs_dogs .*--to keras",
     ("covered", "tests/test_export_keras.py", "a Keras VGG-16 run; Keras exports are loaded back there")),
]


def readme() -> str:
    return open(os.path.join(ROOT, "README.md")).read()


def commands() -> list[str]:
    """Every command line of the README's bash blocks (continuations joined, comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", readme(), re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" # ")[0].split("   #")[0].strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme(), re.S)


def rule(command: str) -> tuple:
    matches = [action for pattern, action in RULES if re.search(pattern, command)]
    assert len(matches) == 1, f"README command without exactly one rule in tests/test_readme.py: {command}"
    return matches[0]


def test_every_readme_command_is_run_or_covered():
    cmds = commands()
    assert any("quickstart.py" in c for c in cmds) and len(cmds) >= 12
    for c in cmds:
        action = rule(c)
        if action[0] == "covered":
            for path in action[1].split(", "):
                assert os.path.exists(os.path.join(ROOT, path.split("::")[0])), path


def _workspace(tmp_path) -> None:
    """What a user has before following the README: a torchvision file, photos, an image folder."""
    R.torchvision_reference("resnet50", str(tmp_path / "resnet50.pth"), seed=0)
    rng = np.random.RandomState(0)
    for name in ("photo1.jpg", "photo2.png"):
        Image.fromarray(rng.randint(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / name)
    for c in ("daisy", "dandelion", "roses", "sunflowers", "tulips"):
        (tmp_path / "my_images" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.randint(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "my_images" / c / f"{i}.jpg", quality=90)
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")


def test_readme_commands_and_examples_run(tmp_path):
    _workspace(tmp_path)
    plan = []
    for c in commands():
        action = rule(c)
        if action[0] != "run":
            continue
        argv = shlex.split(c.replace("/data/my_images", "my_images"))
        plan.append({"command": c, "script": os.path.join(ROOT, argv[1]), "args": argv[2:] + list(action[1])})
    plan.append({"python": python_examples()})
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "readme_runner.py"), str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print("\n" + proc.stdout)
    results = json.loads((tmp_path / "results.json").read_text())
    for r in results:
        assert r["exit_code"] == 0, f"README command failed: {r['command']}\n{r['output'][-3000:]}"
    assert len(results) == len(plan)
    # What the commands claim to write, they wrote.
    assert json.loads((tmp_path / "eval.json").read_text())["split"] == "train[90%:]"
    for run in ("flowers", "flowers_depth2", "mine"):
        assert (tmp_path / "runs" / run / "result.json").exists(), run
    assert (tmp_path / "runs" / "probe" / "probe.json").exists()
    for name in ("flowers.pth", "flowers.pth.json", "flowers.safetensors", "flowers.safetensors.json"):
        assert (tmp_path / "exported" / name).exists(), name
