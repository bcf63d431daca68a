"""Benchmarks as library functions: the training step beside torchvision (``step``, ``torch_peer``) and the
input pipeline (``input``). ``scripts/benchmark.py`` and ``scripts/benchmark_input.py`` only parse flags and
call ``step.run`` / ``input.run``. ``step`` and ``torch_peer`` need no TensorFlow, tfds or ml_collections.
"""
