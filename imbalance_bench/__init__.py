"""imbalance-bench: a config-driven runner for class-imbalanced and long-tailed image classification.

The package itself holds its version and `CONF_DIR`, where the config groups live (conf/, beside
the package): here, below every module, so that any of them may read a config file.
"""

from pathlib import Path

__version__ = "0.1.0"

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
