#!/usr/bin/env python
"""Print the per-class train counts of a long-tailed split, e.g.

    python scripts/long_tail_counts.py --n-max 5000 --classes 10 --imbalance-factor 100 200 --profile exp
"""

from __future__ import annotations

import argparse
import json

from imbalance_bench.data.profiles import IMBALANCE_TYPES, long_tail_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-max", type=int, default=5000, help="images in the head class (CIFAR-10: 5000, CIFAR-100: 500)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--imbalance-factor", type=float, nargs="+", default=[100.0])
    parser.add_argument("--profile", choices=IMBALANCE_TYPES, default="exp")
    args = parser.parse_args()
    for factor in args.imbalance_factor:
        counts = long_tail_counts(args.n_max, args.classes, factor, args.profile)
        print(json.dumps({"imbalance_factor": factor, "profile": args.profile, "total": sum(counts), "counts": counts}))


if __name__ == "__main__":
    main()
