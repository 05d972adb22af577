"""Published result tables that `imbench-report` compares runs against, one YAML file each.

Schema of `<name>.yaml`:

- `name`, `tag` (short name shown in report cells), `priority` (lower is compared first when
  several tables hold a cell), `title`, `metric` (`top1_error`, `top1`,
  `mean_f2` or `map`, in percent), `source` (`paper`, `table`, `url`, `checked`), `notes`.
- `requires`: run keys every row needs (e.g. `{model: resnet32}`).
- `rows`: each has a `label`, a `match` and `cells`, nested as
  `cells[dataset][imbalance_type][imbalance_factor]`. A cell is a number, or
  `{value: number, match: {...}}` when the cell came from its own configuration (a per-cell search).

Match keys (all must equal the run's, numbers compared to 1e-9): `model`, `loss`, `reweight`,
`sampler`, `drw` (reweight.start_epoch > 0), `drs` (sampler.start_epoch > 0), and `loss.<key>` /
`reweight.<key>` / `sampler.<key>` / `stage.<key>` for any config value, `stage` (a decoupled
second stage) and `posthoc_tau` (the rows of post-hoc logit adjustment). A row that does not name
them is of instance-sampled, single-stage runs scored on their raw logits (ROW_DEFAULTS), as every
paper's table is unless its row says otherwise.
Only numbers checked against the cited source go into these files.
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from imbalance_bench.errors import ImbenchError

REQUIRED_KEYS = ("name", "tag", "metric", "source", "rows")
#: what a row's `match` means when it does not say: instance sampling, one stage, raw scores
ROW_DEFAULTS = {"sampler": "instance", "stage": "none", "posthoc_tau": None}


def reference_names() -> list[str]:
    """Names of the bundled reference tables (file stems), sorted by name."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


def default_references() -> list[str]:
    """Every bundled table, in the order cells are looked up: by `priority`, then name."""
    return sorted(reference_names(), key=lambda n: (load_reference(n).get("priority", 100), n))


@lru_cache(maxsize=None)
def _load(name: str) -> dict[str, Any]:
    if name not in reference_names():
        raise ImbenchError(f"--reference {name}: unknown table; choose one of: {', '.join(reference_names())}")
    data = yaml.safe_load(resources.files(__name__).joinpath(f"{name}.yaml").read_text())
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ImbenchError(f"reference {name}: missing key(s) {', '.join(missing)}")
    return data


def load_reference(name: str) -> dict[str, Any]:
    """The parsed reference table `name` (see the module docstring for its schema)."""
    return _load(name)


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool) or expected is None or actual is None:
        return expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(float(expected), float(actual), rel_tol=0.0, abs_tol=1e-9)
    return str(expected) == str(actual)


def matches(match: dict[str, Any] | None, method: dict[str, Any]) -> bool:
    """Whether every key of `match` has the same value in the run's method keys."""
    return all(key in method and _same(value, method[key]) for key, value in (match or {}).items())


def lookup(reference: dict[str, Any], method: dict[str, Any], dataset: str, imbalance_type: str,
           imbalance_factor: float | None) -> tuple[float, str] | None:
    """The published value and row label for a run's method in one column, or None."""
    if imbalance_factor is None or not matches(reference.get("requires"), method):
        return None
    method = {**ROW_DEFAULTS, **method}
    for row in reference["rows"]:
        if not matches({**ROW_DEFAULTS, **(row.get("match") or {})}, method):
            continue
        by_factor = (row.get("cells", {}).get(dataset) or {}).get(imbalance_type) or {}
        for factor, cell in by_factor.items():
            if not math.isclose(float(factor), float(imbalance_factor)):
                continue
            if isinstance(cell, dict):
                if matches(cell.get("match"), method):
                    return float(cell["value"]), str(row["label"])
            else:
                return float(cell), str(row["label"])
    return None
