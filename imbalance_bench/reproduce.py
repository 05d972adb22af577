"""Run a published table as Hydra multiruns, then write its `imbench-report`.

`scripts/reproduce_<table>.sh` calls this module with the table's sweeps, each one `imbench -m`
command line (Hydra's basic sweeper runs the cartesian product of its comma lists), followed by the
user's options:

    scripts/reproduce_<table>.sh [--dry-run] [--seeds 0,1,2] [--out DIR] [OVERRIDE ...]

Every job of every sweep is composed and validated before the first one starts. `--dry-run` prints
the jobs and their count and launches nothing. Otherwise the sweeps run one after another into
`DIR/<sweep>/<job>`, a failed sweep does not stop the next one, and the report (report.md,
report.csv, plots) and `reproduce.json` (commands, exit codes, wall times) land in DIR.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from imbalance_bench.errors import ConfigError, ImbenchError, OneLineArgumentParser, exit_user_error

PROG = "reproduce"
EXIT_RUN_FAILED = 1


@dataclass
class Sweep:
    """One `imbench -m` command line of a table."""

    name: str
    overrides: list[str]
    jobs: list[list[str]] = field(default_factory=list)

    @property
    def common(self) -> list[str]:
        """Overrides every job shares (printed once in the sweep's header)."""
        return [o for o in self.jobs[0] if all(o in job for job in self.jobs)] if self.jobs else []


def fail(message: str) -> None:
    exit_user_error(PROG, message)


def parse_sweep(text: str) -> Sweep:
    """`NAME: OVERRIDE ...` as written in a reproduce script."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--sweep {text!r}: expected 'NAME: OVERRIDE ...' with a plain NAME")
    return Sweep(name, shlex.split(rest))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROG, description="Run a paper table as imbench multiruns and report it.")
    parser.add_argument("--table", required=True, help="table name (names the default output folder)")
    parser.add_argument("--sweep", action="append", required=True, metavar="'NAME: OVERRIDE ...'",
                        help="one imbench -m command line of the table (repeatable)")
    parser.add_argument("--metric", action="append", help="report metric(s) for imbench-report (default auto)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their count; launch nothing")
    parser.add_argument("--seeds", metavar="S,S,...", help="sweep `seed` over these values in every sweep (e.g. 0,1,2)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: multirun/<table>/<date>_<time>)")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                        help="Hydra overrides added to every job, e.g. dataset.root=/data trainer.device=cuda")
    return parser


def parse_seeds(text: str | None) -> str | None:
    if text is None:
        return None
    seeds = [s.strip() for s in text.split(",")]
    if not seeds or not all(s.lstrip("-").isdigit() for s in seeds):
        raise ConfigError(f"--seeds {text}: expected integers separated by commas, e.g. 0,1,2")
    return ",".join(seeds)


def plan(sweeps: list[Sweep], seeds: str | None, extra: list[str]) -> list[Sweep]:
    """Add the seeds and the user's overrides to every sweep, expand and validate all of its jobs."""
    from hydra.core.global_hydra import GlobalHydra

    from imbalance_bench.cli import expand_jobs, preflight

    for arg in extra:
        if arg.startswith("-") or "=" not in arg:
            raise ConfigError(f"{arg}: not an option of this script (--dry-run, --seeds, --out) nor a key=value override")
        if arg.partition("=")[0].lstrip("+~") == "seed" and seeds is not None:
            raise ConfigError(f"{arg}: give seeds either with --seeds or as seed=..., not both")
    for sweep in sweeps:
        sweep.overrides = sweep.overrides + ([f"seed={seeds}"] if seeds else []) + list(extra)
        try:
            preflight(["-m", *sweep.overrides])
            sweep.jobs = expand_jobs(sweep.overrides, multirun=True)
        except ConfigError as exc:
            raise ConfigError(f"sweep {sweep.name}: {exc}") from None
        finally:
            GlobalHydra.instance().clear()
    return sweeps


def print_plan(table: str, sweeps: list[Sweep], out: Path) -> None:
    total = sum(len(s.jobs) for s in sweeps)
    print(f"{table}: {len(sweeps)} sweep(s), {total} runs -> {out}")
    number = 0
    for sweep in sweeps:
        common = sweep.common
        print(f"\nsweep {sweep.name} ({len(sweep.jobs)} runs): imbench -m {' '.join(sweep.overrides)}")
        if common:
            print(f"  every run: {' '.join(common)}")
        for job in sweep.jobs:
            number += 1
            print(f"  {number:>4}  {' '.join(o for o in job if o not in common) or '(no overrides)'}")
    print(f"\n{total} runs")


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _completed(metrics_json: Path) -> bool:
    try:
        return json.loads(metrics_json.read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def run_sweep(sweep: Sweep, out: Path) -> dict:
    """Launch one sweep as `python -m imbalance_bench -m ...` into out/<name>; return its record."""
    command = [sys.executable, "-m", "imbalance_bench", "-m", *sweep.overrides,
               f"hydra.sweep.dir={_quoted(str(out / sweep.name))}"]
    print(f"\n[{sweep.name}] {len(sweep.jobs)} runs: imbench -m {' '.join(sweep.overrides)}", flush=True)
    start = time.monotonic()
    code = subprocess.call(command)
    seconds = time.monotonic() - start
    done = sum(1 for path in (out / sweep.name).glob("*/metrics.json") if _completed(path))
    print(f"[{sweep.name}] exit {code}, {done}/{len(sweep.jobs)} runs completed in {seconds / 60:.1f} min", flush=True)
    return {"name": sweep.name, "command": shlex.join(["imbench", *command[3:]]), "runs": len(sweep.jobs),
            "completed": done, "exit_code": code, "wall_seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out) if args.out else Path("multirun") / args.table / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        sweeps = plan([parse_sweep(s) for s in args.sweep], parse_seeds(args.seeds), args.overrides)
    except ConfigError as exc:
        fail(str(exc))
    if args.dry_run:
        print_plan(args.table, sweeps, out)
        return
    taken = [s.name for s in sweeps if (out / s.name).exists() and any((out / s.name).iterdir())]
    if taken:
        fail(f"--out {out}: already holds sweep folder(s) {', '.join(taken)}; choose a new folder so no finished run is overwritten")
    print_plan(args.table, sweeps, out)
    started = datetime.now().isoformat(timespec="seconds")
    records = [run_sweep(sweep, out) for sweep in sweeps]
    write_summary(out, args.table, started, records)
    report_ok = write_table_report(out, args.metric)
    failed = [r["name"] for r in records if r["exit_code"] != 0]
    total = sum(r["wall_seconds"] for r in records)
    print(f"\n{args.table}: {sum(r['completed'] for r in records)}/{sum(r['runs'] for r in records)} runs completed "
          f"in {total / 60:.1f} min; failed sweeps: {', '.join(failed) or 'none'}; results in {out}")
    if failed or not report_ok:
        raise SystemExit(EXIT_RUN_FAILED)


def write_summary(out: Path, table: str, started: str, records: list[dict]) -> None:
    from imbalance_bench.runfiles import write_json

    write_json(out / "reproduce.json", {"table": table, "started": started,
                                        "finished": datetime.now().isoformat(timespec="seconds"), "sweeps": records})


def write_table_report(out: Path, metrics: list[str] | None) -> bool:
    """imbench-report over the sweeps; False (with one line on stderr) when nothing could be reported."""
    from imbalance_bench.report import write_report

    try:
        result = write_report([out], out, "last", metrics or "auto")
    except ImbenchError as exc:
        sys.stderr.write(f"{PROG}: report: {exc}\n")
        return False
    print(f"report: {', '.join(result.files)} in {out}")
    return True


if __name__ == "__main__":
    main()
