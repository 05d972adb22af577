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

import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from imbalance_bench import CONF_DIR  # noqa: F401  (the config groups; cli.py imports them from here)
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


#: The ceilings every number is held to, because of where it ends up. Integers: int64 (numpy
#: counts, TensorBoard steps); seeds: numpy.random.seed's [0, 2^32). Floats: float32, the dtype of
#: the tensors they scale and of the scalars torch's optimisers pass to its kernels, which raise
#: on overflow ("value cannot be converted to type float without overflow").
INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32 > 0
I64 = "2^63 - 1 (int64)"
F32 = "the float32 maximum (about 3.4e38)"
#: batches, DataLoader workers, PLM histogram bins: memory-sane ceilings (each is a list, a process
#: or a per-class buffer)
MAX_BATCH = 65536
MAX_WORKERS = 256
MAX_BINS = 65536
#: image sides: MultiMNIST canvases are generated and held in memory; COCO images are resized to it
MAX_CANVAS = 1024
MAX_IMAGE_SIZE = 2048
#: MultiMNIST-LT's canvases, train and test, held in memory as uint8
MAX_CANVAS_BYTES = 16 * 2**30


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(v: Any, low: int, high: int = INT64_MAX) -> bool:
    return _is_int(v) and low <= v <= high


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _f32(v: Any) -> bool:
    """A number that is finite in float32."""
    return _num(v) and abs(v) <= FLOAT32_MAX


def _optional_positive_int(v: Any) -> bool:
    return v is None or _int(v, 1)


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
        Rule(f"{prefix}.alpha", lambda v: _f32(v) and v >= 0, f"a number >= 0 and <= {F32}"),
        Rule(f"{prefix}.beta", lambda v: _f32(v) and v >= 0, f"a number >= 0 and <= {F32}"),
        Rule(f"{prefix}.rho", lambda v: _f32(v) and v >= 1, f"a number >= 1 and <= {F32}"),
        Rule(f"{prefix}.gamma_min", lambda v: _f32(v) and v >= 0, f"a number >= 0 and <= {F32}"),
        Rule(f"{prefix}.gamma_max", lambda v: _f32(v) and v > 0, f"a number > 0 and <= {F32}"),
    )


RULES: tuple[Rule, ...] = (
    Rule("seed", lambda v: _int(v, 0, SEED_MAX), "an integer >= 0 and <= 2^32 - 1 (numpy's seed range)"),
    Rule("dataset.imbalance_factor", lambda v: v is None or (_f32(v) and v >= 1),
         f"a number >= 1 (1 = balanced) and <= {F32}"),
    Rule("dataset.imbalance_type", lambda v: v in ("exp", "step"), "one of: exp, step"),
    Rule("dataset.seed", lambda v: _int(v, 0, SEED_MAX), "an integer >= 0 and <= 2^32 - 1 (numpy's seed range)"),
    Rule("dataset.limit_train", _optional_positive_int, f"null or an integer >= 1 and <= {I64}"),
    Rule("dataset.limit_test", _optional_positive_int, f"null or an integer >= 1 and <= {I64}"),
    # the head class's count goes through the profile's float maths, exact up to 2^53
    Rule("dataset.head_count", lambda v: v is None or _int(v, 1, 2**53), "null or an integer >= 1 and <= 2^53"),
    # and no larger than the dataset's image side (check_crop_padding)
    Rule("dataset.augment.crop_padding", lambda v: _int(v, 0), f"an integer >= 0 and <= {I64}"),
    Rule(
        "dataset.augment.scale",
        lambda v: len(v) == 2 and all(_num(x) for x in v) and 0 < v[0] <= v[1] <= 1,
        "two numbers lo, hi with 0 < lo <= hi <= 1",
    ),
    # and, with dataset.std, normalised pixels finite in float32 (_check_normalisation)
    Rule("dataset.mean", lambda v: len(v) > 0 and all(_f32(m) for m in v),
         f"a list of finite numbers, each of size <= {F32}"),
    # a divisor: positive as a float32 (a normal one: those below lose precision, then round to 0)
    Rule("dataset.std", lambda v: len(v) > 0 and all(_f32(s) and s >= FLOAT32_TINY for s in v),
         f"a list of numbers > 0, each >= 1.2e-38 (the smallest normal float32) and <= {F32}"),
    Rule("dataset.canvas_size", lambda v: _int(v, 28, MAX_CANVAS),
         f"an integer >= 28 (MNIST digits are 28x28) and <= {MAX_CANVAS}"),
    Rule("dataset.min_digits", lambda v: _is_int(v) and 1 <= v <= 10, "an integer in 1..10"),
    Rule("dataset.max_digits", lambda v: _is_int(v) and 1 <= v <= 10, "an integer in 1..10"),
    # and, with dataset.canvas_size, at most MAX_CANVAS_BYTES of canvases (_check_canvas_memory)
    Rule("dataset.num_train", lambda v: _int(v, 1), f"an integer >= 1 and <= {I64}"),
    Rule("dataset.num_test", lambda v: _int(v, 1), f"an integer >= 1 and <= {I64}"),
    Rule("dataset.image_size", lambda v: _int(v, 16, MAX_IMAGE_SIZE), f"an integer >= 16 and <= {MAX_IMAGE_SIZE}"),
    Rule("model.max_image_size", _optional_positive_int, f"null or an integer >= 1 and <= {I64}"),
    Rule("dataset.bad_images", lambda v: v in ("error", "skip"), "one of: error, skip"),
    Rule("loss.gamma", lambda v: _f32(v) and v >= 0, f"a number >= 0 and <= {F32}"),
    *_dfl_rules("loss"),
    Rule("loss.base", lambda v: v in ("bce", "focal", "dfl"), "one of: bce, focal, dfl"),
    Rule("loss.bins", lambda v: _int(v, 2, MAX_BINS), f"an integer >= 2 and <= {MAX_BINS}"),
    Rule("loss.lr", lambda v: _f32(v) and v >= 0, f"a number >= 0 and <= {F32}"),
    Rule("loss.focal.gamma", lambda v: _f32(v) and v >= 0, f"a number >= 0 and <= {F32}"),
    Rule("loss.focal.softmax", lambda v: v is False, "false (PLM masks one-vs-all sigmoid terms)"),
    Rule("loss.dfl.gamma", lambda v: _f32(v) and v >= 0, f"a number >= 0 and <= {F32}"),
    *_dfl_rules("loss.dfl"),
    Rule("loss.max_margin", lambda v: _f32(v) and v > 0, f"a number > 0 and <= {F32}"),
    Rule("loss.scale", lambda v: _f32(v) and v > 0, f"a number > 0 and <= {F32}"),
    Rule("loss.gamma_pos", lambda v: _f32(v) and v >= 0, f"a number >= 0 and <= {F32}"),
    Rule("loss.gamma_neg", lambda v: _f32(v) and v >= 0, f"a number >= 0 and <= {F32}"),
    Rule("loss.clip", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    Rule("reweight.beta", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    Rule("reweight.start_epoch", lambda v: _int(v, 0), f"an integer >= 0 and <= {I64}"),
    # and the step size it leads to finite in float32 (_check_step_size)
    Rule("optimizer.lr", lambda v: _f32(v) and v > 0, f"a number > 0 and <= {F32}"),
    Rule("optimizer.momentum", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    Rule("optimizer.betas", lambda v: len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    Rule("optimizer.weight_decay", lambda v: _f32(v) and v >= 0, f"a number >= 0 and <= {F32}"),
    Rule("scheduler.warmup_epochs", lambda v: _int(v, 0), f"an integer >= 0 and <= {I64}"),
    Rule("scheduler.gamma", lambda v: _f32(v) and v > 0, f"a number > 0 and <= {F32}"),
    Rule(
        "scheduler.milestones",
        lambda v: all(_int(m, 0) for m in v) and list(v) == sorted(v),
        f"a non-decreasing list of integers >= 0 and <= {I64}",
    ),
    Rule("scheduler.min_lr_factor", lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    Rule("trainer.device", lambda v: v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(v)) is not None, "one of: auto, cpu, cuda, cuda:N"),
    Rule("trainer.epochs", lambda v: _int(v, 1), f"an integer >= 1 and <= {I64}"),
    Rule("trainer.max_steps", _optional_positive_int, f"null or an integer >= 1 and <= {I64}"),
    Rule("trainer.batch_size", lambda v: _int(v, 1, MAX_BATCH), f"an integer >= 1 and <= {MAX_BATCH}"),
    Rule("trainer.eval_batch_size", lambda v: _int(v, 1, MAX_BATCH), f"an integer >= 1 and <= {MAX_BATCH}"),
    *(
        Rule(f"trainer.{key}", lambda v: v == "auto" or isinstance(v, bool), "one of: auto, true, false")
        for key in SWITCH_KEYS
    ),
    Rule("trainer.resume", lambda v: v == "auto" or v is False or (isinstance(v, str) and v != ""),
         "auto, false or the path of a checkpoint"),
    Rule("trainer.sync_every", lambda v: v == "auto" or _int(v, 1), f"auto or an integer >= 1 and <= {I64}"),
    Rule("trainer.amp_dtype", lambda v: v in ("bfloat16", "float16"), "one of: bfloat16, float16"),
    Rule("trainer.dtype", lambda v: v in ("float32", "float64"), "one of: float32, float64"),
    Rule("trainer.num_workers", lambda v: _int(v, 0, MAX_WORKERS), f"an integer >= 0 and <= {MAX_WORKERS}"),
    Rule("trainer.eval_every", lambda v: _int(v, 1), f"an integer >= 1 and <= {I64}"),
    Rule("trainer.monitor", lambda v: v in MONITOR_CHOICES, "one of: " + ", ".join(MONITOR_CHOICES)),
    Rule("metrics.many_shot_above", lambda v: _int(v, 0), f"an integer >= 0 and <= {I64}"),
    Rule("metrics.few_shot_below", lambda v: _int(v, 0), f"an integer >= 0 and <= {I64}"),
    Rule("metrics.threshold", lambda v: _num(v) and 0 < v < 1, "a number in (0, 1)"),
)


def _lookup(cfg: DictConfig | dict, key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, (dict, DictConfig)) or part not in node:
            return False, None
        node = node[part]
    if isinstance(node, (DictConfig,)):
        return True, node
    return True, OmegaConf.to_object(node) if OmegaConf.is_config(node) else node


def _plain(cfg: DictConfig) -> dict:
    """The config outside `hydra` as resolved Python containers: one conversion, then lookups are cheap."""
    return {key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            for key, node in cfg.items() if key != "hydra"}


def validate(cfg: DictConfig) -> None:
    """Check every numeric and enumerated key against its allowed range; raise ConfigError on the first bad one."""
    values = _plain(cfg)
    for rule in RULES:
        present, value = _lookup(values, rule.key)
        if not present:
            continue
        try:
            good = rule.ok(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{rule.key}={_show(value)} is not allowed: must be {rule.allowed}")
    _, nesterov = _lookup(values, "optimizer.nesterov")
    _, momentum = _lookup(values, "optimizer.momentum")
    if nesterov and not momentum:
        raise ConfigError("optimizer.nesterov=true is not allowed with optimizer.momentum=0: Nesterov needs momentum > 0")
    for prefix in ("loss", "loss.dfl"):
        _check_gamma_range(values, prefix)
    present, head_count = _lookup(values, "dataset.head_count")
    if present and head_count is not None and _lookup(values, "dataset.imbalance_factor")[1] is None:
        raise ConfigError(
            f"dataset.head_count={head_count} is not allowed with dataset.imbalance_factor=null: "
            "it sizes the head of the long-tailed subset; set dataset.imbalance_factor too"
        )
    present, low = _lookup(values, "dataset.min_digits")
    _, high = _lookup(values, "dataset.max_digits")
    if present and high < low:
        raise ConfigError(f"dataset.max_digits={high} is not allowed: must be >= dataset.min_digits ({low})")
    _check_normalisation(values)
    _check_canvas_memory(values)
    _check_step_size(values)
    present, few = _lookup(values, "metrics.few_shot_below")
    _, many = _lookup(values, "metrics.many_shot_above")
    if present and many is not None and few > many + 1:
        raise ConfigError(
            f"metrics.few_shot_below={few} is not allowed: must be <= metrics.many_shot_above + 1 ({many + 1})"
        )


def _check_gamma_range(values: dict, prefix: str) -> None:
    present, low = _lookup(values, f"{prefix}.gamma_min")
    if not present:
        return
    _, high = _lookup(values, f"{prefix}.gamma_max")
    _, gamma = _lookup(values, f"{prefix}.gamma")
    _, learnable = _lookup(values, f"{prefix}.learnable")
    if learnable and high <= low:
        raise ConfigError(f"{prefix}.gamma_max={high} is not allowed: must be > {prefix}.gamma_min ({low})")
    if not low <= gamma <= high:
        raise ConfigError(f"{prefix}.gamma={gamma} is not allowed: must lie in [{prefix}.gamma_min, {prefix}.gamma_max] = [{low}, {high}]")


def _check_normalisation(values: dict) -> None:
    """The model sees (x - mean) / std per channel, pixels x in [0, 1], in float32: finite for every x."""
    present, mean = _lookup(values, "dataset.mean")
    _, std = _lookup(values, "dataset.std")
    if present and std is not None and any(max(abs(m), abs(1 - m)) / s > FLOAT32_MAX for m, s in zip(mean, std)):
        raise ConfigError(
            f"dataset.mean={_show(mean)} and dataset.std={_show(std)} are not allowed together: the normalised "
            f"pixels (x - mean) / std, x in [0, 1], must stay finite in float32 (within about +-3.4e38)"
        )


def _check_canvas_memory(values: dict) -> None:
    """MultiMNIST-LT generates its canvases and holds them in memory: at most MAX_CANVAS_BYTES."""
    present, size = _lookup(values, "dataset.canvas_size")
    if not present:
        return
    counts = {key: _lookup(values, f"dataset.{key}")[1] for key in ("num_train", "num_test")}
    needed = sum(counts.values()) * size * size
    if needed > MAX_CANVAS_BYTES:
        key = max(counts, key=counts.get)
        other = "num_test" if key == "num_train" else "num_train"
        raise ConfigError(
            f"dataset.{key}={counts[key]} is not allowed with dataset.{other}={counts[other]} and "
            f"dataset.canvas_size={size}: the canvases, (num_train + num_test) x canvas_size^2 bytes = "
            f"{needed / 2**30:.3g} GiB, must fit in {MAX_CANVAS_BYTES // 2**30} GiB"
        )


def _check_step_size(values: dict) -> None:
    """The optimiser's largest step must be finite in float32, or torch's update kernels raise: that is
    optimizer.lr, times scheduler.gamma^N after the N milestones when gamma > 1, and over 1 - beta1 in
    Adam's first step (its bias correction, Kingma & Ba 2015). The lr multiplier gamma^N is itself a
    float, held to the same bound (a double would overflow past about 1.8e308 with a traceback)."""
    present, lr = _lookup(values, "optimizer.lr")
    if not present:
        return
    _, gamma = _lookup(values, "scheduler.gamma")
    _, milestones = _lookup(values, "scheduler.milestones")
    _, betas = _lookup(values, "optimizer.betas")
    growth = len(milestones) * math.log(gamma) if milestones and gamma is not None and gamma > 1 else 0.0
    shrink = math.log1p(-betas[0]) if betas else 0.0
    if math.log(max(lr, 1.0)) + growth - shrink <= math.log(FLOAT32_MAX):
        return
    size = "optimizer.lr"
    if growth:
        size += f" x scheduler.gamma^{len(milestones)} (its milestones)"
    if betas:
        size += " / (1 - optimizer.betas[0])"
    key, value = ("scheduler.gamma", gamma) if growth else ("optimizer.lr", lr)
    others = [f"{k}={_show(v)}" for k, v in (("optimizer.lr", lr), ("scheduler.gamma", gamma if growth else None),
                                               ("optimizer.betas", betas)) if k != key and v is not None]
    raise ConfigError(
        f"{key}={_show(value)} is not allowed with {' and '.join(others)}: the largest step size, {size}, "
        f"must be <= {F32}"
    )


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
        check_crop_padding(cfg, image_size)


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


def check_crop_padding(cfg: DictConfig, image_size: int) -> None:
    """The random crop's zero padding is at most the image side: beyond it a crop can only gain
    black border, and the padded batch, (side + 2 x padding)^2 pixels an image, can exhaust memory."""
    present, padding = _lookup(cfg, "dataset.augment.crop_padding")
    if present and padding > image_size:
        raise ConfigError(
            f"dataset.augment.crop_padding={padding} is not allowed with dataset={cfg.dataset.name}: "
            f"must be an integer in [0, {image_size}] (its images are {image_size} px)"
        )


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else "''"
    return str(value)
