"""`imbench-report PATH...`: a paper-style report (report.md, report.csv, PNG plots) over run directories.

Every folder under each PATH that holds `metrics.json` (or a `.hydra/config.yaml`) is a run:
single runs and each job of a multirun sweep. See README.md, "Reports".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imbalance_bench.errors import ImbenchError, OneLineArgumentParser, exit_user_error

PROG = "imbench-report"


def fail(message: str) -> None:
    exit_user_error(PROG, message)


def build_parser() -> argparse.ArgumentParser:
    from imbalance_bench.report import METRICS

    parser = OneLineArgumentParser(
        prog=PROG,
        description="Tables (report.md, report.csv) and plots (PNG) over imbench run directories: rows are "
                    "methods, columns dataset x imbalance factor, cells the mean ± std over seeds beside "
                    "the published number.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run directories or folders holding them (outputs/, multirun/)")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default: the first PATH)")
    parser.add_argument("--epoch", choices=("last", "best"), default="last",
                        help="cells from the last epoch (default, as Cui et al. report) or the best epoch (chosen on the test split)")
    parser.add_argument("--metric", action="append", choices=("auto", *METRICS),
                        help="table metric (repeatable: one table each; default auto): auto is top-1 error for "
                             "single-label runs, mAP for multi-label runs")
    parser.add_argument("--reference", action="append", metavar="NAME",
                        help="published table to compare with (repeatable; default: every bundled one; 'none': no comparison)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    references = args.reference
    if references is not None and "none" in references:
        references = []
    out = Path(args.out) if args.out else Path(args.paths[0])
    if out.exists() and not out.is_dir():
        out = out.parent
    try:
        from imbalance_bench.report import write_report

        result = write_report([Path(p) for p in args.paths], out, args.epoch, args.metric, references)
    except ImbenchError as exc:
        fail(str(exc))
    from imbalance_bench.report import reported_runs, skip_summary

    for skipped in result.skipped:
        if skipped.damaged:
            print(f"{PROG}: warning: {skipped.path}: {skipped.reason}; skipped", file=sys.stderr)
    for warning in result.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    n_runs = len(reported_runs(result.tables))  # a run in several tables counts once
    print(f"{PROG}: {n_runs} run(s), {skip_summary(result.tables, result.skipped)}; "
          f"wrote {', '.join(result.files)} to {result.out_dir}")


if __name__ == "__main__":
    main()
