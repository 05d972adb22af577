"""imbalance-bench: a config-driven runner for class-imbalanced and long-tailed image classification."""

__version__ = "0.1.0"
