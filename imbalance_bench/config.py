"""Typed schemas for every config group, and the range checks run once at start-up.

The dataclasses carry types only (every field is MISSING): the values live in `conf/*.yaml`,
which is the single source of truth. Each YAML option pulls its schema in through
`defaults: [/schema/<group>/<name>@_here_]`, so a wrong type or unknown key fails at
composition with the key named.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from imbalance_bench.errors import ConfigError

# ---------------------------------------------------------------- dataset


@dataclass
class AugmentSchema:
    crop_padding: int = MISSING
    hflip: bool = MISSING


@dataclass
class LongTailImagesSchema:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    imbalance_factor: float = MISSING
    imbalance_type: str = MISSING
    seed: int = MISSING
    limit_train: Optional[int] = MISSING
    limit_test: Optional[int] = MISSING
    augment: AugmentSchema = field(default_factory=AugmentSchema)
    mean: List[float] = MISSING
    std: List[float] = MISSING


# ---------------------------------------------------------------- model


@dataclass
class ModelSchema:
    _target_: str = MISSING
    name: str = MISSING
    pretrained: bool = MISSING


# ---------------------------------------------------------------- loss and re-weighting


@dataclass
class PlainLossSchema:
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class FocalLossSchema(PlainLossSchema):
    gamma: float = MISSING
    softmax: bool = MISSING


@dataclass
class ReweightSchema:
    _target_: str = MISSING
    name: str = MISSING
    start_epoch: int = MISSING


@dataclass
class ClassBalancedSchema(ReweightSchema):
    beta: float = MISSING


# ---------------------------------------------------------------- optimisation


@dataclass
class SGDSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    nesterov: bool = MISSING


@dataclass
class AdamWSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: List[float] = MISSING


@dataclass
class WarmupMultiStepSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    warmup_epochs: int = MISSING
    milestones: List[int] = MISSING
    gamma: float = MISSING


@dataclass
class WarmupCosineSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    warmup_epochs: int = MISSING
    min_lr_factor: float = MISSING


@dataclass
class TrainerSchema:
    device: str = MISSING
    epochs: int = MISSING
    max_steps: Optional[int] = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    amp: bool = MISSING
    amp_dtype: str = MISSING
    num_workers: int = MISSING
    eval_every: int = MISSING
    monitor: str = MISSING
    progress_bar: bool = MISSING


def register_schemas() -> None:
    """Register every schema under `schema/<group>/<name>` (idempotent)."""
    cs = ConfigStore.instance()
    for group, name, node in [
        ("dataset", "long_tail_images", LongTailImagesSchema),
        ("model", "model", ModelSchema),
        ("loss", "plain", PlainLossSchema),
        ("loss", "focal", FocalLossSchema),
        ("reweight", "plain", ReweightSchema),
        ("reweight", "class_balanced", ClassBalancedSchema),
        ("optimizer", "sgd", SGDSchema),
        ("optimizer", "adamw", AdamWSchema),
        ("scheduler", "warmup_multistep", WarmupMultiStepSchema),
        ("scheduler", "warmup_cosine", WarmupCosineSchema),
        ("trainer", "trainer", TrainerSchema),
    ]:
        cs.store(group=f"schema/{group}", name=name, node=node)


register_schemas()

# ---------------------------------------------------------------- range checks

CONFIG_GROUPS = ("dataset", "model", "loss", "reweight", "optimizer", "scheduler", "trainer", "experiment")


@dataclass(frozen=True)
class Rule:
    key: str
    ok: Callable[[Any], bool]
    allowed: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _optional_positive_int(v: Any) -> bool:
    return v is None or (_is_int(v) and v >= 1)


RULES: tuple[Rule, ...] = (
    Rule("seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("dataset.imbalance_factor", lambda v: _num(v) and v >= 1, "a number >= 1 (1 = balanced)"),
    Rule("dataset.imbalance_type", lambda v: v in ("exp", "step"), "one of: exp, step"),
    Rule("dataset.seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("dataset.limit_train", _optional_positive_int, "null or an integer >= 1"),
    Rule("dataset.limit_test", _optional_positive_int, "null or an integer >= 1"),
    Rule("dataset.augment.crop_padding", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("dataset.mean", lambda v: len(v) > 0 and all(_num(m) for m in v), "a list of finite numbers"),
    Rule("dataset.std", lambda v: len(v) > 0 and all(_num(s) and s > 0 for s in v), "a list of numbers > 0"),
    Rule("loss.gamma", lambda v: _num(v) and v >= 0, "a number >= 0"),
    Rule("reweight.beta", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    Rule("reweight.start_epoch", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("optimizer.lr", lambda v: _num(v) and v > 0, "a number > 0"),
    Rule("optimizer.momentum", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    Rule("optimizer.betas", lambda v: len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    Rule("optimizer.weight_decay", lambda v: _num(v) and v >= 0, "a number >= 0"),
    Rule("scheduler.warmup_epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("scheduler.gamma", lambda v: _num(v) and v > 0, "a number > 0"),
    Rule(
        "scheduler.milestones",
        lambda v: all(_is_int(m) and m >= 0 for m in v) and list(v) == sorted(v),
        "a non-decreasing list of integers >= 0",
    ),
    Rule("scheduler.min_lr_factor", lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    Rule("trainer.device", lambda v: v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(v)) is not None, "one of: auto, cpu, cuda, cuda:N"),
    Rule("trainer.epochs", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    Rule("trainer.max_steps", _optional_positive_int, "null or an integer >= 1"),
    Rule("trainer.batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    Rule("trainer.eval_batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    Rule("trainer.amp_dtype", lambda v: v in ("bfloat16", "float16"), "one of: bfloat16, float16"),
    Rule("trainer.num_workers", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("trainer.eval_every", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    Rule("trainer.monitor", lambda v: v in ("top1", "top5", "mean_f2", "macro_f2"), "one of: top1, top5, mean_f2, macro_f2"),
    Rule("metrics.many_shot_above", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("metrics.few_shot_below", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
)


def _lookup(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False, None
        node = node[part]
    if isinstance(node, (DictConfig,)):
        return True, node
    return True, OmegaConf.to_object(node) if OmegaConf.is_config(node) else node


def validate(cfg: DictConfig) -> None:
    """Check every numeric and enumerated key against its allowed range; raise ConfigError on the first bad one."""
    for rule in RULES:
        present, value = _lookup(cfg, rule.key)
        if not present:
            continue
        try:
            good = rule.ok(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{rule.key}={_show(value)} is not allowed: must be {rule.allowed}")
    _, nesterov = _lookup(cfg, "optimizer.nesterov")
    _, momentum = _lookup(cfg, "optimizer.momentum")
    if nesterov and not momentum:
        raise ConfigError("optimizer.nesterov=true is not allowed with optimizer.momentum=0: Nesterov needs momentum > 0")
    present, few = _lookup(cfg, "metrics.few_shot_below")
    _, many = _lookup(cfg, "metrics.many_shot_above")
    if present and many is not None and few > many + 1:
        raise ConfigError(
            f"metrics.few_shot_below={few} is not allowed: must be <= metrics.many_shot_above + 1 ({many + 1})"
        )


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if value else "''"
    return str(value)
