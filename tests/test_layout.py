"""The repository's shape, checked statically: imports flow one way, scripts are thin, nothing points outside.

Layers (a module may import its own layer and the ones below, never above):
models/weights/preprocess/tree -> freeze/optim -> step/parallel/checkpoint -> loop -> experiment/bench.
The data package sits beside the core: it may use preprocess and tree, nothing that trains.
"""
from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tl_jax")
LAYERS = {"tl_jax": 0, "tl_jax.tree": 0, "tl_jax.preprocess": 0, "tl_jax.models": 0, "tl_jax.weights": 0,
          "tl_jax.data": 0, "tl_jax.freeze": 1, "tl_jax.optim": 1, "tl_jax.step": 2, "tl_jax.parallel": 2,
          "tl_jax.checkpoint": 2, "tl_jax.preemption": 2, "tl_jax.loop": 3, "tl_jax.members": 3, "tl_jax.experiment": 4,
          "tl_jax.bench": 4}
# Third-party packages that stay imported inside functions: heavy or optional, needed by few paths.
LAZY_OK = {"tensorflow", "tensorflow_datasets", "torch", "torchvision", "keras", "h5py", "matplotlib", "sklearn",
           "ml_collections", "PIL", "jax", "triton", "importlib", "ast", "scipy", "tensorboard",
           "safetensors", "huggingface_hub"}


def _modules() -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(dirpath, f)
    return out


def _imports(path: str) -> list[tuple[str, bool]]:
    """(imported tl_jax module, at module level?) for every import in the file."""
    tree = ast.parse(open(path).read(), path)
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            found.append((n, id(node) in top))
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in LAYERS:
            return LAYERS[".".join(parts[:k])]
    raise KeyError(module)


def test_no_import_cycles_and_imports_flow_down():
    modules = _modules()
    graph = {m: sorted({n for n, _ in _imports(p) if n in modules and n != m}) for m, p in modules.items()}
    upward = [f"{m} -> {n}" for m, deps in graph.items() for n in deps
              if n != "tl_jax" and _layer(n) > _layer(m)]
    assert not upward, f"imports that climb a layer: {upward}"
    # Cycles among modules (a package's __init__ importing its own submodules is not a cycle of concern
    # unless a submodule imports the package back).
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if m.startswith(n + ".") or n.startswith(m + "."):
                continue
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_internal_imports_are_at_the_top_of_modules():
    inner = [f"{m}: {n}" for m, p in _modules().items() for n, at_top in _imports(p)
             if not at_top and n.split(".")[0] == "tl_jax"]
    assert not inner, f"tl_jax imports inside functions: {inner}"
    lazy = [f"{m}: {n}" for m, p in _modules().items() for n, at_top in _imports(p)
            if not at_top and n.split(".")[0] not in LAZY_OK | {"tl_jax"} and not n.startswith("tl_jax")]
    assert not lazy, f"imports inside functions outside the agreed lazy set: {lazy}"


def _scripts() -> list[str]:
    folder = os.path.join(ROOT, "scripts")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py"))


@pytest.mark.parametrize("path", _scripts(), ids=os.path.basename)
def test_scripts_are_thin_absl_programs(path):
    text = open(path).read()
    tree = ast.parse(text)
    assert "sys.path" not in text, "scripts import the installed package; no sys.path edits"
    assert "argparse" not in text, "one flag library for all scripts: absl"
    assert "cli.run(main)" in text, "scripts run through tl_jax.experiment.cli (exit codes, one-line errors)"
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert functions == ["main"] and not classes, f"library code belongs in tl_jax: {functions + classes}"


def test_nothing_refers_outside_the_repository():
    pattern = re.compile(r"GUIDE|\.\./shared|shared/anchors")
    hits = []
    for dirpath, dirnames, files in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("runs", "__pycache__", "build")
                       and not d.endswith(".egg-info")]
        for f in files:
            if f.endswith((".py", ".md", ".sh", ".toml", ".cfg", ".txt")) or f == "run":
                path = os.path.join(dirpath, f)
                if path == os.path.abspath(__file__):
                    continue
                for i, line in enumerate(open(path, errors="replace"), 1):
                    if pattern.search(line):
                        hits.append(f"{os.path.relpath(path, ROOT)}:{i}")
    assert not hits, f"references to files outside the repository: {hits}"


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _called(node: ast.AST) -> set[str]:
    """Names of the functions and methods called anywhere inside ``node``."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


def test_one_training_step_and_one_training_loop():
    """Only ``step.train_step`` differentiates a loss; only ``loop.fit`` iterates training steps (a ``for``
    loop that calls a train program): the sweep, the activation cache and the ablation all go through them.
    (``tl_jax.bench`` times a step in a bare loop by design: no data, evaluation or checkpoints.)"""
    grads, loops = [], []
    for module, path in _modules().items():
        if module.startswith("tl_jax.bench"):
            continue
        tree = ast.parse(open(path).read(), path)
        for fn in _functions(tree):
            if {"grad", "value_and_grad"} & _called(fn):
                grads.append(f"{module}.{fn.name}")
            if any(isinstance(n, ast.For) and {"train", "train_step"} & _called(n) for n in ast.walk(fn)):
                loops.append(f"{module}.{fn.name}")
    assert grads == ["tl_jax.step.train_step"], grads
    assert loops == ["tl_jax.loop.fit"], loops


def test_no_module_uses_a_private_name_of_another():
    """``from tl_jax.x import _name`` or ``module._name`` across modules: a sign of a missing public API."""
    found = []
    for module, path in _modules().items():
        tree = ast.parse(open(path).read(), path)
        aliases = set()      # local names bound to tl_jax modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tl_jax"):
                found += [f"{module}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
                aliases |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("tl_jax")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{module}: {node.value.id}.{node.attr}")
    assert not found, found
