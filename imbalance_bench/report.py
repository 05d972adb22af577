"""Human-readable tables of a run's results."""

from __future__ import annotations

from typing import Any

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


def format_summary(metrics: dict[str, Any]) -> str:
    """A small text table: each metric at the last epoch and at the best epoch (in %)."""
    best_epoch = metrics["best_epoch"]
    header = f"{'metric':<16} {'last':>7} {'best':>7}"
    lines = [
        f"{metrics['dataset']} | {metrics['model']} | loss={metrics['loss']} reweight={metrics['reweight']} | "
        f"epochs {metrics['epochs_completed']}, best epoch {best_epoch} by test {metrics['monitor']}",
        header,
        "-" * len(header),
    ]
    for key, label in SUMMARY_ROWS:
        if key in metrics["final"]:
            lines.append(f"{label:<16} {_pct(metrics['final'].get(key)):>7} {_pct(metrics['best'].get(key)):>7}")
    return "\n".join(lines)
