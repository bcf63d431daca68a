"""The scripts' contract, run as a user runs them: one-line errors, exit codes, progress off a terminal.

Exit codes: 0 done, 1 failed, 2 bad command line, 130 interrupted. Every error is one line on
stderr, ``<script>: error: ...``, with no traceback. Each subprocess pays the imports (a few
seconds), so related checks share a run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.py")
# ResNet-18 on 8x8 digits: the cheapest real run.
DIGITS = {"data.source": "digits", "data.train_split": "train[:25%]", "data.eval_split": "test[:20%]",
          "data.image_size": 8, "data.resize_size": 8, "data.min_crop_area": 1.0, "model.arch": "resnet18",
          "model.dtype": "float32", "batch_size": 16, "num_steps": 4, "log_every_steps": 2,
          "checkpoint_every_steps": 2, "freeze.frozen_depth": 4, "parallel": "none", "tensorboard": False}


def flags(overrides: dict) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def script(name: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, lines
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_train_then_evaluate_and_predict_from_the_command_line(tmp_path):
    work = str(tmp_path / "run")
    proc = script("train.py", "--config", DEFAULT, "--workdir", work, *flags(DIGITS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Off a terminal (no progress bar) every train log is a line, and the last line rounds its scores.
    assert "step 2/4: loss" in proc.stdout and "step 4/4: loss" in proc.stdout
    final = proc.stdout.strip().splitlines()[-1]
    assert final.startswith(f"finished {work}: final eval top-1 ") and "img/s" in final and "n/a" not in final
    result = json.load(open(os.path.join(work, "result.json")))
    assert result["images_per_s"] > 0 and result["frozen_depth"] == 4

    # evaluate: a split the source does not have is one line that names the ones it has.
    proc = script("evaluate.py", "--workdir", work, "--split", "validation")
    assert_one_line_error(proc, 1, "digits has splits ['all', 'test', 'train'], not 'validation'")

    # predict: the readable image is classified, the truncated one named; exit code 1.
    good, bad = str(tmp_path / "seven.png"), str(tmp_path / "broken.jpg")
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (8, 8, 3), dtype=np.uint8)).save(good)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(bad, quality=90)
    open(bad, "wb").write(open(bad, "rb").read()[:300])
    proc = script("predict.py", "--workdir", work, "--top_k", "2", good, bad)
    assert f"{good}: " in proc.stdout and f"{bad}: error: cannot read image" in proc.stdout
    assert_one_line_error(proc, 1, "1 of 2 image(s) could not be read", bad)


def test_usage_errors_exit_2_with_one_line_and_help_exits_0(tmp_path):
    work = tmp_path / "run"
    proc = script("train.py", "--config", DEFAULT, "--workdir", str(work), "--config.frozen_depth=2")
    assert_one_line_error(proc, 2, "no field 'frozen_depth'; did you mean freeze.frozen_depth?")
    proc = script("train.py", "--config", DEFAULT, "--workdir", str(work), *flags({**DIGITS, "freeze.frozen_depth": 9}))
    assert_one_line_error(proc, 2, "frozen_depth=9 out of range")
    assert not work.exists()      # nothing written for a config that cannot run
    proc = script("ablate_frozen_depth.py", "--help")
    assert proc.returncode == 0 and "Frozen-depth ablation" in proc.stdout and "--depths" in proc.stdout


def test_interrupt_exits_130_and_a_second_run_on_the_same_workdir_is_refused(tmp_path):
    work = str(tmp_path / "run")
    args = ["--config", DEFAULT, "--workdir", work, *flags({**DIGITS, "num_steps": 100000, "log_every_steps": 1,
                                                              "checkpoint_every_steps": 5})]
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "train.py"), *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not os.path.isdir(os.path.join(work, "checkpoints", "5")):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline, "the first run made no checkpoint"
            time.sleep(0.2)
        start = time.time()
        second = script("train.py", *args)
        assert_one_line_error(second, 1, f"{work} is in use by another run", f"pid {first.pid}")
        assert time.time() - start < 60
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted at step" in err and "run the same command to resume" in err
    assert not os.path.exists(os.path.join(work, ".lock"))


def test_unreadable_image_in_a_folder_fails_before_training_with_the_config_hint(tmp_path):
    root = tmp_path / "images"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(root / c / f"{i}.jpg", quality=90)
    jpeg = (root / "dog" / "0.jpg").read_bytes()
    (root / "dog" / "0.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    proc = script("train.py", "--config", DEFAULT, "--workdir", str(tmp_path / "run"),
                  *flags({**DIGITS, "data.source": f"folder:{root}", "data.train_split": "train",
                          "data.eval_split": "", "batch_size": 2}))
    assert_one_line_error(proc, 1, "1 unreadable image(s)", "dog/0.jpg", "--config.data.skip_corrupt=True")
    assert "oneDNN" not in proc.stderr and "Corrupt JPEG" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["shard_map", "pmap"])
def test_train_on_four_cpu_devices(tmp_path, kind):
    work = str(tmp_path / kind)
    proc = script("train.py", "--config", DEFAULT, "--workdir", work, *flags({**DIGITS, "parallel": kind}),
                  env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    assert next(r for r in records if r.get("event") == "start")["devices"] == 4
    result = json.load(open(os.path.join(work, "result.json")))
    assert result["final_eval"]["count"] == 72 and result["images_per_s"] > 0
