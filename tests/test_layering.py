"""The package's layering: a module imports only modules below it, function-level imports included.

The layers below, lowest first, are the one place that order is written. A module is named by its
path under imbalance_bench/ ("errors", "data.images"); a package by its folder ("data" is
data/__init__.py) and the package itself by "__init__". The modules of data/, losses/ and models/
have their own order inside their package (PACKAGE_LAYERS); the package's __init__ is above them.
Imports are read from the source (ast), nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "imbalance_bench"

LAYERS = (
    ("__init__", "errors"),  # the version and CONF_DIR; user errors and the exit codes
    # each stands on its own: no other module of the package but errors
    ("safe_pickle", "runfiles", "signals", "distributed", "summary", "metrics", "schedulers", "reference", "targets"),
    ("data", "losses", "models"),  # datasets, losses, networks
    ("config",),  # the schemas and checks, which read what the dataset and loss classes declare
    ("device", "step", "checkpoint", "rundir"),  # the pieces of a run
    ("build", "decoupled"),  # building a run from its config; a decoupled second stage
    ("outputs",),  # what a run writes
    ("loop",),  # fit, one epoch, evaluation
    ("train", "report"),  # a run; the report over runs
    ("cli", "report_cli"),  # the console commands
    ("reproduce", "__main__"),  # a table's sweeps through imbench; python -m imbalance_bench
)
PACKAGE_LAYERS = {
    "data": (
        ("sampling",),  # which train images an epoch draws
        ("profiles", "download", "jpeg_batch", "images"),
        ("bundle",),  # the dataset types
        ("long_tail", "cifar", "mnist", "coco"),
        ("multimnist",),  # made from MNIST's digits
    ),
    "losses": (
        ("base", "reweight"),
        ("softmax_ce", "sigmoid_bce", "focal", "asl", "dfl", "plm", "hinge"),
        ("balanced_softmax", "ldam"),  # softmax cross-entropy with adjusted logits
        ("logit_adjusted",),  # Balanced Softmax's prior, scaled by tau
    ),
    "models": (("heads", "resnet_cifar", "sync_batchnorm"),),
}


def module_names() -> dict[str, Path]:
    """Every module of the package by its name here."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def rank(module: str) -> tuple[int, int]:
    """(layer, layer inside its package); a package's __init__ is above its modules."""
    top, _, inner = module.partition(".")
    [layer] = [i for i, names in enumerate(LAYERS) if top in names]
    inner_layers = PACKAGE_LAYERS.get(top, ())
    if not inner:
        return layer, len(inner_layers)
    [inner_layer] = [i for i, names in enumerate(inner_layers) if inner in names]
    return layer, inner_layer


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `module` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    here = [] if module == "__init__" else module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package up
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(["imbalance_bench", *base] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from package import name`: the submodule `name` when there is one, else the package
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}".partition(".")[2] in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "imbalance_bench":
                found.add("__init__")
            elif target.startswith("imbalance_bench."):
                found.add(target.partition(".")[2])
    found.discard(module)
    return found


def test_every_module_has_a_place_in_the_layers():
    modules = set(module_names())
    listed = set()
    for names in LAYERS:
        for name in names:
            inner_layers = PACKAGE_LAYERS.get(name, ())
            listed |= {name} | {f"{name}.{inner}" for layer in inner_layers for inner in layer}
    assert modules - listed == set(), "place each new module in LAYERS (or PACKAGE_LAYERS)"
    assert listed - modules == set(), "a module named in LAYERS no longer exists"


@pytest.mark.parametrize("module", sorted(module_names()))
def test_a_module_imports_only_modules_below_it(module):
    modules = module_names()
    above = sorted(target for target in imported_modules(module, modules[module], modules)
                   if target in modules and rank(target) >= rank(module))
    assert above == [], f"imbalance_bench/{module} imports modules at or above its own layer"


@pytest.mark.parametrize("module", sorted(module_names()))
def test_every_module_opens_with_a_docstring(module):
    assert ast.get_docstring(ast.parse(module_names()[module].read_text())), f"{module}: say what it holds"


def test_the_check_sees_function_level_and_package_imports():
    """The parser finds what the layering rests on: a lazy import inside a function (config reads the
    dataset classes there), `from imbalance_bench import name` (a submodule, or the package's own name)."""
    modules = module_names()
    assert {"data", "targets", "errors"} <= imported_modules("config", modules["config"], modules)
    assert {"config", "train", "__init__"} <= imported_modules("cli", modules["cli"], modules)
    assert "__init__" in imported_modules("data.mnist", modules["data.mnist"], modules)
    assert rank("data.images") < rank("data.bundle") < rank("data") < rank("config") < rank("train")
