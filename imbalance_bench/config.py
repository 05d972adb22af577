"""Typed schemas for every config group, each field with its range rule beside it, and the checks
run once at start-up (cli.preflight).

The dataclasses carry types and rules, no values (every field is MISSING): the values live in
`conf/*.yaml`, which is the single source of truth. Each YAML option pulls its schema in through
`defaults: [/schema/<group>/<name>@_here_]`, so a wrong type or unknown key fails at composition
with the key named. A field's range rule is its metadata (`rule(...)`); a check that spans several
keys of one group is the schema's `cross_check`. `validate` walks the composed config's schemas.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, List, Optional

import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from imbalance_bench import CONF_DIR, is_int
from imbalance_bench.errors import ConfigError

CONFIG_GROUPS = ("dataset", "model", "loss", "reweight", "sampler", "stage", "optimizer", "scheduler", "trainer", "recipe", "experiment")

# ---------------------------------------------------------------- rules

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

SINGLE_LABEL_METRICS = ("top1", "top5", "mean_f2", "macro_f2")
MULTI_LABEL_METRICS = ("map", "mean_f2", "macro_f1", "macro_f2", "precision_at_1", "precision_at_5")
MONITOR_CHOICES = ("auto",) + SINGLE_LABEL_METRICS + tuple(m for m in MULTI_LABEL_METRICS if m not in SINGLE_LABEL_METRICS)
#: the trainer's speed switches, each auto | true | false (imbalance_bench/step.py resolves them)
SWITCH_KEYS = (
    "amp", "data_on_device", "decode_on_device", "channels_last", "fused_optimizer", "cuda_graphs", "cudnn_benchmark",
    "compile",
)


def _int(v: Any, low: int, high: int = INT64_MAX) -> bool:
    return is_int(v) and low <= v <= high


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _f32(v: Any) -> bool:
    """A number that is finite in float32."""
    return _num(v) and abs(v) <= FLOAT32_MAX


@dataclass(frozen=True)
class Rule:
    """A key's allowed values: `ok(value)`, and how the error line says what is allowed."""

    key: str
    ok: Callable[[Any], bool]
    allowed: str


RULE = "rule"  # the field metadata key


def rule(ok: Callable[[Any], bool], allowed: str) -> Any:
    """A schema field (MISSING: conf/ holds its value) with its range rule."""
    return field(default=MISSING, metadata={RULE: (ok, allowed)})


def integer(low: int = 0, high: int = INT64_MAX, high_text: str = I64, optional: bool = False, why: str = "") -> Any:
    """An integer in [low, high] (`why` explains the bounds); `optional`: null too."""
    text = f"an integer >= {low}{why} and <= {high_text}"
    if optional:
        return rule(lambda v: v is None or _int(v, low, high), f"null or {text}")
    return rule(lambda v: _int(v, low, high), text)


def number(low: float = 0, strict: bool = False) -> Any:
    """A number >= low (> low when `strict`), finite in float32."""
    if strict:
        return rule(lambda v: _f32(v) and v > low, f"a number > {low} and <= {F32}")
    return rule(lambda v: _f32(v) and v >= low, f"a number >= {low} and <= {F32}")


def fraction(high_open: bool = True) -> Any:
    """A number in [0, 1) (or [0, 1])."""
    if high_open:
        return rule(lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)")
    return rule(lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]")


def one_of(*choices: Any) -> Any:
    return rule(lambda v: v in choices, "one of: " + ", ".join(map(str, choices)))


def seed() -> Any:
    return rule(lambda v: _int(v, 0, SEED_MAX), "an integer >= 0 and <= 2^32 - 1 (numpy's seed range)")


def switch() -> Any:
    """A speed switch: auto, true or false (Any in the schema, so that true/false stay booleans)."""
    return rule(lambda v: v == "auto" or isinstance(v, bool), "one of: auto, true, false")


def _digits() -> Any:
    return rule(lambda v: is_int(v) and 1 <= v <= 10, "an integer in 1..10")


# ---------------------------------------------------------------- dataset


@dataclass
class AugmentSchema:
    # and no larger than the dataset's image side (check_crop_padding)
    crop_padding: int = integer(0)
    hflip: bool = MISSING


def check_normalisation(node: dict) -> None:
    """The model sees (x - mean) / std per channel, pixels x in [0, 1], in float32: finite for every x."""
    mean, std = node.get("mean"), node.get("std")
    if mean is not None and std is not None and any(max(abs(m), abs(1 - m)) / s > FLOAT32_MAX
                                                    for m, s in zip(mean, std)):
        raise ConfigError(
            f"dataset.mean={_show(mean)} and dataset.std={_show(std)} are not allowed together: the normalised "
            f"pixels (x - mean) / std, x in [0, 1], must stay finite in float32 (within about +-3.4e38)"
        )


# and, with dataset.std, normalised pixels finite in float32 (check_normalisation)
def _mean() -> Any:
    return rule(lambda v: len(v) > 0 and all(_f32(m) for m in v), f"a list of finite numbers, each of size <= {F32}")


# a divisor: positive as a float32 (a normal one: those below lose precision, then round to 0)
def _std() -> Any:
    return rule(lambda v: len(v) > 0 and all(_f32(s) and s >= FLOAT32_TINY for s in v),
                f"a list of numbers > 0, each >= 1.2e-38 (the smallest normal float32) and <= {F32}")


def _imbalance_factor() -> Any:
    return rule(lambda v: v is None or (_f32(v) and v >= 1), f"a number >= 1 (1 = balanced) and <= {F32}")


def _limit() -> Any:
    return integer(1, optional=True)


@dataclass
class LongTailImagesSchema:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    imbalance_factor: float = _imbalance_factor()
    imbalance_type: str = one_of("exp", "step")
    seed: int = seed()
    limit_train: Optional[int] = _limit()
    limit_test: Optional[int] = _limit()
    augment: AugmentSchema = field(default_factory=AugmentSchema)
    mean: List[float] = _mean()
    std: List[float] = _std()

    @staticmethod
    def cross_check(node: dict, root: dict, prefix: str) -> None:
        check_normalisation(node)


@dataclass
class MultiMnistSchema:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    canvas_size: int = integer(28, MAX_CANVAS, str(MAX_CANVAS), why=" (MNIST digits are 28x28)")
    min_digits: int = _digits()
    max_digits: int = _digits()
    # and, with dataset.canvas_size, at most MAX_CANVAS_BYTES of canvases (cross_check)
    num_train: int = integer(1)
    num_test: int = integer(1)
    imbalance_factor: float = _imbalance_factor()
    overlap: bool = MISSING
    seed: int = seed()
    augment: AugmentSchema = field(default_factory=AugmentSchema)
    mean: List[float] = _mean()
    std: List[float] = _std()

    @staticmethod
    def cross_check(node: dict, root: dict, prefix: str) -> None:
        from imbalance_bench.data.multimnist import DIGIT_SIZE, grid_side

        low, high = node["min_digits"], node["max_digits"]
        if high < low:
            raise ConfigError(f"dataset.max_digits={high} is not allowed: must be >= dataset.min_digits ({low})")
        size, cells = node["canvas_size"], grid_side(node["canvas_size"])
        if not node["overlap"] and high > cells * cells:  # without overlap, one digit per cell of the grid
            need = DIGIT_SIZE * math.ceil(math.sqrt(high))
            raise ConfigError(
                f"dataset.max_digits={high} is not allowed with dataset.overlap=false and dataset.canvas_size={size}: "
                f"that canvas has {cells}x{cells}={cells * cells} non-overlapping 28x28 cells; lower "
                f"dataset.max_digits to <= {cells * cells}, raise dataset.canvas_size to >= {need}, or set "
                "dataset.overlap=true"
            )
        # MultiMNIST-LT generates its canvases and holds them in memory: at most MAX_CANVAS_BYTES
        size = node["canvas_size"]
        counts = {key: node[key] for key in ("num_train", "num_test")}
        needed = sum(counts.values()) * size * size
        if needed > MAX_CANVAS_BYTES:
            key = max(counts, key=counts.get)
            other = "num_test" if key == "num_train" else "num_train"
            raise ConfigError(
                f"dataset.{key}={counts[key]} is not allowed with dataset.{other}={counts[other]} and "
                f"dataset.canvas_size={size}: the canvases, (num_train + num_test) x canvas_size^2 bytes = "
                f"{needed / 2**30:.3g} GiB, must fit in {MAX_CANVAS_BYTES // 2**30} GiB"
            )
        check_normalisation(node)


@dataclass
class ResizedCropAugmentSchema:
    scale: List[float] = rule(lambda v: len(v) == 2 and all(_num(x) for x in v) and 0 < v[0] <= v[1] <= 1,
                              "two numbers lo, hi with 0 < lo <= hi <= 1")
    hflip: bool = MISSING


@dataclass
class CocoSchema:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    image_size: int = integer(16, MAX_IMAGE_SIZE, str(MAX_IMAGE_SIZE))
    imbalance_factor: Optional[float] = _imbalance_factor()
    # the head class's count goes through the profile's float maths, exact up to 2^53
    head_count: Optional[int] = integer(1, 2**53, "2^53", optional=True)
    seed: int = seed()
    limit_train: Optional[int] = _limit()
    limit_test: Optional[int] = _limit()
    bad_images: str = one_of("error", "skip")
    augment: ResizedCropAugmentSchema = field(default_factory=ResizedCropAugmentSchema)
    mean: List[float] = _mean()
    std: List[float] = _std()

    @staticmethod
    def cross_check(node: dict, root: dict, prefix: str) -> None:
        if node["head_count"] is not None and node["imbalance_factor"] is None:
            raise ConfigError(
                f"dataset.head_count={node['head_count']} is not allowed with dataset.imbalance_factor=null: "
                "it sizes the head of the long-tailed subset; set dataset.imbalance_factor too"
            )
        check_normalisation(node)


# ---------------------------------------------------------------- model


@dataclass
class ModelSchema:
    _target_: str = MISSING
    name: str = MISSING
    pretrained: bool = MISSING
    max_image_size: Optional[int] = integer(1, optional=True)


# ---------------------------------------------------------------- loss and re-weighting


@dataclass
class PlainLossSchema:
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class FocalLossSchema(PlainLossSchema):
    gamma: float = number(0)
    softmax: bool = MISSING


@dataclass
class DualFocalLossSchema(PlainLossSchema):
    alpha: float = number(0)
    beta: float = number(0)
    gamma: float = number(0)
    rho: float = number(1)
    learnable: bool = MISSING
    gamma_min: float = number(0)
    gamma_max: float = number(0, strict=True)

    @staticmethod
    def cross_check(node: dict, root: dict, prefix: str) -> None:
        low, high, gamma = node["gamma_min"], node["gamma_max"], node["gamma"]
        if node["learnable"] and high <= low:
            raise ConfigError(f"{prefix}.gamma_max={high} is not allowed: must be > {prefix}.gamma_min ({low})")
        if not low <= gamma <= high:
            raise ConfigError(f"{prefix}.gamma={gamma} is not allowed: must lie in [{prefix}.gamma_min, "
                              f"{prefix}.gamma_max] = [{low}, {high}]")


@dataclass
class LdamLossSchema(PlainLossSchema):
    max_margin: float = number(0, strict=True)
    scale: float = number(0, strict=True)
    normalized_classifier: bool = MISSING
    uniform_margin: bool = MISSING
    form: str = one_of("ce", "hinge")


@dataclass
class HingeLossSchema(PlainLossSchema):
    margin: float = number(0, strict=True)


@dataclass
class LogitAdjustedLossSchema(PlainLossSchema):
    tau: float = number(0)


@dataclass
class AsymmetricLossSchema(PlainLossSchema):
    gamma_pos: float = number(0)
    gamma_neg: float = number(0)
    clip: float = fraction()


@dataclass
class PartialLabelMaskingSchema(PlainLossSchema):
    base: str = one_of("bce", "focal", "dfl")
    bins: int = integer(2, MAX_BINS, str(MAX_BINS))
    lr: float = number(0)
    _recursive_: bool = MISSING
    # the base losses' own options, composed from conf/loss/{bce,focal,dfl}.yaml
    bce: PlainLossSchema = field(default_factory=PlainLossSchema)
    focal: FocalLossSchema = field(default_factory=FocalLossSchema)
    dfl: DualFocalLossSchema = field(default_factory=DualFocalLossSchema)

    @staticmethod
    def cross_check(node: dict, root: dict, prefix: str) -> None:
        if node["focal"]["softmax"] is not False:
            raise ConfigError(f"{prefix}.focal.softmax={_show(node['focal']['softmax'])} is not allowed: must be "
                              "false (PLM masks one-vs-all sigmoid terms)")


@dataclass
class DeferredSchema:
    """An option that starts at epoch `start_epoch` (0-based): re-weighting (DRW) and re-sampling (DRS)."""

    _target_: str = MISSING
    name: str = MISSING
    start_epoch: int = integer(0)


@dataclass
class ReweightSchema(DeferredSchema):
    pass


@dataclass
class ClassBalancedSchema(ReweightSchema):
    beta: float = fraction()


@dataclass
class SamplerSchema(DeferredSchema):
    @staticmethod
    def cross_check(node: dict, root: dict, prefix: str) -> None:
        epochs = root["trainer"]["epochs"]
        if node["start_epoch"] >= epochs:
            raise ConfigError(f"sampler.start_epoch={node['start_epoch']} is not allowed: must be < trainer.epochs "
                              f"({epochs}), the epoch (0-based) re-sampling starts at")


@dataclass
class EffectiveNumberSamplerSchema(SamplerSchema):
    beta: float = fraction()


@dataclass
class StageSchema:
    _target_: str = MISSING
    name: str = MISSING
    init_from: Optional[str] = None  # checked by decoupled.check_stage, which reads the run it names


@dataclass
class TauNormSchema(StageSchema):
    taus: List[float] = rule(lambda v: isinstance(v, list) and len(v) > 0 and all(_f32(t) and t >= 0 for t in v),
                      f"a non-empty list of numbers >= 0 and <= {F32}")


# ---------------------------------------------------------------- optimisation


def check_step_size(node: dict, root: dict) -> None:
    """The optimiser's largest step must be finite in float32, or torch's update kernels raise: that is
    optimizer.lr, times scheduler.gamma^N after the N milestones when gamma > 1, and over 1 - beta1 in
    Adam's first step (its bias correction, Kingma & Ba 2015). The lr multiplier gamma^N is itself a
    float, held to the same bound (a double would overflow past about 1.8e308 with a traceback)."""
    lr, betas = node["lr"], node.get("betas")
    gamma, milestones = root["scheduler"].get("gamma"), root["scheduler"].get("milestones")
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


# and the step size it leads to finite in float32 (check_step_size)
def _lr() -> Any:
    return number(0, strict=True)


@dataclass
class SGDSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = _lr()
    momentum: float = fraction()
    weight_decay: float = number(0)
    nesterov: bool = MISSING

    @staticmethod
    def cross_check(node: dict, root: dict, prefix: str) -> None:
        if node["nesterov"] and not node["momentum"]:
            raise ConfigError("optimizer.nesterov=true is not allowed with optimizer.momentum=0: Nesterov needs "
                              "momentum > 0")
        check_step_size(node, root)


@dataclass
class AdamWSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = _lr()
    weight_decay: float = number(0)
    betas: List[float] = rule(lambda v: len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)")

    @staticmethod
    def cross_check(node: dict, root: dict, prefix: str) -> None:
        check_step_size(node, root)


@dataclass
class SchedulerSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    warmup_epochs: int = integer(0)


@dataclass
class WarmupMultiStepSchema(SchedulerSchema):
    milestones: List[int] = rule(lambda v: all(_int(m, 0) for m in v) and list(v) == sorted(v),
                                 f"a non-decreasing list of integers >= 0 and <= {I64}")
    gamma: float = number(0, strict=True)


@dataclass
class WarmupCosineSchema(SchedulerSchema):
    min_lr_factor: float = fraction(high_open=False)


@dataclass
class TrainerSchema:
    device: str = rule(lambda v: v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(v)) is not None,
                       "one of: auto, cpu, cuda, cuda:N")
    epochs: int = integer(1)
    max_steps: Optional[int] = integer(1, optional=True)
    batch_size: int = integer(1, MAX_BATCH, str(MAX_BATCH))
    eval_batch_size: int = integer(1, MAX_BATCH, str(MAX_BATCH))
    num_workers: int = integer(0, MAX_WORKERS, str(MAX_WORKERS))
    eval_every: int = integer(1)
    monitor: str = one_of(*MONITOR_CHOICES)
    progress_bar: bool = MISSING
    resume: Any = rule(lambda v: v == "auto" or v is False or (isinstance(v, str) and v != ""),
                       "auto, false or the path of a checkpoint")  # auto | false | a checkpoint path
    # speed switches: auto | true | false (Any, so that true/false stay booleans)
    amp: Any = switch()
    amp_dtype: str = one_of("bfloat16", "float16")
    data_on_device: Any = switch()
    decode_on_device: Any = switch()
    channels_last: Any = switch()
    fused_optimizer: Any = switch()
    cuda_graphs: Any = switch()
    cudnn_benchmark: Any = switch()
    compile: Any = switch()
    sync_every: Any = rule(lambda v: v == "auto" or _int(v, 1), f"auto or an integer >= 1 and <= {I64}")
    deterministic: bool = MISSING
    dtype: str = one_of("float32", "float64")


# ---------------------------------------------------------------- the keys of config.yaml itself


@dataclass
class MetricsSchema:
    many_shot_above: int = integer(0)
    few_shot_below: int = integer(0)
    threshold: float = rule(lambda v: _num(v) and 0 < v < 1, "a number in (0, 1)")
    logit_adjust_tau: Optional[float] = rule(lambda v: v is None or (_f32(v) and v >= 0),
                                             f"null or a number >= 0 and <= {F32}")

    @staticmethod
    def cross_check(node: dict, root: dict, prefix: str) -> None:
        few, many = node["few_shot_below"], node["many_shot_above"]
        if few > many + 1:
            raise ConfigError(
                f"metrics.few_shot_below={few} is not allowed: must be <= metrics.many_shot_above + 1 ({many + 1})"
            )


@dataclass
class RunSchema:
    """The keys config.yaml sets itself (validated only: conf/config.yaml is not typed by it)."""

    seed: int = seed()
    metrics: MetricsSchema = field(default_factory=MetricsSchema)


#: every option's schema: conf/<group>/<option>.yaml pulls it in as /schema/<group>/<name>@_here_
SCHEMAS = [
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
    ("loss", "logit_adjusted", LogitAdjustedLossSchema),
    ("loss", "hinge", HingeLossSchema),
    ("reweight", "plain", ReweightSchema),
    ("reweight", "class_balanced", ClassBalancedSchema),
    ("sampler", "sampler", SamplerSchema),
    ("sampler", "effective_number", EffectiveNumberSamplerSchema),
    ("stage", "stage", StageSchema),
    ("stage", "tau_norm", TauNormSchema),
    ("optimizer", "sgd", SGDSchema),
    ("optimizer", "adamw", AdamWSchema),
    ("scheduler", "warmup_multistep", WarmupMultiStepSchema),
    ("scheduler", "warmup_cosine", WarmupCosineSchema),
    ("trainer", "trainer", TrainerSchema),
]


def register_schemas() -> None:
    """Register every schema under `schema/<group>/<name>` (idempotent)."""
    cs = ConfigStore.instance()
    for group, name, node in SCHEMAS:
        cs.store(group=f"schema/{group}", name=name, node=node)


register_schemas()

# ---------------------------------------------------------------- validation


def _schema_nodes(cfg: DictConfig, values: dict) -> list[tuple[type, dict, str]]:
    """(schema, resolved values, dotted prefix) of every schema-typed node of the config, in order:
    config.yaml's own keys, then each group, each followed by its nested schemas."""
    found: list[tuple[type, dict, str]] = []

    def visit(schema: type, node: dict, prefix: str) -> None:
        found.append((schema, node, prefix))
        for f in fields(schema):
            if is_dataclass(f.default_factory) and isinstance(node.get(f.name), dict):
                visit(f.default_factory, node[f.name], f"{prefix}.{f.name}" if prefix else f.name)

    visit(RunSchema, values, "")
    for group in CONFIG_GROUPS:
        node = cfg.get(group)
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if is_dataclass(schema) and isinstance(values.get(group), dict):
            visit(schema, values[group], group)
    return found


def rules_of(schema: type, prefix: str) -> list[Rule]:
    """The range rules of a schema's own fields, keyed by their dotted config keys."""
    return [Rule(f"{prefix}.{f.name}" if prefix else f.name, *f.metadata[RULE]) for f in fields(schema)
            if RULE in f.metadata]


def _plain(cfg: DictConfig) -> dict:
    """The config outside `hydra` as resolved Python containers: one conversion, then lookups are cheap."""
    return {key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            for key, node in cfg.items() if key != "hydra"}


def validate(cfg: DictConfig) -> None:
    """Check every key against its schema field's rule, then each schema's checks across its keys;
    raise ConfigError on the first bad value."""
    values = _plain(cfg)
    nodes = _schema_nodes(cfg, values)
    for schema, node, prefix in nodes:
        for item in rules_of(schema, prefix):
            name = item.key.rpartition(".")[2]
            if name not in node:
                continue
            try:
                good = item.ok(node[name])
            except TypeError:
                good = False
            if not good:
                raise ConfigError(f"{item.key}={_show(node[name])} is not allowed: must be {item.allowed}")
    for schema, node, prefix in nodes:
        if hasattr(schema, "cross_check"):
            schema.cross_check(node, values, prefix)


def _all_schemas() -> list[tuple[type, str]]:
    """Every schema with the dotted prefix its keys have in a composed config."""
    found = []

    def visit(schema: type, prefix: str) -> None:
        found.append((schema, prefix))
        for f in fields(schema):
            if is_dataclass(f.default_factory):
                visit(f.default_factory, f"{prefix}.{f.name}" if prefix else f.name)

    visit(RunSchema, "")
    for group, _, schema in SCHEMAS:
        visit(schema, group)
    return found


#: every range rule, by dotted key (the first schema's, where several schemas share a key)
RULES: tuple[Rule, ...] = tuple({r.key: r for s, p in reversed(_all_schemas()) for r in rules_of(s, p)}.values())


def _lookup(cfg: DictConfig | dict, key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, (dict, DictConfig)) or part not in node:
            return False, None
        node = node[part]
    if isinstance(node, (DictConfig,)):
        return True, node
    return True, OmegaConf.to_object(node) if OmegaConf.is_config(node) else node


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
    """Choices that must suit each other, checked before any data is read from what the classes that
    `_target_` names declare (targets.py): each group's `name` label, the loss and the monitor
    against the dataset's label kind, the model and the crop padding against its image size."""
    from imbalance_bench.data import data_source
    from imbalance_bench.targets import check_label, implementation

    for group in ("dataset", "model", "loss", "reweight", "sampler", "stage"):
        check_label(cfg[group], group)
        for key, child in cfg[group].items():  # nested implementations: PLM's base losses
            if isinstance(child, DictConfig) and "_target_" in child:
                check_label(child, f"{group}.{key}")
    source = data_source(cfg.dataset)
    check_label_kind(cfg, source.label_kind, implementation(cfg.loss, "loss"))
    image_size = source.image_side(cfg.dataset)
    check_model_input(cfg, image_size)
    check_crop_padding(cfg, image_size)


def label_kinds_of(loss: Any) -> frozenset[str]:
    """The label kinds a loss class (or factory) declares it trains on; single-label if it declares none."""
    return frozenset(getattr(loss, "label_kinds", ("single",)))


def losses_for(label_kind: str) -> list[str]:
    """The options of conf/loss whose classes train on `label_kind` ("single" or "multi") data."""
    from imbalance_bench.targets import implementation

    return [path.stem for path in sorted((CONF_DIR / "loss").glob("*.yaml"))
            if label_kind in label_kinds_of(implementation(OmegaConf.load(path), f"loss={path.stem}"))]


def check_label_kind(cfg: DictConfig, label_kind: str, loss: Any) -> None:
    """Keys that depend on the dataset's label kind: the monitor, and a loss made for that kind
    (no softmax loss on multi-label data, no label masking on single-label data)."""
    resolve_monitor(cfg.trainer.monitor, label_kind)
    dataset = cfg.dataset.name
    if label_kind not in label_kinds_of(loss):
        raise ConfigError(f"loss={cfg.loss.name} is not allowed with dataset={dataset} ({label_kind}-label): "
                          f"use one of {', '.join(losses_for(label_kind))}")
    if label_kind == "multi" and cfg.metrics.get("logit_adjust_tau") is not None:
        raise ConfigError(f"metrics.logit_adjust_tau={cfg.metrics.logit_adjust_tau} is not allowed with "
                          f"dataset={dataset} (multi-label): post-hoc logit adjustment re-ranks one label per image")
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
