"""imbench-report (imbalance_bench/report.py, report_cli.py) and the published tables (reference/)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from imbalance_bench import report
from imbalance_bench.errors import ImbenchError
from imbalance_bench.reference import default_references, load_reference, lookup, reference_names
from imbalance_bench.report import (
    Cell, aggregate, build_tables, column_of, format_cell, method_keys, method_labels, read_run,
    write_report,
)
from imbalance_bench.report_cli import main
from imbalance_bench.summary import format_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CIFAR10_IF10 = [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]


LOSS_CLASSES = {"ce": "softmax_ce.SoftmaxCrossEntropy", "bce": "sigmoid_bce.SigmoidCrossEntropy",
                "focal": "focal.create_focal", "ldam": "ldam.LDAMLoss", "asl": "asl.AsymmetricLoss"}
REWEIGHT_CLASSES = {"none": "Reweighting", "cb": "ClassBalanced", "inverse_freq": "InverseFrequency"}


def loss_cfg(name, **params):
    return {"_target_": f"imbalance_bench.losses.{LOSS_CLASSES[name]}", "name": name, **params}


def reweight_cfg(name="none", **params):
    return {"_target_": f"imbalance_bench.losses.reweight.{REWEIGHT_CLASSES[name]}", "name": name, "start_epoch": 0,
            **params}


def write_run(path: Path, *, seed=0, top1=0.7, best_top1=None, loss=None, reweight=None, dataset="cifar10_lt",
              imbalance_factor=100, imbalance_type="exp", counts=CIFAR10_IF100, subset="a" * 64,
              status="completed", label_kind="single", epochs=200, steps=None, max_steps=None, limit_train=None,
              pretrained=False, trainer=None, completed=None) -> Path:
    """A run directory as `imbench` writes it: metrics.json, dataset_stats.json, .hydra/config.yaml
    (`trainer`: more trainer keys; `completed`: epochs completed, default `epochs`; `steps`: default
    10 a completed epoch)."""
    loss = loss or loss_cfg("ce")
    reweight = reweight or reweight_cfg()
    (path / ".hydra").mkdir(parents=True)
    config = {
        "seed": seed,
        "dataset": {"name": dataset, "root": "data", "imbalance_factor": imbalance_factor,
                    "imbalance_type": imbalance_type, "limit_train": limit_train},
        "model": {"name": "resnet32", "pretrained": pretrained}, "loss": loss, "reweight": reweight,
        "trainer": {"epochs": epochs, "max_steps": max_steps, "device": "auto", **(trainer or {})},
    }
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "dataset_stats.json").write_text(json.dumps({
        "name": dataset, "train_counts": counts, "class_names": [f"c{i}" for i in range(len(counts))],
        "imbalance_factor": imbalance_factor, "imbalance_type": imbalance_type, "subset_sha256": subset,
    }))
    completed = epochs if completed is None else completed
    per_class = [round(top1 + 0.02 * (4 - i), 4) for i in range(len(counts))]
    if label_kind == "multi":
        final = {"epoch": epochs, "map": top1, "mean_f2": top1 - 0.1, "per_class_ap": per_class}
        best = dict(final, map=best_top1 or top1)
    else:
        final = {"epoch": epochs, "top1": top1, "top5": 0.99, "mean_f2": top1, "per_class_accuracy": per_class}
        best = dict(final, epoch=epochs - 10, top1=best_top1 or top1)
    (path / "metrics.json").write_text(json.dumps({
        "schema_version": 1, "status": status, "dataset": dataset, "model": "resnet32", "loss": loss["name"],
        "reweight": reweight["name"], "label_kind": label_kind, "seed": seed,
        "monitor": "map" if label_kind == "multi" else "top1", "monitor_split": "test",
        "epochs_completed": completed, "steps": 10 * completed if steps is None else steps, "final_epoch": epochs, "best_epoch": best["epoch"], "final": final, "best": best,
    }))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A hand-made multirun: CE over 3 seeds (IF 100), CB focal (IF 100 only: its IF 10 cell is
    missing), CE and BCE at IF 10 on different subsets, a diverged run and an unfinished one."""
    root = tmp_path / "multirun"
    for n, (seed, top1) in enumerate([(0, 0.70), (1, 0.71), (2, 0.72)]):
        write_run(root / str(n), seed=seed, top1=top1)
    write_run(root / "3", top1=0.75, loss=loss_cfg("focal", gamma=0.5, softmax=False),
              reweight=reweight_cfg("cb", beta=0.9999))
    write_run(root / "4", top1=0.86, best_top1=0.90, imbalance_factor=10, counts=CIFAR10_IF10, subset="b" * 64)
    write_run(root / "5", top1=0.85, loss=loss_cfg("bce"), imbalance_factor=10, counts=CIFAR10_IF10, subset="c" * 64)
    write_run(root / "6", status="diverged")
    (root / "7" / ".hydra").mkdir(parents=True)
    (root / "7" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    return root


def write_multi_label_runs(root: Path) -> Path:
    """Multi-label runs (metrics.json: map = top1, mean_f2 = top1 - 0.1): BCE over seeds 0 and 1
    (mAP 50, 60; mean F2 40, 50) and ASL once (mAP 70, mean F2 60), all MultiMNIST IF 10."""
    common = dict(dataset="multimnist", imbalance_factor=10, counts=CIFAR10_IF10, label_kind="multi")
    write_run(root / "0", seed=0, top1=0.5, loss=loss_cfg("bce"), **common)
    write_run(root / "1", seed=1, top1=0.6, loss=loss_cfg("bce"), **common)
    write_run(root / "2", seed=0, top1=0.7, loss=loss_cfg("asl"), **common)
    return root


def section(md: str, title: str) -> str:
    """The text of report.md under `## title`, up to the next heading of that level."""
    return md.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ pure functions


def test_aggregate_is_mean_and_sample_std():
    mean, std = aggregate([30.0, 29.0, 28.0])
    assert mean == pytest.approx(29.0) and std == pytest.approx(1.0)  # sample std (n - 1), not 0.816
    assert aggregate([12.5]) == (12.5, None)
    assert aggregate([]) == (None, None)


def test_format_cell():
    cell = Cell(values=[30.0, 29.0, 28.0], reference=("Cui19", "Softmax", 29.64))
    assert format_cell(cell) == "29.00 ± 1.00 (n=3) [Cui19: 29.64, Δ -0.64]"
    assert format_cell(Cell(values=[14.0])) == "14.00"
    assert format_cell(Cell()) == "—"
    assert format_cell(Cell(reference=("Cao19", "CB Focal", 12.9))) == "— [Cao19: 12.90]"


def test_method_labels_show_key_hyper_parameters_and_drw():
    plain = method_keys({"model": "resnet32", "loss": "ce", "reweight": "none"},
                        {"loss": loss_cfg("ce"), "reweight": reweight_cfg()})
    drw = method_keys({"model": "resnet32", "loss": "ce", "reweight": "cb"},
                      {"loss": loss_cfg("ce"), "reweight": reweight_cfg("cb", beta=0.9999, start_epoch=160)})
    focal_a = method_keys({"model": "resnet32", "loss": "focal", "reweight": "none"},
                          {"loss": loss_cfg("focal", gamma=0.5, softmax=False), "reweight": reweight_cfg()})
    focal_b = dict(focal_a, **{"loss.softmax": True})
    assert drw["drw"] is True and plain["drw"] is False
    assert method_labels([plain, drw, focal_a, focal_b]) == [
        "ce", "ce + cb β=0.9999 DRW@160", "focal γ=0.5 softmax=False", "focal γ=0.5 softmax=True",
    ]


def test_columns_merge_profiles_at_if_1():
    assert column_of({"dataset": "cifar10_lt"}, {"imbalance_factor": 1, "imbalance_type": "step"}, {}).label == "cifar10_lt IF 1"
    step = column_of({"dataset": "cifar10_lt"}, {}, {"dataset": {"imbalance_factor": 100.0, "imbalance_type": "step"}})
    assert step.label == "cifar10_lt IF 100 step" and step.slug == "cifar10_lt_if100_step"
    assert column_of({"dataset": "coco"}, {"imbalance_factor": None}, {}).label == "coco (full)"


def test_read_run_gives_reasons(sweep):
    assert read_run(sweep / "6").reason == "status 'diverged', not 'completed'"
    assert read_run(sweep / "7").reason.startswith("no metrics.json")
    (sweep / "0" / "metrics.json").write_text("{not json")
    assert read_run(sweep / "0").reason.startswith("unreadable metrics.json")


def test_build_tables_groups_seeds_and_notes_different_subsets(sweep):
    runs = [read_run(sweep / str(n)) for n in range(6)]
    references = [load_reference(n) for n in default_references()]
    (table,), skipped = build_tables(runs, "last", "auto", references)
    assert skipped == [] and table.metric == "top1_error"
    assert [c.label for c in table.columns] == ["cifar10_lt IF 100", "cifar10_lt IF 10"]
    by_label = {label: row for row, label in table.rows.items()}
    assert set(by_label) == {"ce", "bce", "focal γ=0.5 + cb β=0.9999"}
    ce = table.cells[(by_label["ce"], table.columns[0])]
    assert ce.values == pytest.approx([30.0, 29.0, 28.0]) and ce.std == pytest.approx(1.0)
    assert table.notes == [  # ce's IF 10 run is on another subset than its IF 100 runs, as it should
        "cifar10_lt IF 10: the rows used 2 different train subsets (subset_sha256 bbbbbbbbbbbb: ce; cccccccccccc: bce)"
    ]


def test_a_seed_that_ran_twice_is_noted(tmp_path):
    runs = [read_run(write_run(tmp_path / name, seed=0, top1=top1)) for name, top1 in (("a", 0.7), ("b", 0.8))]
    (table,), _ = build_tables(runs, "last", "auto", [])
    assert list(table.rows.values()) == ["ce"] and table.cells[(next(iter(table.rows)), table.columns[0])].n == 2
    assert table.notes == ["ce / cifar10_lt IF 100: seed 0 ran more than once; each run counts in the mean"]


def test_runs_differing_only_in_seed_and_in_what_does_not_change_a_result_share_a_cell(tmp_path):
    """The seed, the device, DataLoader workers, the progress bar, resuming and the data folder do
    not split a cell."""
    write_run(tmp_path / "0", seed=0, top1=0.70, trainer={"num_workers": 0, "progress_bar": True, "resume": "auto"})
    write_run(tmp_path / "1", seed=1, top1=0.71, trainer={"num_workers": 4, "progress_bar": False, "resume": False,
                                                          "device": "cuda:1"})
    run = write_run(tmp_path / "2", seed=2, top1=0.72,
                    trainer={"num_workers": 2, "progress_bar": True, "resume": "auto"})
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["dataset"]["root"] = "/elsewhere/data"
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (table,), _ = build_tables([read_run(tmp_path / str(n)) for n in range(3)], "last", "auto", [])
    assert list(table.rows.values()) == ["ce"]
    (cell,) = table.cells.values()
    assert cell.n == 3 and cell.mean == pytest.approx(29.0) and cell.std == pytest.approx(1.0)
    assert table.notes == []


def test_the_resolved_config_in_metrics_json_is_what_runs_are_grouped_by(tmp_path):
    """metrics.json's `config` (resolved) wins over .hydra/config.yaml (which keeps ${...} interpolations)."""
    runs = []
    for seed, root in ((0, "/a"), (1, "/b")):
        run = write_run(tmp_path / str(seed), seed=seed)
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["config"] = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        metrics["config"]["dataset"]["root"] = root
        metrics["config"]["trainer"]["max_steps"] = 5 * (seed + 1)
        (run / "metrics.json").write_text(json.dumps(metrics))
        runs.append(read_run(run))
    (table,), _ = build_tables(runs, "last", "auto", [])
    assert sorted(table.rows.values()) == ["ce [trainer.max_steps=10]", "ce [trainer.max_steps=5]"]


def test_a_smoke_run_gets_a_row_of_its_own_in_the_table_csv_and_plots(tmp_path):
    """Two full runs (seeds 0, 1) and a smoke run (`trainer.max_steps=5 dataset.limit_train=300`, on
    its own subset, one epoch): two rows, never one mean of all three."""
    focal_cb = dict(loss=loss_cfg("focal", gamma=2.0), reweight=reweight_cfg("cb", beta=0.9999), epochs=4)
    smoke_counts = [121, 73, 44, 26, 16, 9, 6, 3, 2, 0]
    write_run(tmp_path / "runs" / "0", seed=0, top1=0.70, **focal_cb)
    write_run(tmp_path / "runs" / "1", seed=1, top1=0.72, **focal_cb)
    write_run(tmp_path / "runs" / "2", seed=0, top1=0.10, max_steps=5, limit_train=300, counts=smoke_counts,
              subset="d" * 64, completed=1, steps=5, **focal_cb)
    result = write_report([tmp_path / "runs"], tmp_path / "out", "last", "auto", None)

    full = "focal γ=2 + cb β=0.9999"
    smoke = full + " [dataset.limit_train=300, trainer.max_steps=5]"
    (table,) = result.tables
    by_label = {label: row for row, label in table.rows.items()}
    assert list(by_label) == [full, smoke]
    (col,) = table.columns
    full_cell, smoke_cell = table.cells[(by_label[full], col)], table.cells[(by_label[smoke], col)]
    assert full_cell.n == 2 and full_cell.mean == pytest.approx(29.0) and full_cell.std == pytest.approx(2 ** 0.5)
    assert smoke_cell.n == 1 and smoke_cell.mean == pytest.approx(90.0)
    # the published row is matched by the method (reference/: model, loss, reweight, DRW, hyper-parameters)
    assert full_cell.reference == smoke_cell.reference == ("Cao19", "CB Focal", 25.43)
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"| {full} | 29.00 ± 1.41 (n=2) [Cao19: 25.43, Δ +3.57] |" in md
    assert f"| {smoke} | 90.00 [Cao19: 25.43, Δ +64.57] |" in md
    assert "differ in more than the seed" not in md

    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "report.csv")}
    assert [tuple(rows[m][k] for k in ("n", "mean", "std", "seeds", "subsets")) for m in (full, smoke)] == [
        ("2", "29.0000", "1.4142", "0 1", "1"), ("1", "90.0000", "", "0", "1")]
    assert rows[smoke]["runs"] == str(tmp_path / "runs" / "2")

    merged = report.column_table(result.tables, col)
    series = report.per_class_series(merged, col, "last")
    assert [label for label, _, _ in series] == [full, smoke]
    assert series[0][1] == CIFAR10_IF100  # the full runs' counts, their per-class values averaged over seeds 0, 1
    assert series[0][2] == pytest.approx([100 * (0.71 + 0.02 * (4 - i)) for i in range(10)])
    assert series[1][1] == smoke_counts[:9]  # its own counts; a class without train images is left out
    assert series[1][2] == pytest.approx([100 * (0.10 + 0.02 * (4 - i)) for i in range(9)])
    assert report.class_count_series(merged, col) == [([full], CIFAR10_IF100), ([smoke], smoke_counts)]
    for name in ("per_class_cifar10_lt_if100.png", "class_counts_cifar10_lt_if100.png"):
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG_SIGNATURE)


def test_one_training_set_in_a_column_is_one_class_count_series(sweep):
    runs = [read_run(sweep / str(n)) for n in range(4)]
    (table,), _ = build_tables(runs, "last", "auto", [])
    (col,) = table.columns
    assert report.class_count_series(table, col) == [(["ce", "focal γ=0.5 + cb β=0.9999"], CIFAR10_IF100)]


@pytest.mark.parametrize(("changed", "split_label"), [
    (dict(steps=50), "ce [steps=50]"),
    (dict(completed=150, steps=2000), "ce [epochs=150]"),
    (dict(subset="0123456789" * 6 + "abcd"), "ce [subset 01234567]"),
    (dict(pretrained=True), "ce [model.pretrained=true]"),  # model.name is the row's; its other keys split
    (dict(trainer={"amp": False}), "ce [trainer.amp=false]"),
])
def test_a_run_that_differs_in_more_than_the_seed_is_split_off(tmp_path, changed, split_label):
    """Same config and column, but other steps, epochs completed or train subset (no config key
    explains them), or another config key: a row of its own; the common setting keeps the plain label."""
    runs = [read_run(write_run(tmp_path / "0", seed=0, top1=0.70, trainer={"amp": True})),
            read_run(write_run(tmp_path / "1", seed=1, top1=0.72, trainer={"amp": True})),
            read_run(write_run(tmp_path / "2", seed=2, top1=0.50, **{"trainer": {"amp": True}, **changed}))]
    (table,), _ = build_tables(runs, "last", "auto", [])
    (col,) = table.columns
    assert {label: table.cells[(row, col)].n for row, label in table.rows.items()} == {"ce": 2, split_label: 1}


def test_a_tie_labels_every_group(tmp_path):
    """With as many runs of each setting no value is the common one: both rows name theirs."""
    runs = [read_run(write_run(tmp_path / "a", seed=0)), read_run(write_run(tmp_path / "b", seed=0, epochs=100))]
    (table,), _ = build_tables(runs, "last", "auto", [])
    assert list(table.rows.values()) == ["ce [trainer.epochs=100]", "ce [trainer.epochs=200]"]
    assert [c.n for c in table.cells.values()] == [1, 1] and table.notes == []


# ------------------------------------------------------------------ the console entry point


def test_report_end_to_end(sweep, capsys):
    main([str(sweep)])
    assert capsys.readouterr().out.startswith("imbench-report: 6 run(s), 2 skipped; wrote report.md, report.csv, ")
    md = (sweep / "report.md").read_text()
    assert "**last-epoch** values (`final` in metrics.json)" in md
    assert "## Top-1 error (%)" in md
    assert "| method | cifar10_lt IF 100 | cifar10_lt IF 10 |" in md
    assert "| ce | 29.00 ± 1.00 (n=3) [Cui19: 29.64, Δ -0.64] | 14.00 [Cui19: 13.61, Δ +0.39] |" in md
    assert "| bce | — [Cui19: 29.55] | 15.00 [Cui19: 12.97, Δ +2.03] |" in md
    assert "| focal γ=0.5 + cb β=0.9999 | 25.00 [Cao19: 25.43, Δ -0.43] | — [Cao19: 12.90] |" in md
    assert "different train subsets" in md
    assert f"| `{sweep / '6'}` | status 'diverged', not 'completed' |" in md
    assert f"| `{sweep / '7'}` | no metrics.json (still running, crashed or interrupted) |" in md
    assert "https://arxiv.org/abs/1901.05555" in md and "https://arxiv.org/abs/1906.07413" in md

    rows = read_csv(sweep / "report.csv")
    assert len(rows) == 3 * 2  # every (method, column), missing cells included
    ce100 = next(r for r in rows if r["method"] == "ce" and r["imbalance_factor"] == "100")
    assert ce100 | {"runs": ""} == {
        "metric": "top1_error", "epoch": "last", "method": "ce", "dataset": "cifar10_lt", "imbalance_factor": "100",
        "imbalance_type": "exp", "n": "3", "mean": "29.0000", "std": "1.0000", "seeds": "0 1 2", "reference": "Cui19",
        "reference_row": "Softmax", "reference_value": "29.64", "delta": "-0.6400", "subsets": "1", "runs": "",
    }
    missing = next(r for r in rows if r["method"] == "bce" and r["imbalance_factor"] == "100")
    assert missing["n"] == "0" and missing["mean"] == "" and missing["reference_value"] == "29.55"

    for name in ("per_class_cifar10_lt_if100.png", "per_class_cifar10_lt_if10.png",
                 "class_counts_cifar10_lt_if100.png", "class_counts_cifar10_lt_if10.png"):
        assert (sweep / name).read_bytes().startswith(PNG_SIGNATURE), name
        assert f"[{name}]({name})" in md
    assert not list(sweep.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_best_epoch_uses_the_best_record(sweep, tmp_path):
    main([str(sweep), "--epoch", "best", "--out", str(tmp_path / "out"), "--reference", "none"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**best-epoch** values (`best` in metrics.json)" in md and "on the test split" in md
    assert "| ce | 29.00 ± 1.00 (n=3) | 10.00 |" in md  # the IF 10 run: best top-1 0.90, last 0.86
    assert "Cui19" not in md


def test_multi_label_runs_get_a_map_table(tmp_path):
    write_run(tmp_path / "m", top1=0.5, dataset="multimnist", imbalance_factor=10, counts=CIFAR10_IF10,
              label_kind="multi", loss=loss_cfg("bce"))
    main([str(tmp_path)])
    md = (tmp_path / "report.md").read_text()
    assert "## mAP (%)" in md and "| bce | 50.00 |" in md
    assert (tmp_path / "per_class_multimnist_if10.png").read_bytes().startswith(PNG_SIGNATURE)


def test_metric_the_runs_lack_is_a_skip(tmp_path):
    write_run(tmp_path / "s")
    write_run(tmp_path / "m", top1=0.5, dataset="multimnist", label_kind="multi", loss=loss_cfg("bce"))
    main([str(tmp_path), "--metric", "map"])
    md = (tmp_path / "report.md").read_text()
    assert f"| `{tmp_path / 's'}` | map not recorded in `final` (single-label run) |" in md


def test_two_metrics_give_two_tables_of_the_same_runs(tmp_path, capsys):
    root = write_multi_label_runs(tmp_path / "runs")
    main([str(root), "--metric", "map", "--metric", "mean_f2", "--reference", "none"])
    out = capsys.readouterr().out
    assert out.startswith("imbench-report: 3 run(s), 0 skipped; wrote report.md, report.csv, "
                          "per_class_multimnist_if10.png, class_counts_multimnist_if10.png to ")  # each plot once
    md = (root / "report.md").read_text()
    assert md.index("## Mean F2 (%)") < md.index("## mAP (%)")  # METRICS order, not the order given
    assert "| asl | 60.00 |" in section(md, "Mean F2 (%)")
    assert "| bce | 45.00 ± 7.07 (n=2) |" in section(md, "Mean F2 (%)")  # mean and sample std of 40, 50
    assert "| asl | 70.00 |" in section(md, "mAP (%)")
    assert "| bce | 55.00 ± 7.07 (n=2) |" in section(md, "mAP (%)")  # 50, 60
    assert md.count("[per_class_multimnist_if10.png]") == 1

    rows = read_csv(root / "report.csv")
    assert [(r["metric"], r["method"], r["n"], r["mean"], r["std"], r["seeds"]) for r in rows] == [
        ("mean_f2", "asl", "1", "60.0000", "", "0"),
        ("mean_f2", "bce", "2", "45.0000", "7.0711", "0 1"),
        ("map", "asl", "1", "70.0000", "", "0"),
        ("map", "bce", "2", "55.0000", "7.0711", "0 1"),
    ]


def test_auto_and_map_on_multi_label_runs_are_one_table(tmp_path, capsys):
    root = write_multi_label_runs(tmp_path / "runs")
    runs = [read_run(root / str(n)) for n in range(3)]
    (table,), skipped = build_tables(runs, "last", ["auto", "map"], [])
    assert table.metric == "map" and skipped == []
    assert sorted(table.rows.values()) == ["asl", "bce"]

    main([str(root), "--metric", "auto", "--metric", "map", "--reference", "none"])
    assert capsys.readouterr().out.startswith("imbench-report: 3 run(s), 0 skipped; ")
    md = (root / "report.md").read_text()
    assert md.count("\n## mAP (%)\n") == 1 and "## Top-1 error (%)" not in md
    assert {r["metric"] for r in read_csv(root / "report.csv")} == {"map"}


def test_a_run_skipped_for_one_metric_counts_once(tmp_path, capsys):
    write_run(tmp_path / "s")
    write_run(tmp_path / "m", top1=0.5, dataset="multimnist", label_kind="multi", loss=loss_cfg("bce"))
    write_run(tmp_path / "d", status="diverged")
    main([str(tmp_path), "--metric", "top1_error", "--metric", "map", "--reference", "none"])
    assert capsys.readouterr().out.startswith(
        "imbench-report: 2 run(s), 1 skipped, 2 left out of a table (metric not recorded); wrote ")
    md = (tmp_path / "report.md").read_text()
    assert "2 run(s) from " in md and "; 1 skipped, 2 left out of a table (metric not recorded) (listed below)." in md
    assert "| ce | 30.00 |" in section(md, "Top-1 error (%)") and "| bce | 50.00 |" in section(md, "mAP (%)")
    assert f"| `{tmp_path / 's'}` | map not recorded in `final` (single-label run) |" in md
    assert f"| `{tmp_path / 'm'}` | top1_error not recorded in `final` (multi-label run) |" in md


def test_per_class_plot_is_drawn_once_from_every_run_of_its_column(tmp_path, monkeypatch):
    write_run(tmp_path / "ce", top1=0.7)
    bce = write_run(tmp_path / "bce", top1=0.6, loss=loss_cfg("bce"))
    metrics = json.loads((bce / "metrics.json").read_text())
    del metrics["final"]["mean_f2"]  # bce is in the top-1 table only
    (bce / "metrics.json").write_text(json.dumps(metrics))
    drawn = []

    def fake_plot(table, col, epoch):
        drawn.append((col.label, [label for label, _, _ in report.per_class_series(table, col, epoch)]))
        return PNG_SIGNATURE

    monkeypatch.setattr(report, "plot_per_class", fake_plot)
    result = write_report([tmp_path], tmp_path, "last", ["top1", "mean_f2"], [])
    assert [t.metric for t in result.tables] == ["top1", "mean_f2"]
    assert drawn == [("cifar10_lt IF 100", ["bce", "ce"])]  # not once per table, nor only mean_f2's runs
    assert result.files.count("per_class_cifar10_lt_if100.png") == 1


def test_write_report_refuses_a_bad_metric_among_several(tmp_path):
    write_run(tmp_path / "r")
    with pytest.raises(ImbenchError) as exc:
        write_report([tmp_path], tmp_path, "last", ["map", "nope", "auto"], [])
    assert str(exc.value) == "--metric nope: choose auto, top1_error, top1, many_shot_top1, medium_shot_top1, few_shot_top1, mean_f2, map"
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{missing}"], "{missing}: no such file or directory"),
        (["{empty}"], "no run directories (with metrics.json) under {empty}"),
        (["{root}", "--reference", "nope"], "--reference nope: unknown table; choose one of: cao2019_table2, cui2019_table2, menon2021_table3"),
        (["{root}", "--epoch", "first"], "argument --epoch: invalid choice: 'first' (choose from 'last', 'best')"),
        (["{root}", "--metric", "map", "--metric", "nope"],
         "argument --metric: invalid choice: 'nope' (choose from 'auto', 'top1_error', 'top1', 'many_shot_top1', 'medium_shot_top1', 'few_shot_top1', 'mean_f2', 'map')"),
        (["{diverged}"], "no completed runs to report under {diverged} (1 skipped; {diverged}/x: status 'diverged', not 'completed')"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    places = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "root": tmp_path / "root",
              "diverged": tmp_path / "diverged"}
    places["empty"].mkdir()
    write_run(places["root"] / "r")
    write_run(places["diverged"] / "x", status="diverged")
    with pytest.raises(SystemExit) as exc:
        main([a.format(**places) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == f"imbench-report: error: {message.format(**places)}\n"


def test_format_summary_unchanged():
    metrics = {"dataset": "mnist_lt", "model": "resnet32", "loss": "focal", "reweight": "cb", "epochs_completed": 4,
               "best_epoch": 3, "monitor": "top1", "final": {"top1": 0.969, "top5": 1.0}, "best": {"top1": 0.97, "top5": 1.0}}
    text = format_summary(metrics)
    assert text.splitlines()[0] == "mnist_lt | resnet32 | loss=focal reweight=cb | epochs 4, best epoch 3 by test top1"
    assert text.splitlines()[3] == "top-1 acc          96.90   97.00"


# ------------------------------------------------------------------ published tables


@pytest.mark.parametrize("name", reference_names())
def test_every_reference_loads_and_cites_its_source(name):
    ref = load_reference(name)
    assert ref["name"] == name
    assert ref["metric"] in ("top1_error", "top1", "mean_f2", "map")
    source = ref["source"]
    assert source["paper"].strip() and source["table"].strip() and source["url"].startswith("https://")
    assert source["checked"].strip()
    for row in ref["rows"]:
        assert row["label"] and isinstance(row["match"], dict)
        for dataset, by_type in row["cells"].items():
            assert set(by_type) <= {"exp", "step"}, (name, row["label"], dataset)
            for factor, cell in ((f, c) for cells in by_type.values() for f, c in cells.items()):
                value = cell["value"] if isinstance(cell, dict) else cell
                assert isinstance(factor, (int, float)) and factor >= 1
                assert isinstance(value, (int, float)) and 0 < value < 100


def test_reference_tags_are_unique():
    tags = [load_reference(n)["tag"] for n in reference_names()]
    assert len(tags) == len(set(tags))


def test_cui_class_balanced_best_matches_only_its_configuration():
    cui = load_reference("cui2019_table2")
    cb_focal = {"model": "resnet32", "loss": "focal", "loss.gamma": 1.0, "loss.softmax": False, "reweight": "cb",
                "reweight.beta": 0.9999, "drw": False}
    assert lookup(cui, cb_focal, "cifar10_lt", "exp", 100.0) == (25.43, "Class-Balanced (best)")
    assert lookup(cui, dict(cb_focal, **{"loss.gamma": 0.5}), "cifar10_lt", "exp", 100.0) is None
    assert lookup(cui, dict(cb_focal, model="resnet50"), "cifar10_lt", "exp", 100.0) is None
    softmax = {"model": "resnet32", "loss": "ce", "reweight": "none", "drw": False}
    assert lookup(cui, softmax, "cifar100_lt", "exp", 1.0) == (29.07, "Softmax")
    assert lookup(cui, softmax, "cifar100_lt", "step", 100.0) is None
    assert lookup(load_reference("cao2019_table2"), softmax, "cifar100_lt", "step", 100.0) == (61.45, "ERM")


@pytest.mark.parametrize("damage, reason", [
    (lambda m: m["final"].update(top1="high"), "final.top1 is 'high', not a number"),
    (lambda m: m["best"].update(per_class_accuracy=[0.5, "x"]), "best.per_class_accuracy is [0.5, 'x'], not a number"),
    (lambda m: m.update(final=[1, 2]), "final is [1, 2], not an object"),
    (lambda m: m.update(loss=7), "loss is 7, not a string"),
])
def test_a_malformed_metrics_json_is_skipped_with_one_warning_naming_it(tmp_path, capsys, damage, reason):
    good = write_run(tmp_path / "runs" / "0", seed=0)
    bad = write_run(tmp_path / "runs" / "1", seed=1)
    metrics = json.loads((bad / "metrics.json").read_text())
    damage(metrics)
    (bad / "metrics.json").write_text(json.dumps(metrics))

    main([str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--reference", "none"])

    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [f"imbench-report: warning: {bad}: malformed metrics.json: {reason}; skipped"]
    assert "imbench-report: 1 run(s), 1 skipped" in out
    assert f"`{bad}` | malformed metrics.json: {reason} |" in (tmp_path / "report" / "report.md").read_text()


# ------------------------------------------------------------------ sweep.json: failed and stopped jobs


def write_sweep_json(sweep_dir: Path, jobs: list[tuple[int, str, str | None]]) -> Path:
    """`sweep_dir/sweep.json` as imbench writes it at the end of a sweep: each job's record
    (cli.record_job) summed up by cli.SweepReport."""
    from omegaconf import OmegaConf

    from imbalance_bench.cli import FAILED_JOBS, SweepReport, record_job

    for num, outcome, error in jobs:
        record_job(OmegaConf.create({
            "sweep": {"dir": str(sweep_dir)}, "job": {"num": num}, "overrides": {"task": [f"seed={num}"]},
            "runtime": {"output_dir": str(sweep_dir / str(num))},
        }), outcome, error)
    SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    FAILED_JOBS.clear()  # what the sweep's command would report; no command runs here
    return sweep_dir / "sweep.json"


def test_failed_and_stopped_jobs_are_listed_with_their_reasons(tmp_path, capsys):
    """Job 0 trained; job 1 crashed (its folder has .hydra/, no metrics.json); job 2 was refused
    (its folder holds nothing); job 3 was stopped. The sweep was moved after it ran: its jobs'
    folders are found inside the folder of its sweep.json."""
    ran = tmp_path / "ran"
    write_run(ran / "0")
    (ran / "1" / ".hydra").mkdir(parents=True)
    (ran / "1" / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (ran / "3" / ".hydra").mkdir(parents=True)
    (ran / "3" / ".hydra" / "config.yaml").write_text("seed: 3\n")
    write_sweep_json(ran, [
        (0, "trained", None),
        (1, "failed", "crashed with RuntimeError: CUDA error\nsecond line (traceback in 1/traceback.txt)"),
        (2, "failed", "trainer.device=tpu is not allowed (auto | cpu | cuda)"),
        (3, "stopped", "stopped by SIGTERM after epoch 2; the checkpoint is saved"),
    ])
    sweep = ran.rename(tmp_path / "moved")

    main([str(sweep), "--reference", "none"])
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("imbench-report: 1 run(s), 3 skipped; ")
    skipped = section((sweep / "report.md").read_text(), "Skipped run directories")
    assert skipped.strip().splitlines()[2:] == [
        f"| `{sweep / '1'}` | job #1 failed: crashed with RuntimeError: CUDA error |",
        f"| `{sweep / '3'}` | job #3 stopped: stopped by SIGTERM after epoch 2; the checkpoint is saved |",
        f"| `{sweep / '2'}` | job #2 failed: trainer.device=tpu is not allowed (auto \\| cpu \\| cuda) |",
    ]
    assert "no metrics.json" not in skipped


def test_only_failed_jobs_is_one_line_naming_the_first(tmp_path, capsys):
    write_sweep_json(tmp_path, [(0, "failed", "dataset.root=x: not found")])
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (f"imbench-report: error: no completed runs to report under {tmp_path} "
                                       f"(1 skipped; {tmp_path / '0'}: job #0 failed: dataset.root=x: not found)\n")


@pytest.mark.parametrize(("damage", "problem"), [
    ('{"jobs": [', "unreadable sweep.json: Expecting value: line 1 column 11 (char 10)"),
    ('{"jobs": [{"job": 1, "dir": "1", "outcome": 5, "error": null}]}', "malformed sweep.json: jobs[0].outcome is 5"),
    ('{"jobs": {}}', "malformed sweep.json: jobs is not a list"),
])
def test_a_damaged_sweep_json_is_one_warning_naming_it(tmp_path, capsys, damage, problem):
    write_run(tmp_path / "0")
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (tmp_path / "sweep.json").write_text(damage)

    main([str(tmp_path), "--reference", "none"])
    out, err = capsys.readouterr()
    warning = f"{tmp_path / 'sweep.json'}: {problem}; its job outcomes are not shown"
    assert err == f"imbench-report: warning: {warning}\n"
    assert out.startswith("imbench-report: 1 run(s), 1 skipped; ")
    md = (tmp_path / "report.md").read_text()
    assert f"| `{tmp_path / '1'}` | no metrics.json (still running, crashed or interrupted) |" in md
    assert section(md, "Warnings").strip() == f"- {warning}"


def edit_metrics(path: Path, **changes) -> None:
    metrics = json.loads((path / "metrics.json").read_text())
    metrics.update(changes)
    (path / "metrics.json").write_text(json.dumps(metrics))


def test_post_hoc_logit_adjustment_is_a_row_of_its_own_for_the_last_and_the_best_epoch(tmp_path):
    """A run scored post hoc (metrics.logit_adjust_tau) gives two rows: its raw scores and its
    adjusted ones, each averaged over the seeds; the raw row is the one the ERM reference matches."""
    for seed, (raw, adjusted, best_adjusted) in enumerate([(0.70, 0.76, 0.78), (0.72, 0.80, 0.82)]):
        path = write_run(tmp_path / f"s{seed}", seed=seed, top1=raw)
        metrics = json.loads((path / "metrics.json").read_text())
        edit_metrics(path, final={**metrics["final"], "logit_adjusted": {"tau": 1.0, "top1": adjusted}},
                     best={**metrics["best"], "logit_adjusted": {"tau": 1.0, "top1": best_adjusted}})
    for epoch, adjusted_mean in (("last", 100 * (1 - 0.78)), ("best", 100 * (1 - 0.80))):
        result = report.write_report([tmp_path], tmp_path / f"out_{epoch}", epoch, "top1_error", [])
        rows = {r["method"]: r for r in read_csv(tmp_path / f"out_{epoch}" / "report.csv")}
        assert set(rows) == {"ce", "ce + post-hoc LA τ=1"}, rows
        assert float(rows["ce + post-hoc LA τ=1"]["mean"]) == pytest.approx(adjusted_mean)
        assert rows["ce + post-hoc LA τ=1"]["n"] == "2" and rows["ce"]["n"] == "2"
        assert result.files
    raw = report.read_run(tmp_path / "s0")
    [adjusted] = report.post_hoc_adjusted(raw)
    cao = load_reference("cao2019_table2")
    assert lookup(cao, raw.method, "cifar10_lt", "exp", 100) == (29.64, "ERM")
    assert lookup(cao, adjusted.method, "cifar10_lt", "exp", 100) is None


def test_stage_2_runs_group_by_seed_but_not_across_stage_1_methods(tmp_path):
    """cRT runs of different seeds (each from its own seed's stage 1) share a row; cRT of another
    stage-1 method is a row of its own, named after it."""
    def crt(name, seed, stage1_loss):
        path = write_run(tmp_path / name, seed=seed)
        config = yaml.safe_load((path / ".hydra" / "config.yaml").read_text())
        config["stage"] = {"name": "crt", "_target_": "imbalance_bench.decoupled.ClassifierRetraining",
                           "init_from": f"stage1/{stage1_loss}/seed{seed}"}
        config["sampler"] = {"name": "class_balanced", "start_epoch": 0}
        edit_metrics(path, config=config, sampler="class_balanced",
                     stage1={"path": config["stage"]["init_from"], "config_sha256": "0" * 64, "final": {},
                             "method": {"loss": stage1_loss, "reweight": "none", "sampler": "instance"}})

    crt("a", 0, "ce"), crt("b", 1, "ce"), crt("c", 0, "focal")
    report.write_report([tmp_path], tmp_path / "out", "last", "top1_error", [])
    rows = {r["method"]: r["n"] for r in read_csv(tmp_path / "out" / "report.csv")}
    assert rows == {"ce + class_balanced sampling → crt (of ce)": "2",
                    "ce + class_balanced sampling → crt (of focal)": "1"}


def test_an_ldam_run_written_before_loss_form_still_matches_the_ldam_rows(tmp_path):
    """Runs from before loss.form and loss.uniform_margin existed were LDAM's cross-entropy form with
    margins per class: their method is read with those values, so the LDAM row (and not M-DRW's
    or LDAM-HG's) matches them."""
    old = loss_cfg("ldam", max_margin=0.5, scale=30.0, normalized_classifier=True)
    run = report.read_run(write_run(tmp_path / "old", loss=old))
    assert run.method["loss.form"] == "ce" and run.method["loss.uniform_margin"] is False
    cao = load_reference("cao2019_table2")
    assert lookup(cao, run.method, "cifar10_lt", "exp", 100) == (26.65, "LDAM")
    new = report.read_run(write_run(tmp_path / "m_drw", loss={**old, "uniform_margin": True, "form": "ce"}))
    assert lookup(cao, new.method, "cifar10_lt", "exp", 100) is None  # M-DRW needs DRW
    ce = report.read_run(write_run(tmp_path / "ce"))
    assert "loss.form" not in ce.method  # a key of one option is filled for that option only
