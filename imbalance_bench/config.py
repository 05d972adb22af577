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


@dataclass
class MultiMnistSchema:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    canvas_size: int = MISSING
    min_digits: int = MISSING
    max_digits: int = MISSING
    num_train: int = MISSING
    num_test: int = MISSING
    imbalance_factor: float = MISSING
    overlap: bool = MISSING
    seed: int = MISSING
    augment: AugmentSchema = field(default_factory=AugmentSchema)
    mean: List[float] = MISSING
    std: List[float] = MISSING


@dataclass
class ResizedCropAugmentSchema:
    scale: List[float] = MISSING
    hflip: bool = MISSING


@dataclass
class CocoSchema:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    image_size: int = MISSING
    imbalance_factor: Optional[float] = MISSING
    head_count: Optional[int] = MISSING
    seed: int = MISSING
    limit_train: Optional[int] = MISSING
    limit_test: Optional[int] = MISSING
    bad_images: str = MISSING
    augment: ResizedCropAugmentSchema = field(default_factory=ResizedCropAugmentSchema)
    mean: List[float] = MISSING
    std: List[float] = MISSING


# ---------------------------------------------------------------- model


@dataclass
class ModelSchema:
    _target_: str = MISSING
    name: str = MISSING
    pretrained: bool = MISSING
    max_image_size: Optional[int] = MISSING


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
class DualFocalLossSchema(PlainLossSchema):
    alpha: float = MISSING
    beta: float = MISSING
    gamma: float = MISSING
    rho: float = MISSING
    learnable: bool = MISSING
    gamma_min: float = MISSING
    gamma_max: float = MISSING


@dataclass
class LdamLossSchema(PlainLossSchema):
    max_margin: float = MISSING
    scale: float = MISSING
    normalized_classifier: bool = MISSING


@dataclass
class AsymmetricLossSchema(PlainLossSchema):
    gamma_pos: float = MISSING
    gamma_neg: float = MISSING
    clip: float = MISSING


@dataclass
class PartialLabelMaskingSchema(PlainLossSchema):
    base: str = MISSING
    bins: int = MISSING
    lr: float = MISSING
    _recursive_: bool = MISSING
    # the base losses' own options, composed from conf/loss/{bce,focal,dfl}.yaml
    bce: PlainLossSchema = field(default_factory=PlainLossSchema)
    focal: FocalLossSchema = field(default_factory=FocalLossSchema)
    dfl: DualFocalLossSchema = field(default_factory=DualFocalLossSchema)


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
    num_workers: int = MISSING
    eval_every: int = MISSING
    monitor: str = MISSING
    progress_bar: bool = MISSING
    resume: Any = MISSING  # auto | false | a checkpoint path
    # speed switches: auto | true | false (Any, so that true/false stay booleans)
    amp: Any = MISSING
    amp_dtype: str = MISSING
    data_on_device: Any = MISSING
    decode_on_device: Any = MISSING
    channels_last: Any = MISSING
    fused_optimizer: Any = MISSING
    cuda_graphs: Any = MISSING
    cudnn_benchmark: Any = MISSING
    compile: Any = MISSING
    sync_every: Any = MISSING
    deterministic: bool = MISSING
    dtype: str = MISSING


def register_schemas() -> None:
    """Register every schema under `schema/<group>/<name>` (idempotent)."""
    cs = ConfigStore.instance()
    for group, name, node in [
        ("dataset", "long_tail_images", LongTailImagesSchema),
        ("dataset", "multimnist", MultiMnistSchema),
        ("dataset", "coco", CocoSchema),
        ("model", "model", ModelSchema),
        ("loss", "plain", PlainLossSchema),
        ("loss", "focal", FocalLossSchema),
        ("loss", "dfl", DualFocalLossSchema),
        ("loss", "plm", PartialLabelMaskingSchema),
        ("loss", "ldam", LdamLossSchema),
        ("loss", "asl", AsymmetricLossSchema),
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


SINGLE_LABEL_METRICS = ("top1", "top5", "mean_f2", "macro_f2")
MULTI_LABEL_METRICS = ("map", "mean_f2", "macro_f1", "macro_f2", "precision_at_1", "precision_at_5")
MONITOR_CHOICES = ("auto",) + SINGLE_LABEL_METRICS + tuple(m for m in MULTI_LABEL_METRICS if m not in SINGLE_LABEL_METRICS)


#: the trainer's speed switches, each auto | true | false (imbalance_bench/step.py resolves them)
SWITCH_KEYS = (
    "amp", "data_on_device", "decode_on_device", "channels_last", "fused_optimizer", "cuda_graphs", "cudnn_benchmark",
    "compile",
)


def _dfl_rules(prefix: str) -> tuple[Rule, ...]:
    return (
        Rule(f"{prefix}.alpha", lambda v: _num(v) and v >= 0, "a number >= 0"),
        Rule(f"{prefix}.beta", lambda v: _num(v) and v >= 0, "a number >= 0"),
        Rule(f"{prefix}.rho", lambda v: _num(v) and v >= 1, "a number >= 1"),
        Rule(f"{prefix}.gamma_min", lambda v: _num(v) and v >= 0, "a number >= 0"),
        Rule(f"{prefix}.gamma_max", lambda v: _num(v) and v > 0, "a number > 0"),
    )


RULES: tuple[Rule, ...] = (
    Rule("seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("dataset.imbalance_factor", lambda v: v is None or (_num(v) and v >= 1), "a number >= 1 (1 = balanced)"),
    Rule("dataset.imbalance_type", lambda v: v in ("exp", "step"), "one of: exp, step"),
    Rule("dataset.seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("dataset.limit_train", _optional_positive_int, "null or an integer >= 1"),
    Rule("dataset.limit_test", _optional_positive_int, "null or an integer >= 1"),
    Rule("dataset.head_count", _optional_positive_int, "null or an integer >= 1"),
    Rule("dataset.augment.crop_padding", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule(
        "dataset.augment.scale",
        lambda v: len(v) == 2 and all(_num(x) for x in v) and 0 < v[0] <= v[1] <= 1,
        "two numbers lo, hi with 0 < lo <= hi <= 1",
    ),
    Rule("dataset.mean", lambda v: len(v) > 0 and all(_num(m) for m in v), "a list of finite numbers"),
    Rule("dataset.std", lambda v: len(v) > 0 and all(_num(s) and s > 0 for s in v), "a list of numbers > 0"),
    Rule("dataset.canvas_size", lambda v: _is_int(v) and v >= 28, "an integer >= 28 (MNIST digits are 28x28)"),
    Rule("dataset.min_digits", lambda v: _is_int(v) and 1 <= v <= 10, "an integer in 1..10"),
    Rule("dataset.max_digits", lambda v: _is_int(v) and 1 <= v <= 10, "an integer in 1..10"),
    Rule("dataset.num_train", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    Rule("dataset.num_test", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    Rule("dataset.image_size", lambda v: _is_int(v) and v >= 16, "an integer >= 16"),
    Rule("model.max_image_size", _optional_positive_int, "null or an integer >= 1"),
    Rule("dataset.bad_images", lambda v: v in ("error", "skip"), "one of: error, skip"),
    Rule("loss.gamma", lambda v: _num(v) and v >= 0, "a number >= 0"),
    *_dfl_rules("loss"),
    Rule("loss.base", lambda v: v in ("bce", "focal", "dfl"), "one of: bce, focal, dfl"),
    Rule("loss.bins", lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    Rule("loss.lr", lambda v: _num(v) and v >= 0, "a number >= 0"),
    Rule("loss.focal.gamma", lambda v: _num(v) and v >= 0, "a number >= 0"),
    Rule("loss.focal.softmax", lambda v: v is False, "false (PLM masks one-vs-all sigmoid terms)"),
    Rule("loss.dfl.gamma", lambda v: _num(v) and v >= 0, "a number >= 0"),
    *_dfl_rules("loss.dfl"),
    Rule("loss.max_margin", lambda v: _num(v) and v > 0, "a number > 0"),
    Rule("loss.scale", lambda v: _num(v) and v > 0, "a number > 0"),
    Rule("loss.gamma_pos", lambda v: _num(v) and v >= 0, "a number >= 0"),
    Rule("loss.gamma_neg", lambda v: _num(v) and v >= 0, "a number >= 0"),
    Rule("loss.clip", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
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
    *(
        Rule(f"trainer.{key}", lambda v: v == "auto" or isinstance(v, bool), "one of: auto, true, false")
        for key in SWITCH_KEYS
    ),
    Rule("trainer.resume", lambda v: v == "auto" or v is False or (isinstance(v, str) and v != ""),
         "auto, false or the path of a checkpoint"),
    Rule("trainer.sync_every", lambda v: v == "auto" or (_is_int(v) and v >= 1), "auto or an integer >= 1"),
    Rule("trainer.amp_dtype", lambda v: v in ("bfloat16", "float16"), "one of: bfloat16, float16"),
    Rule("trainer.dtype", lambda v: v in ("float32", "float64"), "one of: float32, float64"),
    Rule("trainer.num_workers", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("trainer.eval_every", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    Rule("trainer.monitor", lambda v: v in MONITOR_CHOICES, "one of: " + ", ".join(MONITOR_CHOICES)),
    Rule("metrics.many_shot_above", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("metrics.few_shot_below", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    Rule("metrics.threshold", lambda v: _num(v) and 0 < v < 1, "a number in (0, 1)"),
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
    for prefix in ("loss", "loss.dfl"):
        _check_gamma_range(cfg, prefix)
    present, head_count = _lookup(cfg, "dataset.head_count")
    if present and head_count is not None and _lookup(cfg, "dataset.imbalance_factor")[1] is None:
        raise ConfigError(
            f"dataset.head_count={head_count} is not allowed with dataset.imbalance_factor=null: "
            "it sizes the head of the long-tailed subset; set dataset.imbalance_factor too"
        )
    present, low = _lookup(cfg, "dataset.min_digits")
    _, high = _lookup(cfg, "dataset.max_digits")
    if present and high < low:
        raise ConfigError(f"dataset.max_digits={high} is not allowed: must be >= dataset.min_digits ({low})")
    present, few = _lookup(cfg, "metrics.few_shot_below")
    _, many = _lookup(cfg, "metrics.many_shot_above")
    if present and many is not None and few > many + 1:
        raise ConfigError(
            f"metrics.few_shot_below={few} is not allowed: must be <= metrics.many_shot_above + 1 ({many + 1})"
        )


def _check_gamma_range(cfg: DictConfig, prefix: str) -> None:
    present, low = _lookup(cfg, f"{prefix}.gamma_min")
    if not present:
        return
    _, high = _lookup(cfg, f"{prefix}.gamma_max")
    _, gamma = _lookup(cfg, f"{prefix}.gamma")
    _, learnable = _lookup(cfg, f"{prefix}.learnable")
    if learnable and high <= low:
        raise ConfigError(f"{prefix}.gamma_max={high} is not allowed: must be > {prefix}.gamma_min ({low})")
    if not low <= gamma <= high:
        raise ConfigError(f"{prefix}.gamma={gamma} is not allowed: must lie in [{prefix}.gamma_min, {prefix}.gamma_max] = [{low}, {high}]")


def resolve_monitor(monitor: str, label_kind: str) -> str:
    """`trainer.monitor` for a dataset of `label_kind`: auto is top1 (single) or map (multi)."""
    allowed = SINGLE_LABEL_METRICS if label_kind == "single" else MULTI_LABEL_METRICS
    if monitor == "auto":
        return allowed[0]
    if monitor not in allowed:
        raise ConfigError(
            f"trainer.monitor={monitor} is not allowed for {label_kind}-label data: must be auto or one of {', '.join(allowed)}"
        )
    return monitor


def check_combinations(cfg: DictConfig) -> None:
    """Choices that must suit each other, checked from the config alone (before any data is read):
    the loss and the monitor against the dataset's label kind, the model against its image size."""
    from imbalance_bench.data import dataset_image_size, dataset_label_kind

    label_kind = dataset_label_kind(str(cfg.dataset.get("name", "")))
    if label_kind is not None:
        check_label_kind(cfg, label_kind)
    image_size = dataset_image_size(cfg.dataset)
    if image_size is not None:
        check_model_input(cfg, image_size)


def check_label_kind(cfg: DictConfig, label_kind: str) -> None:
    """Keys that depend on the dataset's label kind: the monitor, and a loss made for that kind
    (no softmax loss on multi-label data, no label masking on single-label data)."""
    from imbalance_bench.losses import LOSSES, losses_for

    resolve_monitor(cfg.trainer.monitor, label_kind)
    dataset, loss = cfg.dataset.name, cfg.loss.name
    allowed = losses_for(label_kind)
    if loss in LOSSES and loss not in allowed:
        raise ConfigError(
            f"loss={loss} is not allowed with dataset={dataset} ({label_kind}-label): use one of {', '.join(allowed)}"
        )
    if label_kind == "multi" and cfg.loss.get("softmax") is True:
        raise ConfigError(
            f"loss.softmax=true is not allowed with dataset={dataset} (multi-label): softmax needs one label per image"
        )


def check_model_input(cfg: DictConfig, image_size: int) -> None:
    """A network sized for small images (`model.max_image_size`, e.g. the CIFAR ResNet-32, which
    never downsamples in its stem) is refused on larger ones, where it would cost (size/32)^2 times
    its CIFAR compute per image; `model.max_image_size=null` allows it."""
    limit = cfg.model.get("max_image_size")
    if limit is not None and image_size > limit:
        raise ConfigError(
            f"model={cfg.model.name} is not allowed with dataset={cfg.dataset.name} at {image_size} px: "
            f"model.max_image_size is {limit}; use a model for large images (resnet50, resnet101, seresnext101) "
            "or set model.max_image_size=null to allow it"
        )


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else "''"
    return str(value)
