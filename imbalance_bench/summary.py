"""A run's human-readable summary: its one-line header (`describe_run`, from the resolved config)
and the table of its metrics at the last and the best epoch (`format_summary`), both logged by
train.py; and the small formatting helpers imbench-report shares with them.

Only the standard library is imported here.
"""

from __future__ import annotations

from typing import Any

#: config keys shown as their Greek letters, in run headers and in report row labels
GREEK = {"gamma": "γ", "beta": "β", "alpha": "α", "rho": "ρ", "tau": "τ"}


def format_number(value: float) -> str:
    """A number as a config writes it: 2 for 2.0, 0.9999, 1e-05."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


SUMMARY_ROWS = (
    ("top1", "top-1 acc"),
    ("top5", "top-5 acc"),
    ("map", "mAP"),
    ("mean_f2", "mean F2"),
    ("macro_f1", "macro F1"),
    ("macro_f2", "macro F2"),
    ("precision_at_1", "precision@1"),
    ("precision_at_5", "precision@5"),
    ("many_shot_top1", "many-shot acc"),
    ("medium_shot_top1", "medium-shot acc"),
    ("few_shot_top1", "few-shot acc"),
    ("head_map", "head mAP"),
    ("medium_map", "medium mAP"),
    ("tail_map", "tail mAP"),
)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100.0 * value:6.2f}"


NOT_PARAMETERS = ("_target_", "_partial_", "_recursive_", "name")


def describe_choice(group: str, node: dict) -> str:
    """`group=name(key=value, ...)` with every key of the option that sets the method (a wrapper
    loss shows its base's keys nested; DRW's `start_epoch` only when it defers), e.g.
    `loss=focal(γ=2, softmax=false)`, `reweight=cb(β=0.9999)`, `reweight=none`."""
    shown = []
    for key, value in sorted(node.items(), key=lambda item: item[0] == "start_epoch"):  # DRW last
        if key in NOT_PARAMETERS or (key == "start_epoch" and not value):
            continue
        if isinstance(value, dict):
            if key == node.get("base"):  # PLM: the base loss's keys, under its name
                shown = [part for part in shown if part != f"base={key}"]
                shown.insert(0, "base=" + describe_choice("", value).lstrip("="))
            continue
        text = (str(value).lower() if isinstance(value, bool) else format_number(value) if isinstance(value, float)
                else value)
        shown.append(f"{GREEK.get(key, key)}={text}")
    prefix = f"{group}=" if group else ""
    return f"{prefix}{node.get('name')}" + (f"({', '.join(shown)})" if shown else "")


def describe_run(config: dict) -> str:
    """The run's one-line header, from its resolved config: dataset, model, the method in full and the
    recipe, e.g. `mnist_lt IF 100 | resnet32 | loss=focal(γ=2, softmax=false) reweight=cb(β=0.9999) |
    SGD lr 0.1, 4 epochs of batch 128, seed 0`."""
    dataset, trainer = config["dataset"], config["trainer"]
    factor = dataset.get("imbalance_factor")
    data = dataset["name"] + ("" if factor is None else f" IF {format_number(float(factor))}")
    if dataset.get("imbalance_type") == "step":
        data += " step"
    optimizer = str(config["optimizer"].get("_target_", "")).rpartition(".")[2]
    sampler = config.get("sampler") or {"name": "instance"}  # runs from before re-sampling drew instances
    sampling = "" if sampler["name"] == "instance" else " " + describe_choice("sampler", sampler)
    stage = config.get("stage") or {"name": "none"}  # runs from before decoupled stages were one stage
    if stage["name"] != "none":
        sampling += f" stage={stage['name']} from {stage.get('init_from')}"
    length = f"{trainer['epochs']} epoch" + ("s" if trainer["epochs"] != 1 else "") + (f" (stop at step {trainer['max_steps']})" if trainer.get("max_steps") else "")
    return (f"{data} | {config['model']['name']} | {describe_choice('loss', config['loss'])} "
            f"{describe_choice('reweight', config['reweight'])}{sampling} | {optimizer} lr "
            f"{format_number(float(config['optimizer']['lr']))}, {length} of batch {trainer['batch_size']}, seed {config['seed']}")


def format_summary(metrics: dict[str, Any]) -> str:
    """A small text table: each metric at the last epoch and at the best epoch (in %)."""
    best_epoch = metrics["best_epoch"]
    header = f"{'metric':<16} {'last':>7} {'best':>7}"
    config = metrics.get("config")
    title = (describe_run(config) if isinstance(config, dict) else
             f"{metrics['dataset']} | {metrics['model']} | loss={metrics['loss']} reweight={metrics['reweight']}")
    progress = f"epochs {metrics['epochs_completed']}, best epoch {best_epoch}"
    if "best_tau" in metrics:  # a tau-normalised classifier: a tau per row, nothing trained
        progress = f"best τ = {format_number(metrics['best_tau'])}"
    lines = [
        f"{title} | {progress} by test {metrics['monitor']}",
        header,
        "-" * len(header),
    ]
    for key, label in SUMMARY_ROWS:
        if key in metrics["final"]:
            lines.append(f"{label:<16} {_pct(metrics['final'].get(key)):>7} {_pct(metrics['best'].get(key)):>7}")
    final, best = metrics["final"].get("logit_adjusted"), (metrics["best"] or {}).get("logit_adjusted") or {}
    if final:  # post-hoc logit adjustment (metrics.logit_adjust_tau): the same metrics on z - tau log pi
        lines.append(f"post-hoc logit adjustment, scores z - τ log π with τ = {format_number(final['tau'])}:")
        for key, label in SUMMARY_ROWS:
            if key in final:
                lines.append(f"{label:<16} {_pct(final.get(key)):>7} {_pct(best.get(key)):>7}")
    return "\n".join(lines)
