"""From a config to a trained, evaluated model: the layer behind every script, one concern per module.

    config.py       load a config file with overrides, hints for misspelt fields
    rundir.py       a run directory's life: its config, a finished result, the lock, JSON files
    setup.py        validate a config and build one ``Experiment``: the ``loop.Setup`` hand-off + the run's facts
    run.py          ``train``: one run in its run directory (config.json, run.json, metrics, checkpoints, result.json)
    activations.py  the frozen prefix's output cached once, the rest trained from it (a ``loop.Setup`` for it)
    sweep.py        K variants of one config in one program (``tl_jax.members``)
    restore.py      read a run: evaluate, predict, export as weights (parameters and BatchNorm statistics only)
    export.py       a run (or converted weights) written as torchvision / safetensors / Keras files
    ablation.py     one recipe at every frozen depth (or single trainable stage) and seed, tabulated and plotted
    stage_probe.py  a closed-form ridge probe on every stage's features
    quickstart.py   the offline demonstration (glyphs -> digits)
    transfer_study.py  Yosinski et al.'s Figure 2 and surgical fine-tuning, offline
    logs.py, lock.py, cli.py   metrics and console, one writer per run directory, flags and exit codes

Imports point down only: scripts -> experiment -> loop -> step/parallel -> freeze/optim -> models/weights.
This package imports nothing by itself, so a script pays only for the modules it uses.
"""
