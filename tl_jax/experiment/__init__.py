"""From a config to a trained, evaluated model: the layer behind every script, one concern per module.

    config.py       load a config file with overrides, hints for misspelt fields, run-directory file names
    setup.py        validate a config and build one ``Experiment``: the ``loop.Setup`` hand-off + the run's facts
    run.py          ``train``: the run directory (config.json, run.json, metrics, checkpoints, result.json)
    probe.py        the linear probe on cached features (a ``loop.Setup`` for the head alone)
    restore.py      read a run: evaluate, predict, export as weights (parameters and BatchNorm statistics only)
    ablation.py     one recipe at every frozen depth and seed, tabulated and plotted
    stage_probe.py  a closed-form ridge probe on every stage's features
    quickstart.py   the offline demonstration (glyphs -> digits)
    logs.py, lock.py, cli.py   metrics and console, one writer per run directory, flags and exit codes

Imports point down only: scripts -> experiment -> loop -> step/parallel -> freeze/optim -> models/weights.
This package imports nothing by itself, so a script pays only for the modules it uses.
"""
