"""Adding a loss and a dataset without touching the package: tests/toy_plugin/ holds one module with
the two classes and one YAML for each, and `imbench --config-dir tests/toy_plugin/conf` composes them
like built-in options, checks them with what the classes declare, and trains on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SMOKE

TOY_CONF = Path(__file__).resolve().parent / "toy_plugin" / "conf"
TOY = ["--config-dir", str(TOY_CONF)]


def test_a_toy_loss_and_dataset_train_through_the_cli(imbench_in_process, tmp_path):
    run_dir = tmp_path / "run"
    code, err = imbench_in_process(*TOY, "loss=toy_brier", "dataset=toy_digits", "reweight=cb", *SMOKE,
                                   f"hydra.run.dir={run_dir}")
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["loss"], metrics["dataset"], metrics["status"]) == ("toy_brier", "toy_digits", "completed")
    assert metrics["config"]["loss"]["_target_"] == "toy_plugin.components.BrierLoss"
    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    counts = stats["train_counts"]
    assert (stats["name"], stats["image_shape"], len(counts)) == ("toy_digits", [1, 8, 8], 10)
    assert counts == stats["profile_counts"] and counts[0] / counts[-1] == pytest.approx(10, rel=0.1)


def test_what_the_toy_classes_declare_is_checked_before_any_data(imbench_in_process, tmp_path):
    """BrierLoss declares single-label data only, DigitsLT 8-pixel images: pre-flight reads both."""
    code, err = imbench_in_process(*TOY, "loss=toy_brier", "dataset=multimnist", *SMOKE,
                                   f"hydra.run.dir={tmp_path / 'a'}")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(
        "imbench: error: loss=toy_brier is not allowed with dataset=multimnist (multi-label): use one of")
    code, err = imbench_in_process(*TOY, "dataset=toy_digits", "dataset.augment.crop_padding=9", *SMOKE,
                                   f"hydra.run.dir={tmp_path / 'b'}")
    assert code == 2
    assert "dataset.augment.crop_padding=9 is not allowed with dataset=toy_digits" in err
    assert "its images are 8 px" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_name_key_labels_its_class_and_selects_nothing(imbench_in_process, tmp_path):
    """`_target_` alone picks the implementation; a `name` that disagrees with the class is refused."""
    code, err = imbench_in_process(*TOY, "loss=toy_brier", "loss.name=ce", *SMOKE, f"hydra.run.dir={tmp_path / 'r'}")
    assert code == 2
    assert err.strip().splitlines() == [
        "imbench: error: loss.name=ce is not allowed: it labels the class that loss._target_ names, whose name is "
        "toy_brier; pick another implementation with loss=<option>"]
    code, err = imbench_in_process("loss=focal", "loss.name=ce", *SMOKE, f"hydra.run.dir={tmp_path / 'r'}")
    assert code == 2 and "whose name is focal" in err
    assert not (tmp_path / "r").exists()


def test_an_unknown_option_lists_the_added_ones(imbench_in_process):
    code, err = imbench_in_process(*TOY, "loss=toy")
    assert code == 2
    assert err.strip().splitlines()[-1].endswith("choose one of: asl, balanced_softmax, bce, ce, dfl, focal, hinge, "
                                                 "ldam, logit_adjusted, plm, toy_brier")
