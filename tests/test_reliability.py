"""Training that stops cleanly: SIGTERM, a second run on the same workdir, writes that fail.

Every case runs ``scripts/train.py`` as a user (or a scheduler) does, on ResNet-18 at 8x8 digits:
SIGTERM mid-run (one process, and two processes x 2 CPU devices through ``jax.distributed``)
checkpoints the step in progress, prints one line and exits 143, and the restart ends with the
parameters of an uninterrupted run; a second run on a live workdir is refused within seconds, one
left by a SIGKILLed run is taken over; a checkpoint that cannot be written (the file-size limit
of the process, which fails writes with EFBIG as a full disk fails them with ENOSPC) stops the
run with one line and leaves the previous checkpoint restorable.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from test_cli import DEFAULT, DIGITS, ROOT, assert_one_line_error, flags, script

TRAIN = os.path.join(ROOT, "scripts", "train.py")
# Full fine-tuning, no periodic checkpoint before the end: the one a signal makes is the only one.
RUN = {**DIGITS, "num_steps": 20, "log_every_steps": 1, "checkpoint_every_steps": 1000, "freeze.frozen_depth": 0}


def _params(workdir: str, step: int) -> dict[str, np.ndarray]:
    """The parameters of a checkpoint step, read with orbax alone (no target tree needed)."""
    import jax
    import orbax.checkpoint as ocp
    from tl_jax.tree import flat
    path, ckptr = os.path.join(workdir, "checkpoints", str(step), "params"), ocp.PyTreeCheckpointer()
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), ckptr.metadata(path).item_metadata.tree)
    tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))   # any device count
    return {k: np.asarray(v) for k, v in flat(tree).items()}


def _max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _wait_for(proc: subprocess.Popen, needle: str, timeout: float = 240) -> list[str]:
    """Read ``proc``'s stdout until a line contains ``needle``; the lines read."""
    lines, deadline = [], time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return lines
        assert time.time() < deadline, f"no {needle!r} in time"
    raise AssertionError(f"the run ended before {needle!r}: {''.join(lines)[-2000:]} {proc.stderr.read()[-2000:]}")


def _popen(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, TRAIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def _records(workdir: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_restart_matches_an_uninterrupted_run(tmp_path):
    ref_dir, work = str(tmp_path / "ref"), str(tmp_path / "run")
    # The reference ends before the victim starts, which then loads its programs from the session's XLA cache
    # (tests/conftest.py) instead of compiling them at the same time (5 of the 31 CPU seconds here).
    ref = script("train.py", "--config", DEFAULT, "--workdir", ref_dir, *flags(RUN))
    assert ref.returncode == 0, ref.stderr[-3000:]
    victim = _popen("--config", DEFAULT, "--workdir", work, *flags(RUN))
    try:
        _wait_for(victim, "step 2/20")
        victim.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        victim.send_signal(signal.SIGTERM)         # a second signal, typically during the save: only noted
        _, err = victim.communicate(timeout=120)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == 143, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    stopped = int(lines[0].split("preempted at step ")[1].split(";")[0])
    assert lines[0] == f"train.py: preempted at step {stopped}; run the same command to resume"
    assert 2 <= stopped < 20
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == [str(stopped)]   # the step it was on
    assert not os.path.exists(os.path.join(work, ".lock")) and not os.path.exists(os.path.join(work, "result.json"))

    resumed = script("train.py", "--config", DEFAULT, "--workdir", work, *flags(RUN))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {"event": "resumed", "step": stopped} == {k: v for k, v in next(
        r for r in _records(work) if r.get("event") == "resumed").items() if k in ("event", "step")}
    err = _max_difference(_params(ref_dir, 20), _params(work, 20))
    print(f"\nSIGTERM at step {stopped}, resumed: max |difference| to the uninterrupted run = {err:.2e}")
    assert err <= 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Two hosts: layer4 and the head train (layer4's BatchNorm synced across the processes). Full fine-tuning
# would sync every BatchNorm over loopback Gloo, half a second a step here, and test nothing more.
HOSTS = {**RUN, "parallel": "shard_map", "freeze.frozen_depth": 4}


def _two_hosts(workdir: str, config: dict, **env: str) -> list[subprocess.Popen]:
    """Two train.py processes x 2 CPU devices, one jax.distributed job on loopback."""
    coordinator = f"127.0.0.1:{_free_port()}"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", **env}
    return [_popen("--config", DEFAULT, "--workdir", workdir, *flags(config), f"--coordinator_address={coordinator}",
                   "--num_processes=2", f"--process_id={i}", env=env) for i in range(2)]


@pytest.mark.slow
def test_sigterm_on_one_of_two_hosts_stops_both_at_the_same_step(tmp_path):
    """JAX's preemption service tells the other host; both save the same step and exit 143."""
    config = HOSTS
    ref_dir, work = str(tmp_path / "ref"), str(tmp_path / "run")
    refs, procs = _two_hosts(ref_dir, config), _two_hosts(work, config)
    try:
        _wait_for(procs[0], "step 2/20")             # process 0 prints the progress
        procs[1].send_signal(signal.SIGTERM)         # the notice reaches a host other than the one that logs
        errs = [p.communicate(timeout=120)[1] for p in procs]
        for p in refs:
            assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    finally:
        for p in (*refs, *procs):
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [143, 143], errs
    steps = set()
    for err in errs:
        assert "Traceback" not in err, err[-3000:]
        line = next(line for line in err.splitlines() if "preempted at step" in line)
        steps.add(int(line.split("preempted at step ")[1].split(";")[0]))
    assert len(steps) == 1, steps
    stopped = steps.pop()
    assert 2 <= stopped < 20 and sorted(os.listdir(os.path.join(work, "checkpoints"))) == [str(stopped)]

    procs = _two_hosts(work, config)
    try:
        for p in procs:
            assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    err = _max_difference(_params(ref_dir, 20), _params(work, 20))
    print(f"\n2 hosts, SIGTERM at step {stopped}, resumed: max |difference| to the uninterrupted run = {err:.2e}")
    assert err <= 1e-6


@pytest.mark.slow
def test_without_the_preemption_service_the_hosts_agree_through_a_collective(tmp_path):
    """``jax_enable_preemption_service`` off: each host's own handler notes the signal and the hosts take
    the maximum of their flags every step, so both still save the same step and exit 143."""
    work = str(tmp_path / "run")
    procs = _two_hosts(work, {**HOSTS, "num_steps": 2000}, JAX_ENABLE_PREEMPTION_SERVICE="false")
    try:
        _wait_for(procs[0], "step 2/2000")
        procs[1].send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [143, 143], errs
    lines = [next(line for line in err.splitlines() if "preempted at step" in line) for err in errs]
    steps = {int(line.split("preempted at step ")[1].split(";")[0]) for line in lines}
    assert len(steps) == 1 and sorted(os.listdir(os.path.join(work, "checkpoints"))) == [str(steps.pop())], lines


@pytest.mark.slow
def test_a_live_run_holds_the_workdir_and_a_killed_one_is_taken_over(tmp_path):
    work = str(tmp_path / "run")
    args = ["--config", DEFAULT, "--workdir", work, *flags({**RUN, "num_steps": 100000, "checkpoint_every_steps": 2})]
    first = _popen(*args)
    try:
        _wait_for(first, "step 3/100000")            # a committed checkpoint (step 2) exists
        start = time.time()
        second = script("train.py", *args)
        refused_s = time.time() - start
        assert_one_line_error(second, 1, f"{work} is in use by another run", f"pid {first.pid}",
                              f"host {socket.gethostname()}")
        print(f"\nsecond run refused in {refused_s:.1f} s")
        assert refused_s < 10
        # Reading a run takes no lock: evaluation works while the run trains.
        evaluated = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), "--workdir", work,
                                    "--split", "test[:10%]"], capture_output=True, text=True, timeout=300)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        assert first.poll() is None, first.stderr.read()[-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert os.path.exists(os.path.join(work, ".lock"))       # left behind by the killed run
    last = max(int(n) for n in os.listdir(os.path.join(work, "checkpoints")) if n.isdigit())
    third = script("train.py", *args, f"--stop_at_step={last + 2}")
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock of a run that is gone (pid {first.pid} has exited)" in third.stderr
    assert f"resumed: step {last}" in third.stdout and f"stopped at step {last + 2} of 100000" in third.stdout
    assert not os.path.exists(os.path.join(work, ".lock"))


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_stops_with_one_line_and_keeps_the_previous_one(tmp_path):
    work = str(tmp_path / "run")
    args = ["--config", DEFAULT, "--workdir", work, *flags({**RUN, "checkpoint_every_steps": 2})]
    first = script("train.py", *args, "--stop_at_step=2")
    assert first.returncode == 0, first.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}   # its files are large too
    # Files of at most 64 KB (bash's ulimit -f counts KiB): metrics.jsonl fits, a checkpoint of ResNet-18
    # (45 MB of parameters) does not. Writes beyond the limit fail with EFBIG: Python ignores SIGXFSZ.
    failed = subprocess.run(["bash", "-c", 'ulimit -f 64 && exec "$0" "$@"', sys.executable, TRAIN, *args],
                            capture_output=True, text=True, timeout=300, env=env)
    line = assert_one_line_error(failed, 1, f"writing a checkpoint to {work}/checkpoints failed",
                                 "File too large", "step 2 (0: none), is intact")
    print(f"\n{line}")
    from tl_jax.checkpoint import Checkpointer
    with Checkpointer(os.path.join(work, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [2]
        params = _params(work, 2)
    assert all(np.isfinite(v).all() for v in params.values())


def test_a_metrics_write_that_fails_names_the_file():
    from tl_jax.loop import JsonlLogger
    with pytest.raises(OSError, match="cannot write /dev/full .No space left on device."):
        JsonlLogger("/dev/full")({"step": 1})


def test_the_watch_notes_signals_and_restores_the_handlers():
    from tl_jax.preemption import Preempted, Watch
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with Watch() as watch:
        assert not watch.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)        # a second signal: noted, no KeyboardInterrupt
        assert watch.reached(2) and watch.signum == signal.SIGTERM and watch.repeats == 1
    assert {s: signal.getsignal(s) for s in before} == before
    assert str(Preempted(7)) == "preempted at step 7; run the same command to resume"
    assert str(Preempted(7, signal.SIGINT)) == "interrupted at step 7; run the same command to resume"
