"""`python -m imbalance_bench` is the same app as the `imbench` console script."""

from imbalance_bench.cli import main

if __name__ == "__main__":
    main()
