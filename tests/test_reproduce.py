"""Paper-table presets (conf/experiment/<table>/) and scripts/reproduce_<table>.sh."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, SMOKE, exit_code, reproduce_script_args
from imbalance_bench.config import validate
from imbalance_bench.reference import load_reference, lookup
from imbalance_bench.report import method_keys

SCRIPTS = REPO / "scripts"
CIFAR_DATASETS = ("cifar10_lt", "cifar100_lt")
CIFAR_COLUMNS = [(ds, factor) for ds in CIFAR_DATASETS for factor in (200, 100, 50, 20, 10, 1)]


def run_script(name: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMBENCH_PYTHON": sys.executable}
    env.pop("IMBENCH_DATA_ROOT", None)
    return subprocess.run(["bash", str(SCRIPTS / f"reproduce_{name}.sh"), *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def reproduce_in_process(tmp_path, monkeypatch, capsys):
    """`reproduce.main(ARGS)` in this process from tmp_path; returns (exit code, stdout, stderr)."""
    from imbalance_bench import reproduce

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMBENCH_DATA_ROOT", raising=False)

    def _run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = exit_code(reproduce.main, args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run


@pytest.fixture
def script_in_process(tmp_path_factory, reproduce_in_process):
    """`scripts/reproduce_NAME.sh ARGS` with its `python -m imbalance_bench.reproduce` in this process:
    bash expands the script's arguments, `reproduce.main` takes them; returns (exit code, stdout, stderr)."""
    shim_dir = tmp_path_factory.mktemp("shim")

    def _run(name: str, *args: str) -> tuple[int, str, str]:
        return reproduce_in_process(*reproduce_script_args([f"scripts/reproduce_{name}.sh", *args], shim_dir))

    return _run


def listed_runs(stdout: str) -> list[str]:
    """The numbered job lines of a dry run."""
    return [m.group(1) for m in re.finditer(r"^ +\d+  (.*)$", stdout, re.M)]


def method_of(cfg) -> dict:
    """A composed config's method keys, as imbench-report reads them from a run directory."""
    config = OmegaConf.to_container(cfg, resolve=True)
    return method_keys({"model": cfg.model.name, "loss": cfg.loss.name, "reweight": cfg.reweight.name,
                        "sampler": cfg.sampler.name}, config)


# ------------------------------------------------------------------ dry runs


# the Cui table's dry run is also run, cell by cell, by test_cui_table_covers_every_cell_of_the_published_table
# the Cao table's dry run is slow too (48 runs); its presets are checked cell by cell by test_cao_row_presets_*
@pytest.mark.parametrize("table, runs", [pytest.param("cui2019_table2", 72, marks=pytest.mark.slow),
                                         pytest.param("cao2019_table2", 72, marks=pytest.mark.slow),
                                         ("plm_multimnist", 4), ("focal_coco_f2", 6)])
def test_dry_run_prints_every_run_and_the_count(table, runs, tmp_path, script_in_process):
    code, out, err = script_in_process(table, "--dry-run")
    assert code == 0, err
    lines = listed_runs(out)
    assert len(lines) == runs and len(set(lines)) == runs
    assert out.rstrip().splitlines()[-1] == f"{runs} runs"
    assert not list(tmp_path.iterdir())  # a dry run launches and writes nothing


def test_dry_run_seeds_multiply_the_runs_and_overrides_reach_every_run(script_in_process):
    code, out, err = script_in_process("plm_multimnist", "--dry-run", "--seeds", "0,1,2", "dataset.num_train=600")
    assert code == 0, err
    assert out.rstrip().endswith("12 runs")
    assert "every run: experiment=plm_multimnist dataset.num_train=600" in out
    runs = listed_runs(out)
    assert sorted({r.split("seed=")[1] for r in runs}) == ["0", "1", "2"]
    assert {" ".join(sorted(r.split()[:2])) for r in runs} == {
        "loss=bce reweight=none", "loss=bce reweight=cb", "loss=plm reweight=none", "loss=plm reweight=cb"}


def test_the_script_runs_reproduce_in_a_process_of_its_own(tmp_path):
    """The script for real: bash, then `$IMBENCH_PYTHON -m imbalance_bench.reproduce` (the other tests
    run reproduce.main in this process). A bad option ends it before anything heavy is imported."""
    result = run_script("plm_multimnist", "--dry-run", "--bogus", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "reproduce: error: unrecognized arguments: --bogus\n"
    assert not list(tmp_path.iterdir())


def test_cui_table_covers_every_cell_of_the_published_table(script_in_process):
    runs = listed_runs(script_in_process("cui2019_table2", "--dry-run")[1])
    rows = ("softmax", "sigmoid", "focal_g05", "focal_g1", "focal_g2")
    expected = {f"experiment=cui2019_table2/{row} dataset={ds} dataset.imbalance_factor={f}"
                for row in rows for ds, f in CIFAR_COLUMNS}
    expected |= {f"experiment=cui2019_table2/cb_best_{ds.replace('_lt', '')}_if{f}" for ds, f in CIFAR_COLUMNS}
    assert set(runs) == expected


@pytest.mark.parametrize("args, message", [
    (["--dry-run", "--bogus"], "unrecognized arguments: --bogus"),
    (["--dry-run", "--seeds", "0,x"], "--seeds 0,x: expected integers"),
    (["--dry-run", "dataset.imbalance_factr=5"], "sweep losses: dataset.imbalance_factr: unknown key"),
    (["--dry-run", "trainer.epochs=0"], "trainer.epochs=0 is not allowed"),
    (["--dry-run", "--seeds", "0,1", "seed=3"], "seed=3: give seeds either with --seeds"),
    (["--dry-run", "loss=ce"], "loss=ce"),          # a single-label loss on the multi-label table
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, script_in_process):
    code, out, err = script_in_process("plm_multimnist", *args)
    assert code == 2
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("reproduce: error:") and message in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_an_output_folder_with_runs_is_refused_and_left_alone(tmp_path, script_in_process):
    done = tmp_path / "out" / "losses" / "0" / "metrics.json"
    done.parent.mkdir(parents=True)
    done.write_text('{"status": "completed"}')
    code, _, err = script_in_process("plm_multimnist", "--out", "out")
    assert code == 2 and "--out out: the folder is not empty" in err
    assert len(err.strip().splitlines()) == 1
    assert done.read_text() == '{"status": "completed"}'
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["losses"]


@pytest.mark.parametrize("args, message", [
    (["--metric", "f3"], "--metric f3: choose auto"),
    (["--seeds", "1,1"], "--seeds 1,1: a seed is listed twice"),
    (["hydra.sweep.dir=elsewhere"], "hydra.sweep.dir=elsewhere: the script places the runs itself"),
    (["--out", "a_file"], "--out a_file: exists and is not a folder"),
    (["--out", "money$dir"], "backslashes and '$' are not allowed"),
    (["--resume"], "--resume needs --out DIR"),
    (["--out", "elsewhere", "--resume"], "--resume: elsewhere holds no earlier run of table plm_multimnist"),
])
def test_bad_options_stop_before_any_run(args, message, tmp_path, script_in_process):
    (tmp_path / "a_file").write_text("keep me")
    code, out, err = script_in_process("plm_multimnist", *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    assert (tmp_path / "a_file").read_text() == "keep me"


# ------------------------------------------------------------------ presets against the published tables


CUI = load_reference("cui2019_table2")
CUI_ROWS = {"softmax": "Softmax", "sigmoid": "Sigmoid", "focal_g05": "Focal (gamma 0.5)",
            "focal_g1": "Focal (gamma 1.0)", "focal_g2": "Focal (gamma 2.0)"}


def published(reference: dict, label: str, dataset: str, kind: str, factor: int):
    row = next(r for r in reference["rows"] if r["label"] == label)
    cell = row["cells"][dataset][kind][factor]
    return cell["value"] if isinstance(cell, dict) else cell


def with_values(cfg, **values):
    """A copy of a composed config with value overrides (`dataset__imbalance_factor=10` for
    dataset.imbalance_factor=10) merged in, as Hydra merges them after composing the groups: the
    cells of a table differ only in such values, so each preset and dataset is composed once."""
    cfg = copy.deepcopy(cfg)
    for key, value in values.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=True)
    return cfg


@pytest.mark.parametrize("preset, label", CUI_ROWS.items())
def test_cui_row_presets_meet_their_published_row(compose_cfg, preset, label):
    composed = {ds: compose_cfg([f"experiment=cui2019_table2/{preset}", f"dataset={ds}"]) for ds in CIFAR_DATASETS}
    for dataset, factor in CIFAR_COLUMNS:
        cfg = with_values(composed[dataset], dataset__imbalance_factor=factor)
        validate(cfg)
        assert (cfg.model.name, cfg.trainer.epochs, cfg.optimizer.lr, list(cfg.scheduler.milestones)) == \
            ("resnet32", 200, 0.1, [160, 180])
        found = lookup(CUI, method_of(cfg), dataset, "exp", factor)
        assert found == (published(CUI, label, dataset, "exp", factor), label)


@pytest.mark.parametrize("dataset, factor", CIFAR_COLUMNS)
def test_cui_class_balanced_presets_are_the_papers_best_cell(compose_cfg, dataset, factor):
    cfg = compose_cfg([f"experiment=cui2019_table2/cb_best_{dataset.replace('_lt', '')}_if{factor}"])
    validate(cfg)
    assert (cfg.dataset.name, cfg.dataset.imbalance_factor, cfg.reweight.name) == (dataset, factor, "cb")
    assert cfg.reweight.start_epoch == 0
    found = lookup(CUI, method_of(cfg), dataset, "exp", factor)
    assert found == (published(CUI, "Class-Balanced (best)", dataset, "exp", factor), "Class-Balanced (best)")


CAO = load_reference("cao2019_table2")
CAO_ROWS = {"erm": "ERM", "focal": "Focal", "ldam": "LDAM", "cb_rw": "CB RW", "cb_focal": "CB Focal", "ldam_drw": "LDAM-DRW",
            "cb_rs": "CB RS", "m_drw": "M-DRW", "hg_drs": "HG-DRS", "ldam_hg_drs": "LDAM-HG-DRS"}
CIFAR10_ONLY = ("hg_drs", "ldam_hg_drs")  # hinge loss was run on CIFAR-10 only ("-" in the paper)


@pytest.mark.parametrize("preset, label", CAO_ROWS.items())
def test_cao_row_presets_meet_their_published_row(compose_cfg, preset, label):
    for dataset in CIFAR_DATASETS[:1] if preset in CIFAR10_ONLY else CIFAR_DATASETS:
        composed = compose_cfg([f"experiment=cao2019_table2/{preset}", f"dataset={dataset}"])
        for kind in ("exp", "step"):
            for factor in (100, 10):
                cfg = with_values(composed, dataset__imbalance_factor=factor, dataset__imbalance_type=kind)
                validate(cfg)
                found = lookup(CAO, method_of(cfg), dataset, kind, factor)
                assert found == (published(CAO, label, dataset, kind, factor), label)


def test_menon_dry_run_lists_its_four_sweeps(script_in_process):
    code, out, err = script_in_process("menon2021_table3", "--dry-run", "--out", "somewhere")
    assert code == 0, err
    assert out.startswith("menon2021_table3: 4 sweep(s), 8 runs") and len(listed_runs(out)) == 8
    assert "stage.init_from=somewhere/erm/${dataset.name}_seed${seed}" in out
    code, _, err = script_in_process("menon2021_table3", "--dry-run", "--out", "my runs")
    assert code == 2 and err.strip().endswith("use a folder name without spaces, commas, quotes, brackets, '=' or ':'")


def test_the_hinge_rows_have_no_cifar100_cells(compose_cfg):
    for preset in CIFAR10_ONLY:
        cfg = compose_cfg([f"experiment=cao2019_table2/{preset}", "dataset=cifar100_lt"])
        assert lookup(CAO, method_of(cfg), "cifar100_lt", "exp", 100) is None


def test_drs_defers_the_resampling_to_the_lr_drop(compose_cfg):
    for preset in CIFAR10_ONLY:
        cfg = compose_cfg([f"experiment=cao2019_table2/{preset}"])
        assert cfg.sampler.name == "effective_number" and cfg.sampler.start_epoch == cfg.scheduler.milestones[0] == 160
        assert cfg.loss.form == "hinge" and cfg.reweight.name == "none"


MENON = load_reference("menon2021_table3")
GRID = [round(0.1 * i, 1) for i in range(21)]


@pytest.mark.parametrize("preset, extra, post_hoc, label", [
    ("erm", [], False, "ERM"),
    ("erm", [], True, "Logit adjustment post-hoc (τ = 1)"),
    ("la_loss", [], False, "Logit adjustment loss (τ = 1)"),
    ("weight_norm", [], False, "Weight normalisation (τ = 1)"),
    ("weight_norm", [f"stage.taus={GRID}"], False, "Weight normalisation (τ = τ*)"),
])
def test_menon_row_presets_meet_their_published_row(compose_cfg, preset, extra, post_hoc, label):
    for dataset in CIFAR_DATASETS:
        cfg = compose_cfg([f"experiment=menon2021_table3/{preset}", f"dataset={dataset}", *extra])
        validate(cfg)
        method = method_of(cfg)
        if post_hoc:
            assert cfg.metrics.logit_adjust_tau == 1.0
            method = {**method, "posthoc_tau": cfg.metrics.logit_adjust_tau}
        assert lookup(MENON, method, dataset, "exp", 100) == (published(MENON, label, dataset, "exp", 100), label)
        assert cfg.optimizer.weight_decay == 1e-4 and cfg.scheduler.gamma == 0.1  # the paper's Appendix D


def test_ldam_drw_defers_the_weights_to_the_lr_drop(compose_cfg):
    cfg = compose_cfg(["experiment=cao2019_table2/ldam_drw"])
    assert cfg.reweight.start_epoch == cfg.scheduler.milestones[0] == 160
    assert cfg.loss.normalized_classifier and cfg.loss.scale == 30 and cfg.loss.max_margin == 0.5


def test_a_nested_preset_through_the_cli(imbench_in_process, tmp_path):
    code, err = imbench_in_process("experiment=cao2019_table2/ldam_drw", "--cfg", "job")
    assert code == 0, err
    assert "name: ldam" in imbench_in_process.stdout and "start_epoch: 160" in imbench_in_process.stdout
    code, err = imbench_in_process("experiment='cao2019_table2/ldam_drw'", "loss= ce", "--cfg", "job")  # Hydra's quoting
    assert code == 0, err
    assert "name: ce" in imbench_in_process.stdout and "start_epoch: 160" in imbench_in_process.stdout
    code, err = imbench_in_process("experiment=cao2019_table2/ldam_drv")
    assert code == 2 and "cao2019_table2/ldam_drw" in err
    assert not (tmp_path / "outputs").exists()


# ------------------------------------------------------------------ a whole (tiny) table for real


def test_a_table_runs_its_sweeps_and_writes_the_report(data_root, tmp_path, monkeypatch, capfd):
    """Two sweeps on the MNIST fixture; a job of the second fails (resnet32 has no pretrained weights):
    the sweep's other job and the first sweep still run, the report and reproduce.json are written,
    and the exit code says runs failed. `reproduce` runs in this process; each sweep is a real
    `python -m imbalance_bench -m` (captured at the file descriptors)."""
    from imbalance_bench import reproduce

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMBENCH_DATA_ROOT", raising=False)
    common = [f"dataset.root={data_root}", "dataset.imbalance_factor=10", "dataset.limit_train=100",
              "dataset.limit_test=50", *SMOKE]
    argv = ["--table", "tiny", "--sweep", "losses: loss=ce,bce reweight=none",
            "--sweep", "mixed: loss=focal reweight=none model.pretrained=true,false",
            "--out", str(tmp_path / "my out"), "--seeds", "0", *common]
    code = exit_code(reproduce.main, argv)
    result = capfd.readouterr()
    assert code == 1, result.err[-2000:]
    out = tmp_path / "my out"
    summary = json.loads((out / "reproduce.json").read_text())
    assert [(s["name"], s["runs"], s["completed"]) for s in summary["sweeps"]] == [("losses", 2, 2), ("mixed", 2, 1)]
    assert summary["sweeps"][0]["exit_code"] == 0 and summary["sweeps"][1]["exit_code"] == 2
    assert not summary["interrupted"]
    assert "imbench: error: job #0: model.pretrained=true is not allowed" in result.err
    assert "1 job(s) of the sweep failed" in result.err and "Traceback" not in result.err
    assert not (out / "mixed" / "0" / "metrics.json").exists() and (out / "mixed" / "1" / "metrics.json").exists()
    report = (out / "report.md").read_text()
    methods = ("ce", "bce", "focal γ=2")
    assert all(f"| {method} |" in report for method in methods)
    rows = [line.split(",") for line in (out / "report.csv").read_text().splitlines()[1:]]
    assert sorted(r[2] for r in rows) == sorted(methods)
    assert "sweeps with failed runs: mixed" in result.out

    # --resume finishes the table in the same folder: the complete runs are not run again
    finished = {p: p.read_bytes() for p in out.glob("*/*/metrics.json")}
    code = exit_code(reproduce.main, [*argv, "--resume"])
    again = capfd.readouterr()
    assert code == 1 and "Traceback" not in again.err, again.err[-2000:]
    counts = [json.loads((out / name / "sweep.json").read_text())["counts"] for name in ("losses", "mixed")]
    assert [(c["complete"], c["trained"], c["failed"]) for c in counts] == [(2, 0, 0), (1, 0, 1)]
    assert {p: p.read_bytes() for p in out.glob("*/*/metrics.json")} == finished


def test_a_later_sweep_starts_a_decoupled_stage_from_an_earlier_sweeps_runs(data_root, tmp_path, monkeypatch,
                                                                             capfd):
    """`{out}` in a sweep is the table's folder: the tau-norm sweep scores the classifier of the run of
    its own seed in the first sweep, which does not exist when the table is planned."""
    from imbalance_bench import reproduce

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMBENCH_DATA_ROOT", raising=False)
    common = [f"dataset.root={data_root}", "dataset.imbalance_factor=10", "dataset.limit_train=100",
              "dataset.limit_test=50", *SMOKE]
    out = tmp_path / "table"
    code = exit_code(reproduce.main, [
        "--table", "tiny", "--sweep", "first: loss=ce hydra.sweep.subdir=seed${seed}",
        "--sweep", "second: experiment=decoupled/tau_norm stage.init_from={out}/first/seed${seed} stage.taus=[0,1]",
        "--out", str(out), "--seeds", "3,5", *common])
    result = capfd.readouterr()
    assert code == 0, result.err[-3000:]
    scored = [json.loads(p.read_text()) for p in (out / "second").glob("*/metrics.json")]
    for seed in (3, 5):
        stage1 = out / "first" / f"seed{seed}"
        [run] = [m for m in scored if m["seed"] == seed]
        assert run["stage1"]["path"] == str(stage1.resolve())
        assert run["stage1"]["final"] == json.loads((stage1 / "metrics.json").read_text())["final"]
    # each row averages its two seeds: the stage-2 runs' own stage 1 differs with the seed
    rows = [line.split(",") for line in (out / "report.csv").read_text().splitlines()[1:]]
    assert sorted((r[2], r[6], r[9]) for r in rows) == [("ce", "2", "3 5"), ("ce → tau_norm (of ce)", "2", "3 5")]


# ------------------------------------------------------------------ the data a table reads, checked once before any run


TINY_TABLE = ["--table", "tiny", "--sweep", "a: dataset=cifar10_lt,cifar100_lt loss=ce reweight=none",
              "--sweep", "b: dataset=cifar10_lt loss=bce reweight=none"]


def test_a_missing_dataset_stops_the_table_with_one_line_before_any_run(tmp_path, reproduce_in_process):
    root = tmp_path / "empty"
    code, out, err = reproduce_in_process(*TINY_TABLE, "--out", str(tmp_path / "out"), f"dataset.root={root}")
    assert code == 2 and out == ""
    assert err == (f"reproduce: error: dataset=cifar10_lt: {root / 'cifar-10-batches-py'}: cifar10 not found; "
                   f"dataset.root={root} must hold the folder cifar-10-batches-py/: download the CIFAR-10 python "
                   f"version from https://www.cs.toronto.edu/~kriz/cifar.html and extract it under {root}, or set "
                   f"dataset.download=true (also missing: dataset=cifar100_lt in {root})\n")
    assert list(tmp_path.iterdir()) == []  # no --out folder, no run folder, no root made


def test_a_dry_run_warns_of_a_missing_dataset_and_still_lists_the_runs(tmp_path, reproduce_in_process):
    root = tmp_path / "empty"
    code, out, err = reproduce_in_process(*TINY_TABLE, "--out", str(tmp_path / "out"), f"dataset.root={root}")
    code_dry, out_dry, err_dry = reproduce_in_process(*TINY_TABLE, "--dry-run", f"dataset.root={root}")
    assert code_dry == 0 and out_dry.rstrip().endswith("\n3 runs")
    assert err_dry == err.replace("reproduce: error: ", "reproduce: warning: ")
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_that_the_runs_download_is_a_note(tmp_path, reproduce_in_process):
    root = tmp_path / "empty"
    code, out, err = reproduce_in_process(*TINY_TABLE, "--dry-run", f"dataset.root={root}", "dataset.download=true")
    assert code == 0 and out.rstrip().endswith("\n3 runs")
    assert err.splitlines() == [
        f"reproduce: note: dataset={name} is not in {root} yet; the first run downloads it (dataset.download=true)"
        for name in ("cifar10_lt", "cifar100_lt")]


def test_a_table_whose_data_is_there_says_nothing_about_it(data_root, reproduce_in_process):
    code, out, err = reproduce_in_process(*TINY_TABLE, "--dry-run", f"dataset.root={data_root}")
    assert (code, err) == (0, "") and out.rstrip().endswith("\n3 runs")
