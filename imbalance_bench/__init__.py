"""imbalance-bench: a config-driven runner for class-imbalanced and long-tailed image classification.

The package itself holds its version, `CONF_DIR`, where the config groups live (conf/, beside
the package), and `is_int`: here, below every module, so that any of them may read a config file
and tell an integer from a bool (config values and COCO's JSON ids alike).
"""

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def is_int(value: Any) -> bool:
    """An integer value, not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)
