"""Benchmarks as library functions: the training step beside torchvision (``step_speed``, ``torch_peer``),
a sweep against sequential runs (``sweep_speed``) and the input pipeline (``input_speed``). The scripts
``benchmark.py``, ``benchmark_sweep.py`` and ``benchmark_input.py`` only parse flags and call their ``run``.
``step_speed`` and ``torch_peer`` need no TensorFlow, tfds or ml_collections.
"""
