"""The paper-style report over many run directories behind `imbench-report` (report_cli.py): tables
(report.md, report.csv) and plots.

Only the standard library is imported here; matplotlib (plots), PyYAML (configs, reference
tables), runfiles and checkpoint (which import torch) are imported where they are used.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from imbalance_bench.summary import GREEK, format_number


# ------------------------------------------------------------------ imbench-report: paper-style tables
#
# collect runs (read_run) and the sweeps' failed jobs (sweep_jobs) -> group into rows x columns
# (run_groups, build_tables) -> aggregate seeds (aggregate) -> format (format_cell, format_markdown,
# csv_rows) -> write (write_report, with the plots).

METRICS = ("top1_error", "top1", "many_shot_top1", "medium_shot_top1", "few_shot_top1", "mean_f2", "map")
METRIC_TITLES = {
    "top1_error": "Top-1 error (%)",
    "top1": "Top-1 accuracy (%)",
    "many_shot_top1": "Many-shot top-1 accuracy (%)",
    "medium_shot_top1": "Medium-shot top-1 accuracy (%)",
    "few_shot_top1": "Few-shot top-1 accuracy (%)",
    "mean_f2": "Mean F2 (%)",
    "map": "mAP (%)",
}
EPOCH_RECORDS = {"last": "final", "best": "best"}
MISSING = "—"
# Hyper-parameters shown in a method's label even when every run shares them.
ALWAYS_SHOWN = {"loss.gamma", "loss.base", "reweight.beta"}
# Config keys left out when runs are grouped: those that do not change a result (with checkpoint.py's
# RESUME_MAY_DIFFER: trainer.resume, device, num_workers, progress_bar), and those a row or column
# holds whole (every loss.* / reweight.* / sampler.* key is in the row's method; model.name is its model; the
# column is the dataset (its name; dataset._target_ names its class), imbalance factor and profile). Any other model.* key (pretrained, ...) splits.
NOT_COMPARED = re.compile(
    r"^(seed|hydra\..*|dataset\.(root|download)|trainer\.eval_batch_size|"
    r"dataset\.(_target_|name|imbalance_factor|imbalance_type)|model\.name|loss\..*|reweight\..*|sampler\..*|stage\..*)$"
)
# What runs of one config must also share to be averaged: train subset, epochs and steps completed.
RUN_FACTS = ("subset_sha256", "epochs_completed", "steps")
METHOD_GROUPS = ("loss", "reweight", "sampler", "stage")  # the groups whose options and keys make a run's method
NOT_METHOD = ("name", "_target_", "_recursive_", "init_from")  # a stage-2 run's stage 1 differs with its seed
UNSET = "<unset>"  # a config key some runs of a group have and this one does not
SWEEP_SUMMARY = "sweep.json"  # written by imbench at the end of a sweep (cli.py, SweepReport)
CSV_COLUMNS = (
    "metric", "epoch", "method", "dataset", "imbalance_factor", "imbalance_type", "n", "mean", "std", "seeds",
    "reference", "reference_row", "reference_value", "delta", "subsets", "runs",
)


@dataclass(frozen=True)
class Column:
    """One table column: a dataset at one imbalance factor and profile (None = the full dataset)."""

    dataset: str
    imbalance_factor: float | None
    imbalance_type: str | None

    @property
    def label(self) -> str:
        if self.imbalance_factor is None:
            return f"{self.dataset} (full)"
        text = f"{self.dataset} IF {format_number(self.imbalance_factor)}"
        return text + " step" if self.imbalance_type == "step" else text

    @property
    def slug(self) -> str:
        return safe_name(self.label.replace(" IF ", "_if").replace(" ", "_"))


@dataclass
class Run:
    path: Path
    metrics: dict
    stats: dict
    config: dict
    method: dict  # model, loss, reweight, sampler, drw, drs and their <group>.<key>: the row's identity

    @property
    def seed(self):
        return self.metrics.get("seed")

    @property
    def column(self) -> Column:
        return column_of(self.metrics, self.stats, self.config)

    @cached_property
    def compared(self) -> dict[str, Any]:
        """The resolved config, flattened, less the keys runs may differ in and still be averaged
        (NOT_COMPARED, RESUME_MAY_DIFFER); a key added to the config after a run was written holds
        the value it had (ADDED_KEYS), so older runs still group with newer ones."""
        from imbalance_bench.checkpoint import RESUME_MAY_DIFFER, with_added_keys

        flat = with_added_keys(flatten(self.config))
        return {k: v for k, v in flat.items() if k not in RESUME_MAY_DIFFER and not NOT_COMPARED.match(k)}

    def fact(self, key: str):
        """A RUN_FACTS value: the train subset from dataset_stats.json, epochs and steps from metrics.json."""
        return self.stats.get(key) if key == "subset_sha256" else self.metrics.get(key)


@dataclass
class Skipped:
    path: Path
    reason: str
    damaged: bool = False  # a file that is there but cannot be read as it should: warned about by name


@dataclass
class Cell:
    runs: list[Run] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    reference: tuple[str, str, float] | None = None  # (tag, row label, value)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return aggregate(self.values)[0]

    @property
    def std(self) -> float | None:
        return aggregate(self.values)[1]

    @property
    def delta(self) -> float | None:
        if self.reference is None or not self.values:
            return None
        return self.mean - self.reference[2]


@dataclass
class Table:
    metric: str
    rows: dict[tuple, str]  # row key -> method label
    columns: list[Column]
    cells: dict[tuple, Cell]  # (row key, column) -> cell
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ collect


def safe_name(text: str) -> str:
    """A file-name-safe version of `text` (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unnamed"


def find_run_dirs(root: Path) -> list[Path]:
    """Every folder under `root` (itself included) holding `metrics.json` or `.hydra/config.yaml`."""
    root = Path(root)
    found = {p.parent for p in root.rglob("metrics.json")}
    found |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    return sorted(found)


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def flatten(node, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def method_keys(metrics: dict, config: dict) -> dict:
    """A run's method: model, loss, reweight, sampler, whether re-weighting (DRW) or re-sampling (DRS)
    is deferred, and every loss.<key> / reweight.<key> / sampler.<key> of the resolved config
    (hyper-parameters: focal gamma, cb beta, ...), with the keys added since the run was written at
    the value they had (a run from before re-sampling drew instances)."""
    from imbalance_bench.checkpoint import with_added_keys

    keys = {"model": metrics.get("model"), "loss": metrics.get("loss"), "reweight": metrics.get("reweight"),
            "sampler": metrics.get("sampler", "instance"), "stage": (config.get("stage") or {}).get("name", "none")}
    for key, value in with_added_keys(flatten(config)).items():
        group, _, rest = key.partition(".")
        if group in METHOD_GROUPS and rest not in NOT_METHOD:
            keys[key] = value
    keys["drw"] = (keys.get("reweight.start_epoch") or 0) > 0 and keys["reweight"] != "none"
    keys["drs"] = (keys.get("sampler.start_epoch") or 0) > 0 and keys["sampler"] != "instance"
    stage1 = (metrics.get("stage1") or {}).get("method")
    if isinstance(stage1, dict):  # a decoupled stage: the method of the run it started from
        keys["stage1"] = " + ".join(str(stage1[k]) for k in ("loss", "reweight", "sampler")
                                    if stage1.get(k) not in (None, "none", "instance"))
    return keys


def column_of(metrics: dict, stats: dict, config: dict) -> Column:
    """The run's column: dataset name, imbalance factor and profile (from dataset_stats.json,
    else the config). At IF 1 both profiles are the balanced set, so they share one column."""
    dataset_cfg = config.get("dataset") or {}
    factor = stats.get("imbalance_factor", dataset_cfg.get("imbalance_factor"))
    kind = stats.get("imbalance_type", dataset_cfg.get("imbalance_type")) or "exp"
    if factor is None:
        return Column(metrics["dataset"], None, None)
    factor = float(factor)
    return Column(metrics["dataset"], factor, "exp" if factor == 1 else kind)


def malformed_metrics(metrics: dict) -> str | None:
    """What in a metrics.json record does not have the type the report reads (docs: README, Run
    outputs), or None: a hand-edited or foreign file is skipped, not a crash half-way through a report."""
    def number(value) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    for key in ("dataset", "model", "loss", "reweight", "label_kind", "monitor"):
        if key in metrics and not isinstance(metrics[key], str):
            return f"{key} is {metrics[key]!r}, not a string"
    if not number(metrics.get("seed")):
        return f"seed is {metrics['seed']!r}, not a number"
    for key in ("config",):
        if key in metrics and not isinstance(metrics[key], dict):
            return f"{key} is not an object"
    def malformed_record(name: str, record) -> str | None:
        if not isinstance(record, dict):
            return f"{name} is {record!r}, not an object"
        for key, value in record.items():
            if key == "logit_adjusted":  # the same metrics, post-hoc adjusted
                problem = malformed_record(f"{name}.{key}", value)
                if problem is not None:
                    return problem
                continue
            values = value if isinstance(value, list) else [value]
            if key != "loss_state" and not all(number(v) for v in values):
                return f"{name}.{key} is {value!r}, not a number"
        return None

    for record_key in ("final", "best"):
        if metrics.get(record_key) is not None:
            problem = malformed_record(record_key, metrics[record_key])
            if problem is not None:
                return problem
    return None


def read_run(path: Path) -> Run | Skipped:
    """One run directory, or the reason it cannot enter the table."""
    path = Path(path)
    if not (path / "metrics.json").exists():
        return Skipped(path, "no metrics.json (still running, crashed or interrupted)")
    try:
        metrics = _read_json(path / "metrics.json")
    except (OSError, ValueError) as exc:
        return Skipped(path, f"unreadable metrics.json: {str(exc).splitlines()[0]}", damaged=True)
    problem = malformed_metrics(metrics)
    if problem is not None:
        return Skipped(path, f"malformed metrics.json: {problem}", damaged=True)
    if metrics.get("schema_version") != 1:
        return Skipped(path, f"metrics.json schema_version {metrics.get('schema_version')!r} (this report reads 1)")
    if metrics.get("status") != "completed":
        return Skipped(path, f"status {metrics.get('status')!r}, not 'completed'")
    stats, config = {}, {}
    if (path / "dataset_stats.json").exists():
        try:
            stats = _read_json(path / "dataset_stats.json")
        except (OSError, ValueError) as exc:
            return Skipped(path, f"unreadable dataset_stats.json: {str(exc).splitlines()[0]}", damaged=True)
    if isinstance(metrics.get("config"), dict):
        config = metrics["config"]  # resolved; .hydra/config.yaml keeps interpolations such as ${oc.env:...}
    elif (path / ".hydra" / "config.yaml").exists():
        import yaml

        try:
            config = yaml.safe_load((path / ".hydra" / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            return Skipped(path, f"unreadable .hydra/config.yaml: {str(exc).splitlines()[0]}", damaged=True)
        if not isinstance(config, dict):
            return Skipped(path, "malformed .hydra/config.yaml: not a mapping", damaged=True)
    return Run(path, metrics, stats, config, method_keys(metrics, config))


def post_hoc_adjusted(run: Run) -> list[Run]:
    """A run evaluated with post-hoc logit adjustment (metrics.logit_adjust_tau) as a row of its own:
    its adjusted scores (z - tau log pi, Menon et al. 2021) under the method `+ post-hoc LA tau=...`.
    Its epochs are the run's, the best one chosen by the raw scores' monitor."""
    final, best = run.metrics.get("final") or {}, run.metrics.get("best") or {}
    adjusted = final.get("logit_adjusted")
    if not isinstance(adjusted, dict):
        return []
    records = {key: {"epoch": record.get("epoch"), **(record.get("logit_adjusted") or {})}
               for key, record in (("final", final), ("best", best))}
    return [dataclasses.replace(run, metrics={**run.metrics, **records},
                                method={**run.method, "posthoc_tau": adjusted.get("tau")})]


def malformed_sweep(data) -> str | None:
    """What in a sweep.json record does not have the shape imbench writes (cli.py, record_job), or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    jobs = data.get("jobs")
    if not isinstance(jobs, list):
        return "jobs is not a list"
    for n, job in enumerate(jobs):
        if not isinstance(job, dict):
            return f"jobs[{n}] is not an object"
        for key, kinds in (("dir", str), ("outcome", str), ("error", (str, type(None))), ("job", (int, type(None)))):
            if not isinstance(job.get(key), kinds) or isinstance(job.get(key), bool):
                return f"jobs[{n}].{key} is {job.get(key)!r}"
        if "\x00" in job["dir"]:
            return f"jobs[{n}].dir holds a NUL character"
    return None


def sweep_jobs(roots: list[Path]) -> tuple[dict[Path, Skipped], list[str]]:
    """The failed and stopped jobs of every sweep.json under `roots` (resolved job folder -> its
    Skipped entry, with the job's one-line reason), and a warning for each sweep.json that cannot be
    read. A job's folder is taken inside the folder of its sweep.json, so a moved sweep still matches."""
    jobs: dict[Path, Skipped] = {}
    warnings: list[str] = []
    found = {p.resolve(): p for root in roots for p in sorted(Path(root).rglob(SWEEP_SUMMARY)) if p.is_file()}
    for resolved, summary in found.items():
        try:
            data = _read_json(summary)
        except (OSError, ValueError) as exc:
            problem = f"unreadable {SWEEP_SUMMARY}: {str(exc).splitlines()[0]}"
        else:
            problem = malformed_sweep(data)
            problem = problem and f"malformed {SWEEP_SUMMARY}: {problem}"
        if problem:
            warnings.append(f"{summary}: {problem}; its job outcomes are not shown")
            continue
        for job in data["jobs"]:
            if job["outcome"] not in ("failed", "stopped"):
                continue
            folder = (resolved.parent / job["dir"]).resolve()  # an absolute dir stays itself
            inside = folder.relative_to(resolved.parent) if folder.is_relative_to(resolved.parent) else folder.name
            folder = summary.parent / inside
            number = "" if job.get("job") is None else f"#{job['job']} "
            error = (job.get("error") or "").strip().splitlines()
            reason = f"job {number}{job['outcome']}" + (f": {error[0]}" if error else " (no reason recorded)")
            jobs[folder.resolve()] = Skipped(folder, reason)
    return jobs, warnings


# ------------------------------------------------------------------ group and aggregate


def metric_choices(metric: str | list[str] | None) -> list[str]:
    """`--metric` as a list (one choice or several, None = auto), each checked: a bad one stops with
    one line naming it and the allowed choices."""
    from imbalance_bench.errors import ImbenchError

    choices = [metric] if isinstance(metric, str) else list(metric or ["auto"])
    for choice in choices:
        if choice != "auto" and choice not in METRICS:
            raise ImbenchError(f"--metric {choice}: choose auto, {', '.join(METRICS)}")
    return choices


def resolve_metric(choice: str, label_kind: str) -> str:
    """`auto` is top-1 error for single-label runs and mAP for multi-label runs."""
    if choice != "auto":
        return choice
    return "map" if label_kind == "multi" else "top1_error"


def metric_value(record: dict, metric: str) -> float | None:
    """The metric in percent from a metrics.json epoch record; None when it is not recorded."""
    key = "top1" if metric == "top1_error" else metric
    value = record.get(key)
    if value is None:
        return None
    return 100.0 * (1.0 - value) if metric == "top1_error" else 100.0 * value


def aggregate(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation); the std is None for fewer than two values."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def method_labels(methods: list[dict]) -> list[str]:
    """Short row labels: loss (+ hyper-parameters) + reweighting (+ DRW) + re-sampling (+ DRS), e.g.
    `focal γ=0.5 + cb β=0.9999 DRW@160`, `ce + class_balanced sampling DRS@160`. A hyper-parameter
    is shown when it is in ALWAYS_SHOWN or differs between runs of the same loss (resp. reweighting);
    the model when runs used several."""
    varying = set()
    for group in METHOD_GROUPS:
        by_name: dict[str, list[dict]] = {}
        for m in methods:
            by_name.setdefault(m[group], []).append(m)
        for same in by_name.values():
            keys = {k for m in same for k in m if k.startswith(group + ".")}
            varying |= {(group, same[0][group], k) for k in keys if len({repr(m.get(k)) for m in same}) > 1}
    several_models = len({m["model"] for m in methods}) > 1

    def params(m: dict, group: str) -> str:
        shown = []
        for key in sorted(k for k in m if k.startswith(group + ".") and k != f"{group}.start_epoch"):
            if key in ALWAYS_SHOWN or (group, m[group], key) in varying:
                short = key.split(".", 1)[1]
                shown.append(f"{GREEK.get(short, short)}={_value(m[key])}")
        return (" " + " ".join(shown)) if shown else ""

    labels = []
    for m in methods:
        text = str(m["loss"]) + params(m, "loss")
        if m["reweight"] not in (None, "none"):
            text += f" + {m['reweight']}" + params(m, "reweight")
            if m.get("drw"):
                text += f" DRW@{m['reweight.start_epoch']}"
        if m.get("sampler") not in (None, "instance"):
            text += f" + {m['sampler']} sampling" + params(m, "sampler")
            if m.get("drs"):
                text += f" DRS@{m['sampler.start_epoch']}"
        if m.get("stage") not in (None, "none"):
            text += f" → {m['stage']}" + params(m, "stage") + (f" (of {m['stage1']})" if m.get("stage1") else "")
        if m.get("posthoc_tau") is not None:
            text += f" + post-hoc LA τ={_value(m['posthoc_tau'])}"
        if several_models:
            text += f" [{m['model']}]"
        labels.append(text)
    return labels


def _value(value) -> str:
    return format_number(value) if isinstance(value, float) else str(value)


def _row_key(method: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in method.items()))


def _same_as(value) -> str:
    """What a config value is compared by: numbers by value (1 == 1.0), lists item by item."""
    def canonical(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        return tuple(map(canonical, v)) if isinstance(v, (list, tuple)) else v

    return repr(canonical(value))


def _override(value) -> str:
    """A config value as a Hydra override writes it: null, true, 300, 0.0002, [0.5, 0.5]."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return format_number(value) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_override, value)) + "]"
    return str(value)


def _split(runs: list[Run], value_of, keys, apart: dict[int, list]) -> None:
    """For each key on which `runs` differ, add (key, compared-by, value) to apart[id(run)] of every
    run whose value is not the one most of them hold (on a tie no value is the common one)."""
    for key in keys:
        values = {id(r): value_of(r, key) for r in runs}
        same_as = {i: _same_as(v) for i, v in values.items()}
        counts = Counter(same_as.values()).most_common()
        if len(counts) < 2:
            continue
        common = counts[0][0] if counts[0][1] > counts[1][1] else None
        for run in runs:
            if same_as[id(run)] != common:
                apart[id(run)].append((key, same_as[id(run)], values[id(run)]))


def run_groups(runs: list[Run]) -> dict[int, tuple]:
    """id(run) -> what sets its group apart from the other runs of its method: ((key, compared-by,
    value), ...), empty for the common setting. Runs are averaged only when they differ in the seed
    alone, so a method's runs split (1) by every compared config key (Run.compared) on which its runs
    on the same dataset differ (the datasets' own presets may differ), then (2) within a column by
    train subset, epochs completed and steps (RUN_FACTS) where the config does not already tell them
    apart. A group is set apart by the keys where its value is not the one most of those runs hold."""
    apart: dict[int, list] = {id(r): [] for r in runs}
    by_dataset: dict[tuple, list[Run]] = {}
    for run in runs:
        by_dataset.setdefault((_row_key(run.method), run.metrics["dataset"]), []).append(run)
    for same in by_dataset.values():
        keys = sorted({k for r in same for k in r.compared})
        _split(same, lambda r, k: r.compared.get(k, UNSET), keys, apart)
    by_cell: dict[tuple, list[Run]] = {}
    for run in runs:
        by_cell.setdefault((_row_key(run.method), _group_key(apart[id(run)]), run.column), []).append(run)
    for same in by_cell.values():
        _split(same, Run.fact, RUN_FACTS, apart)
    return {i: tuple(pairs) for i, pairs in apart.items()}


def _group_key(pairs) -> tuple:
    return tuple((key, same_as) for key, same_as, _ in pairs)


def group_label(pairs) -> str:
    """` [dataset.limit_train=300, trainer.max_steps=5]`, ` [subset 1a2b3c4d]`, ` [steps=5]`: what
    sets a group of runs apart from its method's common setting; empty for that setting."""
    parts = []
    for key, _, value in pairs:
        if key == "subset_sha256":
            parts.append(f"subset {value[:8]}" if isinstance(value, str) and value else "subset unknown")
        elif key in RUN_FACTS:
            parts.append(f"{key.split('_')[0]}={_override(value)}")
        elif value == UNSET:
            parts.append(f"{key} unset")
        else:
            parts.append(f"{key}={_override(value)}")
    return f" [{', '.join(parts)}]" if parts else ""


def build_tables(runs: list[Run], epoch: str = "last", metric: str | list[str] | None = "auto",
                 references: list[dict] | None = None) -> tuple[list[Table], list[Skipped]]:
    """Group runs into one table per metric (one or several choices; `auto` resolves per run and
    choices that resolve alike give one table): rows = methods, one per group of runs that differ in
    the seed alone (run_groups), columns = dataset x imbalance factor, cells = the runs' values (seeds)
    at the last or best epoch, with the published value beside (matched by the method, as reference/
    says: a split row of a method is compared with the same published row).
    A run is skipped for each metric it does not record, and may still be in another metric's table."""
    from imbalance_bench.reference import lookup

    choices = metric_choices(metric)
    record_key = EPOCH_RECORDS[epoch]
    skipped: list[Skipped] = []
    by_metric: dict[str, list[tuple[Run, float]]] = {}
    for run in runs:
        label_kind = run.metrics.get("label_kind", "single")
        resolved = {resolve_metric(choice, label_kind) for choice in choices}
        for name in [m for m in METRICS if m in resolved]:
            value = metric_value(run.metrics.get(record_key) or {}, name)
            if value is None:
                skipped.append(Skipped(run.path, f"{name} not recorded in `{record_key}` ({run.metrics.get('label_kind')}-label run)"))
            else:
                by_metric.setdefault(name, []).append((run, value))

    groups = run_groups(runs)  # over every run, so that a run has the same row in each table

    def row_of(run: Run) -> tuple:
        return _row_key(run.method), _group_key(groups[id(run)])

    tables = []
    for name in [m for m in METRICS if m in by_metric]:
        entries = by_metric[name]
        unique: dict[tuple, Run] = {}
        for run, _ in entries:
            unique.setdefault(row_of(run), run)
        methods = method_labels([run.method for run in unique.values()])
        labels = {row: text + group_label(groups[id(run)]) for (row, run), text in zip(unique.items(), methods)}
        rows = dict(sorted(labels.items(), key=lambda kv: kv[1]))
        columns = sorted({run.column for run, _ in entries},
                         key=lambda c: (c.dataset, c.imbalance_type or "", -(c.imbalance_factor or math.inf)))
        cells = {(row, col): Cell() for row in rows for col in columns}
        for run, value in entries:
            cell = cells[(row_of(run), run.column)]
            cell.runs.append(run)
            cell.values.append(value)
        for (row, col), cell in cells.items():
            for ref in references or []:
                if ref["metric"] != name:
                    continue
                found = lookup(ref, unique[row].method, col.dataset, col.imbalance_type or "exp", col.imbalance_factor)
                if found is not None:
                    cell.reference = (ref["tag"], found[1], found[0])
                    break
        table = Table(name, rows, columns, cells)
        table.notes = table_notes(table)
        tables.append(table)
    return tables, skipped


def reported_runs(tables: list[Table]) -> dict[Path, Run]:
    """The run directories in any table, once each (a run is in every table of a metric it records,
    and a run scored post hoc is in two rows)."""
    return {r.path: r for t in tables for c in t.cells.values() for r in c.runs}


def skip_counts(tables: list[Table], skipped: list[Skipped]) -> tuple[int, int]:
    """(run directories in no table, runs left out of some table only): with several metrics a run
    can be skipped for one and reported in another, and each directory counts once."""
    in_tables = {r.path for r in reported_runs(tables).values()}
    paths = {s.path for s in skipped}
    return len(paths - in_tables), len(paths & in_tables)


def skip_summary(tables: list[Table], skipped: list[Skipped]) -> str:
    """`2 skipped` or `2 skipped, 3 left out of a table (metric not recorded)`."""
    whole, partial = skip_counts(tables, skipped)
    return f"{whole} skipped" + (f", {partial} left out of a table (metric not recorded)" if partial else "")


def table_notes(table: Table) -> list[str]:
    """Warnings a reader needs: columns whose rows used different train subsets (a cell's runs
    share one: run_groups), and seeds that ran twice."""
    notes = []
    for col in table.columns:
        subsets: dict[str, list[str]] = {}
        for row, label in table.rows.items():
            for sha in dict.fromkeys(r.stats.get("subset_sha256") or "unknown" for r in table.cells[(row, col)].runs):
                subsets.setdefault(sha, []).append(label)
        if len(subsets) > 1:
            parts = "; ".join(f"{sha[:12]}: {', '.join(labels)}" for sha, labels in sorted(subsets.items()))
            notes.append(f"{col.label}: the rows used {len(subsets)} different train subsets (subset_sha256 {parts})")
    for (row, col), cell in table.cells.items():
        seeds = [r.seed for r in cell.runs]
        repeated = sorted({repr(s) for s in seeds if seeds.count(s) > 1})
        if repeated:
            notes.append(f"{table.rows[row]} / {col.label}: seed {', '.join(repeated)} ran more than once; "
                         "each run counts in the mean")
    return notes


# ------------------------------------------------------------------ format


def _in_table(text: str) -> str:
    """Text for a Markdown table cell: a `|` in it (a job's error may hold one) would end the cell."""
    return text.replace("|", "\\|")


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def format_cell(cell: Cell) -> str:
    """`29.64 ± 0.31 (n=3) [Cui19: 29.64, Δ +0.00]`; `—` when no run, with the published value if any."""
    if not cell.values:
        text = MISSING
    elif cell.n == 1:
        text = f"{cell.mean:.2f}"
    else:
        text = f"{cell.mean:.2f} ± {cell.std:.2f} (n={cell.n})"
    if cell.reference is not None:
        tag, _, value = cell.reference
        text += f" [{tag}: {value:.2f}" + (f", Δ {_signed(cell.delta)}]" if cell.values else "]")
    return text


def epoch_statement(epoch: str, monitors: set[str]) -> str:
    if epoch == "last":
        return ("Cells are **last-epoch** values (`final` in metrics.json), as Cui et al. (2019) report.")
    return ("Cells are **best-epoch** values (`best` in metrics.json): the epoch with the highest test "
            f"{'/'.join(sorted(monitors)) or 'monitor'}, chosen **on the test split** — optimistic; "
            "the published numbers are last-epoch.")


def format_markdown(tables: list[Table], skipped: list[Skipped], epoch: str, references: list[dict],
                    plots: list[str], sources: list[str], warnings: list[str] | None = None) -> str:
    """report.md: one table per metric, its notes, the plots, the skipped runs (and the sweep.json
    files that could not be read) and the sources."""
    runs = reported_runs(tables)
    monitors = {r.metrics.get("monitor", "") for r in runs.values()}
    lines = [
        "# imbench report",
        "",
        f"{len(runs)} run(s) from {', '.join(f'`{s}`' for s in sources)}; {skip_summary(tables, skipped)}"
        + (" (listed below)." if skipped else "."),
        "",
        epoch_statement(epoch, monitors),
        "Each cell is the mean ± sample standard deviation over the runs (seeds) of that row and column, "
        f"with n when more than one ran; `{MISSING}` marks a cell without a run. "
        "A cell's runs differ in the seed alone (config, train subset, epochs and steps): runs of a method "
        "that differ in more are rows of their own, `[key=value, ...]` naming what sets them apart. "
        "`[Tag: value, Δ d]` is the published number and d = ours − published.",
    ]
    for table in tables:
        lines += ["", f"## {METRIC_TITLES[table.metric]}", ""]
        lines.append("| method | " + " | ".join(c.label for c in table.columns) + " |")
        lines.append("|---" * (len(table.columns) + 1) + "|")
        for row, label in table.rows.items():
            lines.append(f"| {label} | " + " | ".join(format_cell(table.cells[(row, c)]) for c in table.columns) + " |")
        matched = sorted({(c.reference[0], c.reference[1], table.rows[r])
                          for (r, _), c in table.cells.items() if c.reference})
        if matched:
            lines += ["", "Published rows compared: " + "; ".join(f"{label} ↔ {tag} “{ref}”" for tag, ref, label in matched) + "."]
        if table.notes:
            lines += ["", "**Notes**", ""] + [f"- {note}" for note in table.notes]
    if plots:
        lines += ["", "## Plots", ""] + [f"- [{p}]({p})" for p in plots]
    if skipped:
        lines += ["", "## Skipped run directories", "", "| run | reason |", "|---|---|"]
        lines += [f"| `{s.path}` | {_in_table(s.reason)} |" for s in skipped]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    used = [r for r in references if any(c.reference and c.reference[0] == r["tag"] for t in tables for c in t.cells.values())]
    if used:
        lines += ["", "## Published numbers", ""]
        for ref in used:
            src = ref["source"]
            lines.append(f"- **{ref['tag']}** ({ref['name']}): {src['paper'].strip()} {src['table']}, {src['url']}")
    return "\n".join(lines) + "\n"


def csv_rows(tables: list[Table], epoch: str) -> list[dict]:
    """report.csv: one row per (metric, method, column), missing cells included with n = 0."""
    out = []
    for table in tables:
        for row, label in table.rows.items():
            for col in table.columns:
                cell = table.cells[(row, col)]
                ref = cell.reference
                out.append({
                    "metric": table.metric,
                    "epoch": epoch,
                    "method": label,
                    "dataset": col.dataset,
                    "imbalance_factor": "" if col.imbalance_factor is None else format_number(col.imbalance_factor),
                    "imbalance_type": col.imbalance_type or "",
                    "n": cell.n,
                    "mean": "" if cell.mean is None else f"{cell.mean:.4f}",
                    "std": "" if cell.std is None else f"{cell.std:.4f}",
                    "seeds": " ".join(str(r.seed) for r in cell.runs),
                    "reference": ref[0] if ref else "",
                    "reference_row": ref[1] if ref else "",
                    "reference_value": f"{ref[2]:.2f}" if ref else "",
                    "delta": "" if cell.delta is None else f"{cell.delta:.4f}",
                    "subsets": len({r.stats.get("subset_sha256") for r in cell.runs}),
                    "runs": " ".join(str(r.path) for r in cell.runs),
                })
    return out


def format_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# ------------------------------------------------------------------ plots


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def per_class_series(table: Table, col: Column, epoch: str) -> list[tuple[str, list[int], list[float]]]:
    """(row, train counts, per-class accuracy or AP in % averaged over the row's seeds) for one
    column: one series per row, i.e. per group of runs that differ in the seed alone, on that
    group's own train counts; classes without a value (absent from the test split) are left out."""
    series = []
    for row, label in table.rows.items():
        runs = [r for r in table.cells[(row, col)].runs if r.stats.get("train_counts")]
        if not runs:
            continue
        counts = runs[0].stats["train_counts"]
        records = [r.metrics.get(EPOCH_RECORDS[epoch]) or {} for r in runs if r.stats["train_counts"] == counts]
        per_class = [rec.get("per_class_accuracy") or rec.get("per_class_ap") for rec in records]
        per_class = [p for p in per_class if p and len(p) == len(counts)]
        if not per_class:
            continue
        xs, ys = [], []
        for cls, count in enumerate(counts):
            values = [p[cls] for p in per_class if p[cls] is not None]
            if values and count > 0:
                xs.append(count)
                ys.append(100.0 * statistics.fmean(values))
        series.append((label, xs, ys))
    return series


def class_count_series(table: Table, col: Column) -> list[tuple[list[str], list[int]]]:
    """(rows, train count of each class) for one column, once per distinct training set: rows that
    trained on other data (e.g. `dataset.limit_train`) get a series of their own."""
    series: dict[tuple, list[str]] = {}
    for row, label in table.rows.items():
        for run in table.cells[(row, col)].runs:
            counts = run.stats.get("train_counts")
            if counts and label not in series.setdefault(tuple(counts), []):
                series[tuple(counts)].append(label)
    return [(labels, list(counts)) for counts, labels in series.items()]


def plot_per_class(table: Table, col: Column, epoch: str) -> bytes | None:
    """Per-class accuracy (or AP) against train count, log-x, one series per row (per_class_series)."""
    series = per_class_series(table, col, epoch)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    multi = any(r.metrics.get("label_kind") == "multi" for row in table.rows for r in table.cells[(row, col)].runs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, xs, ys in series:
        order = sorted(range(len(xs)), key=xs.__getitem__)
        ax.plot([xs[i] for i in order], [ys[i] for i in order], marker="o", markersize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("train images of the class" + (" (positives)" if multi else ""))
    ax.set_ylabel("per-class AP (%)" if multi else "per-class accuracy (%)")
    ax.set_title(col.label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def plot_class_counts(table: Table, col: Column) -> bytes | None:
    """Bar histogram of the train count of each class; with several training sets in the column
    (class_count_series), side-by-side bars on a log axis, one colour per set, labelled by its rows."""
    series = class_count_series(table, col)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for row in table.rows for r in table.cells[(row, col)].runs]
    n_classes = max(len(counts) for _, counts in series)
    names = next((r.stats["class_names"] for r in runs if len(r.stats.get("class_names") or []) == n_classes),
                 [str(i) for i in range(n_classes)])
    fig, ax = plt.subplots(figsize=(max(4.0, min(12.0, 0.35 * n_classes)), 3.6))
    width = 0.8 / len(series)
    for n, (labels, counts) in enumerate(series):
        shift = (n - (len(series) - 1) / 2) * width
        shown = ", ".join(labels[:2]) + (f" and {len(labels) - 2} more" if len(labels) > 2 else "")
        ax.bar([i + shift for i in range(len(counts))], counts, width=width, label=f"{shown}: {sum(counts)} images")
    if len(series) > 1:
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3))  # below: the bars fill the axes
        ax.set_title(f"{col.label}: train images per class")
    else:
        ax.set_title(f"{col.label}: {sum(series[0][1])} train images")
    if n_classes <= 20:
        ax.set_xticks(range(n_classes), names, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("class")
    multi = any(r.metrics.get("label_kind") == "multi" for r in runs)
    ax.set_ylabel("train images" + (" (positives)" if multi else ""))
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def column_table(tables: list[Table], col: Column) -> Table:
    """Every reported run of `col` across the tables, one row per method and group (labelled as in
    the first table listing it): per-class accuracy / AP does not depend on the table's metric, so a
    column's plots are drawn once from all its runs, not once per table."""
    rows: dict[tuple, str] = {}
    cells: dict[tuple, Cell] = {}
    for table in tables:
        if col not in table.columns:
            continue
        for row, label in table.rows.items():
            rows.setdefault(row, label)
            cell = cells.setdefault((row, col), Cell())
            seen = {id(r) for r in cell.runs}
            cell.runs += [r for r in table.cells[(row, col)].runs if id(r) not in seen]
    rows = dict(sorted(rows.items(), key=lambda kv: kv[1]))
    return Table("", rows, [col], cells)


def report_plots(tables: list[Table], epoch: str) -> dict[str, bytes]:
    """File name -> PNG: `per_class_<column>.png` and `class_counts_<column>.png`, once for each
    column of any table."""
    plots: dict[str, bytes] = {}
    for col in dict.fromkeys(col for table in tables for col in table.columns):
        merged = column_table(tables, col)
        png = plot_per_class(merged, col, epoch)
        if png is not None:
            plots[f"per_class_{col.slug}.png"] = png
        png = plot_class_counts(merged, col)
        if png is not None:
            plots[f"class_counts_{col.slug}.png"] = png
    return plots


# ------------------------------------------------------------------ write


@dataclass
class ReportResult:
    out_dir: Path
    tables: list[Table]
    skipped: list[Skipped]
    files: list[str]
    warnings: list[str] = field(default_factory=list)  # sweep.json files that could not be read


def write_report(paths: list[Path], out_dir: Path, epoch: str = "last", metric: str | list[str] | None = "auto",
                 reference_names: list[str] | None = None) -> ReportResult:
    """Read every run directory under `paths` and write report.md, report.csv and the PNG plots
    into `out_dir`, each atomically; `metric` is one choice or several (one table each). The failed
    and stopped jobs of any sweep.json under `paths` are skipped with the job's reason.
    Raises ImbenchError when no run can be reported."""
    from imbalance_bench.errors import ImbenchError
    from imbalance_bench.reference import default_references, load_reference
    from imbalance_bench.runfiles import atomic_write_bytes

    if epoch not in EPOCH_RECORDS:
        raise ImbenchError(f"--epoch {epoch}: choose last or best")
    metric = metric_choices(metric)  # checked before any run is read
    references = [load_reference(n) for n in (default_references() if reference_names is None else reference_names)]
    run_dirs: list[Path] = []
    for path in paths:
        if not Path(path).exists():
            raise ImbenchError(f"{path}: no such file or directory")
        run_dirs += [d for d in find_run_dirs(Path(path)) if d not in run_dirs]
    jobs, warnings = sweep_jobs([Path(p) for p in paths])
    if not run_dirs and not jobs:
        raise ImbenchError(f"no run directories (with metrics.json) under {', '.join(map(str, paths))}")
    read = [read_run(d) for d in run_dirs]
    runs = [each for r in read if isinstance(r, Run) for each in (r, *post_hoc_adjusted(r))]
    # a job the sweep recorded as failed or stopped says why, rather than "no metrics.json"; a damaged
    # file is still named, and a completed run (finished later) is reported
    skipped = [jobs.get(r.path.resolve(), r) if not r.damaged else r for r in read if isinstance(r, Skipped)]
    skipped += [job for folder, job in jobs.items() if folder not in {d.resolve() for d in run_dirs}]
    tables, unusable = build_tables(runs, epoch, metric, references)
    skipped += unusable
    if not tables:
        first = skipped[0]
        raise ImbenchError(f"no completed runs to report under {', '.join(map(str, paths))} "
                           f"({len(skipped)} skipped; {first.path}: {first.reason})")
    plots = report_plots(tables, epoch)
    out_dir = Path(out_dir)
    for name, png in plots.items():
        atomic_write_bytes(out_dir / name, png)
    atomic_write_bytes(out_dir / "report.csv", format_csv(csv_rows(tables, epoch)).encode())
    markdown = format_markdown(tables, skipped, epoch, references, list(plots), [str(p) for p in paths], warnings)
    atomic_write_bytes(out_dir / "report.md", markdown.encode())
    return ReportResult(out_dir, tables, skipped, ["report.md", "report.csv", *plots], warnings)
