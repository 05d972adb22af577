"""Run a published table as Hydra multiruns, then write its `imbench-report`.

`scripts/reproduce_<table>.sh` calls this module with the table's sweeps, each one `imbench -m`
command line (Hydra's basic sweeper runs the cartesian product of its comma lists; `{out}` stands
for the table's folder, so that a decoupled stage can start from an earlier sweep's runs), followed
by the user's options:

    scripts/reproduce_<table>.sh [--dry-run] [--seeds 0,1,2] [--out DIR [--resume]] [OVERRIDE ...]

Every job of every sweep is composed and validated before the first one starts, and each dataset
the table reads is checked on disk once: a missing one stops the script with one line (a warning
under `--dry-run`; a note when `dataset.download=true` fetches it). `--dry-run` prints the jobs and
their count and launches nothing. Otherwise the sweeps run one after another into
`DIR/<sweep>/<job>`, a failed sweep does not stop the next one, and the report (report.md,
report.csv, plots) and `reproduce.json` (commands, exit codes, wall times) land in DIR. The same
command with `--out DIR --resume` finishes a table that was stopped: runs already complete are
skipped, stopped ones continue from their checkpoints.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from imbalance_bench.errors import (
    EXIT_TABLE_INTERRUPTED, EXIT_TABLE_RUN_FAILED, ConfigError, DataError, ImbenchError, OneLineArgumentParser,
    exit_user_error,
)

PROG = "reproduce"


@dataclass
class Sweep:
    """One `imbench -m` command line of a table."""

    name: str
    overrides: list[str]
    jobs: list[list[str]] = field(default_factory=list)
    datasets: list[dict] = field(default_factory=list)  # each job's `dataset` config, resolved

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
    parser.add_argument("--resume", action="store_true",
                        help="finish the table in --out DIR: skip complete runs, resume stopped ones")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                        help="Hydra overrides added to every job, e.g. dataset.root=/data trainer.device=cuda")
    return parser


def parse_seeds(text: str | None) -> str | None:
    if text is None:
        return None
    seeds = [s.strip() for s in text.split(",")]
    if not seeds or not all(s.lstrip("-").isdigit() for s in seeds):
        raise ConfigError(f"--seeds {text}: expected integers separated by commas, e.g. 0,1,2")
    if len({int(s) for s in seeds}) != len(seeds):
        raise ConfigError(f"--seeds {text}: a seed is listed twice")
    return ",".join(seeds)


def plan(sweeps: list[Sweep], seeds: str | None, extra: list[str], out: Path | None = None) -> list[Sweep]:
    """Add the seeds and the user's overrides to every sweep, expand and validate all of its jobs.
    A decoupled stage whose `stage.init_from` is a run of an earlier sweep of the table (under `out`)
    is checked when it starts, after that sweep; any other stage-1 run is checked now."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from imbalance_bench.cli import check_stage_of, preflight

    names = [s.name for s in sweeps]
    if len(set(names)) != len(names):
        raise ConfigError(f"--sweep: names must differ (each names its output folder), got {', '.join(names)}")
    for arg in extra:
        key = arg.partition("=")[0].lstrip("+~")
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            raise ConfigError(f"{arg}: not an option of this script (--dry-run, --seeds, --out, --resume, --metric) nor a key=value override")
        if key == "seed" and seeds is not None:
            raise ConfigError(f"{arg}: give seeds either with --seeds or as seed=..., not both")
        if key.startswith("hydra.sweep") or key.startswith("hydra.run"):
            raise ConfigError(f"{arg}: the script places the runs itself; use --out DIR")
    for number, sweep in enumerate(sweeps):
        sweep.overrides = sweep.overrides + ([f"seed={seeds}"] if seeds else []) + list(extra)
        configs: list = []
        try:
            sweep.jobs = preflight(["-m", *sweep.overrides], configs, check_stages=False)
            sweep.datasets = [OmegaConf.to_container(cfg.dataset, resolve=True) for cfg in configs]
            for cfg in configs:
                if not trained_earlier(cfg, out, names[:number]):
                    check_stage_of(cfg)
        except ConfigError as exc:
            raise ConfigError(f"sweep {sweep.name}: {exc}") from None
        finally:
            GlobalHydra.instance().clear()
    return sweeps


def with_out(sweeps: list[str], out: Path) -> list[str]:
    """The sweeps with `{out}` as the table's folder, as given (the runs start where this does), so
    that a later sweep can start a decoupled stage from an earlier one's runs. The folder goes into
    an override value, so it must not hold what the override grammar reads (spaces, commas, quotes,
    brackets, `=`)."""
    if any("{out}" in sweep for sweep in sweeps) and re.search(r"[\s,'\"\[\]{}()=:]", str(out)):
        raise ConfigError(f"--out {out}: this table's sweeps name the folder in an override ({{out}}); use a folder "
                          "name without spaces, commas, quotes, brackets, '=' or ':'")
    return [sweep.replace("{out}", str(out)) for sweep in sweeps]


def trained_earlier(cfg, out: Path | None, earlier: list[str]) -> bool:
    """Whether a decoupled stage starts from a run of an earlier sweep of the table (`stage.init_from`
    under out/<sweep>/ for one of the `earlier` sweeps)."""
    init_from = cfg.stage.get("init_from")
    if init_from is None or out is None:
        return False
    try:
        return Path(str(init_from)).resolve().relative_to(out.resolve()).parts[0] in earlier
    except (ValueError, IndexError):
        return False


def check_data(sweeps: list[Sweep]) -> tuple[str | None, list[str]]:
    """Each dataset the table reads (distinct name, root and download over all its runs), checked on
    disk once with its reader's own check: one line about those missing (None if none is), and a
    note for each that the runs download themselves."""
    from imbalance_bench.data import downloads_missing, missing_data

    missing: list[tuple[str, Path, str]] = []
    notes: list[str] = []
    seen = set()
    for dataset in (d for sweep in sweeps for d in sweep.datasets):
        root = Path(str(dataset["root"])).expanduser().resolve()
        key = (dataset["name"], root, bool(dataset.get("download")))
        if key in seen:
            continue
        seen.add(key)
        problem = missing_data(dataset)
        if problem is None:
            continue
        if downloads_missing(dataset):
            notes.append(f"dataset={dataset['name']} is not in {root} yet; the first run downloads it "
                         "(dataset.download=true)")
        else:
            missing.append((dataset["name"], root, problem))
    if not missing:
        return None, notes
    (name, _, problem), others = missing[0], missing[1:]
    more = f" (also missing: {', '.join(f'dataset={n} in {r}' for n, r, _ in others)})" if others else ""
    return f"dataset={name}: {problem}{more}", notes


def print_plan(table: str, sweeps: list[Sweep], out: Path) -> None:
    total = sum(len(s.jobs) for s in sweeps)
    print(f"{table}: {len(sweeps)} sweep(s), {total} runs -> {out}")
    number = 0
    for sweep in sweeps:
        common = sweep.common
        print(f"\nsweep {sweep.name} ({len(sweep.jobs)} runs): imbench -m {' '.join(sweep.overrides)}")
        if common:
            print(f"  every run: {_shown(common)}")
        for job in sweep.jobs:
            number += 1
            print(f"  {number:>4}  {_shown([o for o in job if o not in common]) or '(no overrides)'}")
    print(f"\n{total} runs")


def _shown(overrides: list[str]) -> str:
    """Overrides as the user wrote them: Hydra's sweeper escapes the braces of an interpolation."""
    return " ".join(overrides).replace("\\{", "{").replace("\\}", "}")


def _quoted(value: str) -> str:
    """A Hydra override value in single quotes (check_out refuses backslashes and `$`)."""
    return "'" + value.replace("'", "\\'") + "'"


def check_out(out: Path, table: str, resume: bool = False) -> None:
    """The output folder must be new (or empty) and creatable: a table never mixes with older runs.
    With `resume` it must instead hold this table's earlier start (its reproduce.json)."""
    if any(c in str(out) for c in "\\$"):
        raise ConfigError(f"--out {out}: backslashes and '$' are not allowed in the folder name")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if resume:
        try:
            earlier = json.loads((out / "reproduce.json").read_text()).get("table")
        except (OSError, ValueError, AttributeError):
            earlier = None
        if earlier != table:
            raise ConfigError(f"--resume: {out} holds no earlier run of table {table} (no reproduce.json of it); "
                              "give the --out of that run")
        return
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: the folder is not empty; choose a new one so no earlier run is overwritten "
                          "or mixed into this table's report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror})") from None


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
    from imbalance_bench.report import metric_choices

    args = build_parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if args.resume and not args.out:
        fail("--resume needs --out DIR: the folder of the table to finish")
    out = Path(args.out) if args.out else Path("multirun") / args.table / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        metric_choices(args.metric)
        texts = with_out(args.sweep, out)
        sweeps = plan([parse_sweep(s) for s in texts], parse_seeds(args.seeds), args.overrides, out)
        missing, notes = check_data(sweeps)
        if not args.dry_run:
            if missing:
                raise DataError(missing)
            check_out(out, args.table, args.resume)
    except ImbenchError as exc:
        fail(str(exc))
    print_plan(args.table, sweeps, out)
    sys.stdout.flush()  # the plan, then the lines about its data below it
    for note in notes:
        sys.stderr.write(f"{PROG}: note: {note}\n")
    if missing:  # a dry run only
        sys.stderr.write(f"{PROG}: warning: {missing}\n")
    if args.dry_run:
        return
    started = datetime.now().isoformat(timespec="seconds")
    records: list[dict] = []
    interrupted = False
    try:
        for sweep in sweeps:
            records.append(run_sweep(sweep, out))
    except KeyboardInterrupt:
        interrupted = True
    write_summary(out, args.table, started, records, interrupted)
    report_ok = write_table_report(out, [s.name for s in sweeps], args.metric, args.table)
    if interrupted:
        sys.stderr.write(f"{PROG}: interrupted after {len(records)} of {len(sweeps)} finished sweep(s); "
                         f"what finished is in {out} (reproduce.json, report.md)\n")
        raise SystemExit(EXIT_TABLE_INTERRUPTED)
    failed = [r["name"] for r in records if r["exit_code"] != 0 or r["completed"] < r["runs"]]
    total = sum(r["wall_seconds"] for r in records)
    print(f"\n{args.table}: {sum(r['completed'] for r in records)}/{sum(r['runs'] for r in records)} runs completed "
          f"in {total / 60:.1f} min; sweeps with failed runs: {', '.join(failed) or 'none'}; results in {out}")
    if failed or not report_ok:
        raise SystemExit(EXIT_TABLE_RUN_FAILED)


def write_summary(out: Path, table: str, started: str, records: list[dict], interrupted: bool) -> None:
    from imbalance_bench.runfiles import write_json

    write_json(out / "reproduce.json", {"table": table, "started": started,
                                        "finished": datetime.now().isoformat(timespec="seconds"),
                                        "interrupted": interrupted, "sweeps": records})


def write_table_report(out: Path, sweep_names: list[str], metrics: list[str] | None, table: str) -> bool:
    """imbench-report over the table's sweep folders, compared with the table's own published numbers
    when a reference of that name exists; False (one line on stderr) when nothing could be reported."""
    from imbalance_bench.reference import reference_names
    from imbalance_bench.report import write_report

    folders = [out / name for name in sweep_names if (out / name).is_dir()]
    references = [table] if table in reference_names() else None
    try:
        if not folders:
            raise ImbenchError("no sweep folder was written")
        result = write_report(folders, out, "last", metrics or "auto", references)
    except ImbenchError as exc:
        sys.stderr.write(f"{PROG}: report: {exc}\n")
        return False
    print(f"report: {', '.join(result.files)} in {out}")
    return True


if __name__ == "__main__":
    main()
