"""From a config to a trained, evaluated model: the logic behind every script.

Data flows weights -> model -> freeze spec -> optimizer -> data -> ``tl_jax.loop.fit``;
the scripts (``scripts/train.py``, ``evaluate.py``, ``predict.py``, ``ablate_frozen_depth.py``,
``quickstart.py``) only parse flags and call :func:`train`, :func:`evaluate_run` or
:func:`predict`. A run directory ("workdir") holds::

    config.json     the config as given (a restart with another config is refused)
    run.json        what the run derived from it: model, stages, preprocessing, classes, steps
    metrics.jsonl   one JSON object per event (train logs, evals), appended across restarts
    tensorboard/    the same scalars as TensorBoard event files
    checkpoints/    orbax checkpoints, the latest N plus the best by eval top-1
    result.json     written last, so its presence means "finished": best and final eval,
                    trainable parameters, steady-state throughput, wall time
    feature_cache/  linear-probe features (``config.feature_cache``, see ``tl_jax.features``)

Restarting ``train`` on a workdir resumes from the latest checkpoint (``tl_jax.loop.fit``
restores the state and the data position); a finished run returns its ``result.json``.

The code lives in one module per concern: ``config`` (loading, overrides, validation),
``build`` (data, weights, model, freeze spec, optimizer), ``logs`` (metrics.jsonl, TensorBoard),
``run`` (run files, ``prepare``, ``train``), ``restore`` (evaluation, export, prediction) and
``cli`` (the scripts' flag parsing); the names below are re-exported here.
"""
from tl_jax.experiment.build import (build_model, data_options, freeze_spec, init_variables, make_data, optim_config,
                                     weights_metadata)
from tl_jax.experiment.cli import main_with_clean_errors, parse_flags
from tl_jax.experiment.config import (CHECKPOINTS, CONFIG, METRICS, RESULT, RUN, TENSORBOARD, _flatten,
                                      config_from_dict, config_to_dict, load_config, override, validate)
from tl_jax.experiment.logs import RunLogger, TensorBoard, read_metrics
from tl_jax.experiment.restore import (Restored, abstract_state, evaluate_run, export, load_for_prediction, predict,
                                       restore_run)
from tl_jax.experiment.run import Run, StopTraining, prepare, read_result, stopping, train

# The original module's __all__, plus the names other code reads as ``experiment.<name>``.
__all__ = ["CHECKPOINTS", "CONFIG", "METRICS", "RESULT", "RUN", "Restored", "Run", "RunLogger", "StopTraining",
           "TENSORBOARD", "TensorBoard", "_flatten", "abstract_state", "build_model", "config_from_dict",
           "config_to_dict", "data_options", "evaluate_run", "export", "freeze_spec", "init_variables", "load_config",
           "load_for_prediction", "main_with_clean_errors", "make_data", "optim_config", "override", "parse_flags",
           "predict", "prepare", "read_metrics", "read_result", "restore_run", "stopping", "train", "validate",
           "weights_metadata"]
