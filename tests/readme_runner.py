"""Run a plan of README commands and Python examples in this one process (tests/test_readme.py writes it).

  python tests/readme_runner.py WORKSPACE     # reads WORKSPACE/plan.json, writes WORKSPACE/results.json

Each command is ``runpy``-run as ``__main__`` with its arguments, inside ``tfds.testing.mock_data`` (TFDS
datasets are not prepared here); the absl flags a script defined are removed before the next one, which
defines them again. Python examples run one after another in one namespace, as a reader would paste them.
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import runpy
import sys
import time
import traceback

import torch  # noqa: F401  (loaded before TensorFlow: triton crashes when it comes second)

gc.set_threshold(20_000, 10, 10)   # as in tests/conftest.py: fewer garbage collections while tracing


def run_script(path: str, args: list[str]) -> tuple[int, str]:
    from absl import flags

    before = set(flags.FLAGS)
    out = io.StringIO()
    code = 0
    sys.argv = [path, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported in the results
            code, _ = 1, out.write(traceback.format_exc())
    for name in set(flags.FLAGS) - before:
        if name in flags.FLAGS:
            delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    return code, out.getvalue()


def run_python(blocks: list[str]) -> tuple[int, str]:
    namespace: dict = {"__name__": "__readme__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            for block in blocks:
                exec(compile(block, "README.md", "exec"), namespace)
        except BaseException:  # noqa: BLE001 - reported in the results
            return 1, out.getvalue() + traceback.format_exc()
    return 0, out.getvalue()


def main() -> None:
    workspace = sys.argv[1]
    os.chdir(workspace)
    plan = json.load(open("plan.json"))
    from tl_jax.data import tf_ops
    from tl_jax.experiment import cli  # noqa: F401  (defines --traceback once, before any script's own flags)

    tfds = tf_ops.tfds_module()
    results = []
    with tfds.testing.mock_data(num_examples=200):
        for step in plan:
            started = time.time()
            if "python" in step:
                code, output = run_python(step["python"])
                results.append({"command": "README Python examples", "exit_code": code, "output": output})
            else:
                code, output = run_script(step["script"], step["args"])
                results.append({"command": step["command"], "exit_code": code, "output": output})
            results[-1]["seconds"] = round(time.time() - started, 1)
            print(f"[{results[-1]['exit_code']}] {results[-1]['seconds']:6.1f} s  {results[-1]['command']}", flush=True)
    json.dump(results, open("results.json", "w"), indent=1)


if __name__ == "__main__":
    main()
