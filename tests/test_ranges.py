"""Every numeric range rule of config.RULES, walked at its bounds and at extreme values.

Each value is written as a command-line override on a config that has the key, and goes through
the pre-flight checks. A value outside the range must be refused there with one line that names
the key. A value inside must build everything a run builds before its first step, with
imbalance_bench.train's own builders: the data, the loss, the model, the optimiser and scheduler,
and one batch of each loader, augmented. Any other exception fails the test, and so does a rule
that has no walk below.

Composing a config with Hydra takes about 0.15 s, and the walk has several hundred values. So each
context is composed once, and each value is merged into a copy the way Hydra merges an override.
The checks that `cli.preflight` runs on a job then run on the copy. A sample of cases goes through
`cli.preflight` itself, and must end the same way.
"""

from __future__ import annotations

import copy
import json
import math
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from coco_files import write_coco
from dataset_files import write_mnist_from_digits
from imbalance_bench import cli
from imbalance_bench.checkpoint import Generators
from imbalance_bench.config import (
    FLOAT32_MAX, FLOAT32_TINY, INT64_MAX, MAX_BATCH, MAX_BINS, MAX_CANVAS, MAX_CANVAS_BYTES, MAX_IMAGE_SIZE,
    MAX_WORKERS, RULES, SEED_MAX, CONFIG_GROUPS, check_combinations, validate,
)
from imbalance_bench.errors import ConfigError
from imbalance_bench.build import (
    build_data, build_loaders, build_loss, build_model, build_optimizer, resolve_switches, seed_everything,
)
from imbalance_bench.distributed import World

F = FLOAT32_MAX
EXTREMES = (2**31, 2**32, 2**63, 1e39, 1e300, -1, 0)
CPU = torch.device("cpu")

# ------------------------------------------------------------------ contexts: small configs that have the keys

SMALL = ("trainer.device=cpu", "trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.num_workers=0",
         "trainer.progress_bar=false")
MNIST = ("dataset=mnist_lt", "dataset.limit_train=40", "dataset.limit_test=20")
MULTI = ("dataset=multimnist", "loss=bce", "dataset.num_train=40", "dataset.num_test=20", "model.max_image_size=null")
COCO = ("dataset=coco", "loss=bce", "model.max_image_size=null", "dataset.image_size=32", "dataset.limit_train=8",
        "dataset.limit_test=4", "trainer.batch_size=1", "trainer.eval_batch_size=1")
# MultiMNIST with every class in every image: feasible for any number of images, one included
ALL_DIGITS = (*MULTI, "dataset.min_digits=10", "dataset.max_digits=10", "dataset.imbalance_factor=1",
              "dataset.overlap=true")
DFL = (*MNIST, "loss=dfl")
PLM = (*MULTI, "loss=plm")
MULTISTEP = (*MNIST, "scheduler=warmup_multistep")
ADAMW = (*MNIST, "optimizer=adamw")


@dataclass(frozen=True)
class Walk:
    """How to walk one rule: the context, the allowed range there (inclusive unless open), and
    how a value is written into the key. EXTREMES, `inside`, `outside` and (with `derive`) the
    values at and just beyond each bound are tried; whether each must pass follows from the range.
    A bound that a combination check computes in floating point is walked by hand instead
    (`derive=False`, with values on either side of it), as the last bit of it can go either way."""

    context: tuple[str, ...]
    low: float | None
    high: float | None
    integer: bool = False
    open_low: bool = False
    open_high: bool = False
    template: str = "{}"
    inside: tuple = ()  # more values that must pass (a combination's bound, found by hand)
    outside: tuple = ()  # more values that must be refused
    heavy: tuple = ()  # values that pass but whose build is out of a unit test's reach: pre-flight only
    derive: bool = True

    def values(self) -> list:
        found = [*EXTREMES, *self.inside, *self.outside]
        for bound, step, is_open in ((self.low, -1, self.open_low), (self.high, 1, self.open_high)):
            if bound is None or not self.derive:
                continue
            if self.integer:
                found += [bound, bound + step]
            else:
                beyond = math.nextafter(bound, step * math.inf)
                found += [math.nextafter(bound, -step * math.inf), bound] if is_open else [bound, beyond]
        return list(dict.fromkeys(found))  # in order, each once (1 and 1.0 are one value)

    def allows(self, value) -> bool:
        if value in self.inside:
            return True
        if value in self.outside:
            return False
        if self.integer and not isinstance(value, int):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below


def ints(context, low, high, **kwargs) -> Walk:
    return Walk(context, low, high, integer=True, **kwargs)


def floats(context, low, high, **kwargs) -> Walk:
    return Walk(context, low, high, **kwargs)


CANVAS_ROOM = MAX_CANVAS_BYTES // 64**2  # canvases of the default 64 px that fit the memory cap

WALKS: dict[str, list[Walk]] = {
    "seed": [ints(MNIST, 0, SEED_MAX)],
    "dataset.seed": [ints(MNIST, 0, SEED_MAX)],
    # far out, the tail classes get no image at all: that still builds
    "dataset.imbalance_factor": [floats(MNIST, 1, F)],
    "dataset.limit_train": [ints(MNIST, 1, INT64_MAX)],
    "dataset.limit_test": [ints(MNIST, 1, INT64_MAX)],
    "dataset.head_count": [ints((*COCO, "dataset.imbalance_factor=2"), 1, 2**53)],
    "dataset.augment.crop_padding": [ints(MNIST, 0, 28)],  # no more than the 28 px images
    "dataset.augment.scale": [floats(COCO, 0, 1, open_low=True, template="[{},1.0]"),
                              floats(COCO, 0.5, 1, template="[0.5,{}]")],
    # (x - mean) / std within float32 for x in [0, 1], at the context's std 0.3081: |mean| <= 1.048e38
    "dataset.mean": [floats(MNIST, -1.04e38, 1.04e38, template="[{}]", derive=False, inside=(-1.04e38, 1.04e38),
                            outside=(-1.05e38, 1.05e38, -F, F))],
    "dataset.std": [floats(MNIST, FLOAT32_TINY, F, template="[{}]")],
    "dataset.canvas_size": [ints((*MULTI, "dataset.overlap=true"), 28, MAX_CANVAS)],
    "dataset.min_digits": [ints((*ALL_DIGITS, "dataset.min_digits=1"), 1, 10)],
    "dataset.max_digits": [ints((*ALL_DIGITS, "dataset.max_digits=1", "dataset.min_digits=1"), 1, 10)],
    # (num_train + num_test) canvases of 64 x 64 bytes within MAX_CANVAS_BYTES
    "dataset.num_train": [ints(ALL_DIGITS, 1, CANVAS_ROOM - 20, heavy=(CANVAS_ROOM - 20,))],
    "dataset.num_test": [ints(ALL_DIGITS, 1, CANVAS_ROOM - 40, heavy=(CANVAS_ROOM - 40,))],
    "dataset.image_size": [ints(COCO, 16, MAX_IMAGE_SIZE)],
    "model.max_image_size": [ints(MNIST, 28, INT64_MAX, outside=(1,))],  # not below the 28 px images
    "loss.gamma": [floats((*MNIST, "loss=focal"), 0, F)],
    "loss.alpha": [floats(DFL, 0, F)],
    "loss.beta": [floats(DFL, 0, F)],
    "loss.rho": [floats(DFL, 1, F)],
    "loss.gamma_min": [floats((*DFL, "loss.learnable=false", f"loss.gamma={F!r}", f"loss.gamma_max={F!r}"), 0, F)],
    "loss.gamma_max": [floats((*DFL, "loss.gamma=0"), 0, F, open_low=True)],
    "loss.bins": [ints(PLM, 2, MAX_BINS)],
    "loss.lr": [floats(PLM, 0, F)],
    "loss.focal.gamma": [floats((*PLM, "loss.base=focal"), 0, F)],
    "loss.dfl.gamma": [floats((*PLM, "loss.base=dfl", "loss.dfl.learnable=false", f"loss.dfl.gamma_max={F!r}"), 0, F)],
    "loss.dfl.alpha": [floats((*PLM, "loss.base=dfl"), 0, F)],
    "loss.dfl.beta": [floats((*PLM, "loss.base=dfl"), 0, F)],
    "loss.dfl.rho": [floats((*PLM, "loss.base=dfl"), 1, F)],
    "loss.dfl.gamma_min": [floats((*PLM, "loss.base=dfl", "loss.dfl.learnable=false", f"loss.dfl.gamma={F!r}",
                                   f"loss.dfl.gamma_max={F!r}"), 0, F)],
    "loss.dfl.gamma_max": [floats((*PLM, "loss.base=dfl", "loss.dfl.gamma=0"), 0, F, open_low=True)],
    "loss.max_margin": [floats((*MNIST, "loss=ldam"), 0, F, open_low=True)],
    "loss.scale": [floats((*MNIST, "loss=ldam"), 0, F, open_low=True)],
    "loss.gamma_pos": [floats((*MNIST, "loss=asl"), 0, F)],
    "loss.gamma_neg": [floats((*MNIST, "loss=asl"), 0, F)],
    "loss.clip": [floats((*MNIST, "loss=asl"), 0, 1, open_high=True)],
    "loss.tau": [floats((*MNIST, "loss=logit_adjusted"), 0, F)],
    "loss.margin": [floats((*MNIST, "loss=hinge"), 0, F, open_low=True)],
    "reweight.beta": [floats((*MNIST, "reweight=cb"), 0, 1, open_high=True)],
    "reweight.start_epoch": [ints(MNIST, 0, INT64_MAX)],
    "sampler.start_epoch": [ints((*MNIST, "sampler=class_balanced"), 0, 3)],  # < the quick recipe's 4 epochs
    "sampler.beta": [floats((*MNIST, "sampler=effective_number"), 0, 1, open_high=True)],
    "stage.taus": [floats((*MNIST, "stage=tau_norm"), 0, F, template="[{}]")],
    # the largest step, lr x gamma^(milestones) / (1 - beta1), is finite in float32 too
    "optimizer.lr": [floats(MNIST, 0, F, open_low=True),
                     floats(ADAMW, 0, 3.4e37, open_low=True, derive=False, inside=(3.4e37,), outside=(3.41e37,))],
    "optimizer.momentum": [floats(MNIST, 0, 1, open_high=True)],
    "optimizer.betas": [floats(ADAMW, 0, 1, open_high=True, template="[{},0.999]"),
                        floats(ADAMW, 0, 1, open_high=True, template="[0.9,{}]")],
    "optimizer.weight_decay": [floats(MNIST, 0, F), floats(ADAMW, 0, F)],
    "scheduler.warmup_epochs": [ints(MULTISTEP, 0, INT64_MAX)],
    "scheduler.gamma": [floats((*MULTISTEP, "scheduler.milestones=[]"), 0, F, open_low=True),
                        # two milestones at lr 0.1: gamma^2 <= 3.4e38
                        floats(MULTISTEP, 0, 1.8e19, open_low=True, derive=False, inside=(1.8e19,), outside=(1.9e19,))],
    "scheduler.milestones": [ints(MULTISTEP, 0, INT64_MAX, template="[{}]")],
    "scheduler.min_lr_factor": [floats(MNIST, 0, 1)],
    "trainer.epochs": [ints(MNIST, 1, INT64_MAX)],
    "trainer.max_steps": [ints(MNIST, 1, INT64_MAX)],
    "trainer.batch_size": [ints(MNIST, 1, MAX_BATCH)],
    "trainer.eval_batch_size": [ints(MNIST, 1, MAX_BATCH)],
    "trainer.sync_every": [ints(MNIST, 1, INT64_MAX)],
    "trainer.num_workers": [ints(MNIST, 0, MAX_WORKERS)],
    "trainer.eval_every": [ints(MNIST, 1, INT64_MAX)],
    # metrics.few_shot_below (20) <= metrics.many_shot_above + 1
    "metrics.many_shot_above": [ints(MNIST, 19, INT64_MAX)],
    "metrics.few_shot_below": [ints(MNIST, 0, 101)],
    "metrics.threshold": [floats(MNIST, 0, 1, open_low=True, open_high=True)],
    "metrics.logit_adjust_tau": [floats(MNIST, 0, F)],
}

#: values whose build would start that many DataLoader worker processes: built, but no batch drawn
MAX_WORKERS_DRAWN = 2

# A sample that runs through `cli.preflight` itself (Hydra composes each): the values of the issue,
# type errors, the combination checks, and values that pass.
THROUGH_PREFLIGHT = [
    ("seed", 0, 2**32), ("seed", 0, SEED_MAX), ("optimizer.lr", 0, 1e39), ("optimizer.weight_decay", 0, 1e300),
    ("dataset.augment.crop_padding", 0, 1000000000), ("dataset.augment.crop_padding", 0, 28),
    ("trainer.epochs", 0, 1e39), ("optimizer.lr", 1, 3.41e37), ("scheduler.gamma", 1, 1.9e19),
    ("dataset.num_train", 0, CANVAS_ROOM - 19), ("dataset.canvas_size", 0, 1025), ("optimizer.betas", 0, 1.0),
    ("loss.dfl.gamma_min", 0, F),
]


def rule_is_numeric(rule) -> bool:
    """Whether the rule takes numbers (or lists of them): the walk must cover it."""
    def ok(value):
        try:
            return rule.ok(value)
        except (TypeError, IndexError):
            return False

    return any(ok(v) for v in (0, 1, 2, 28, 100, 0.5, [0.5], [0.5, 0.5], [0.5, 1.0], [1, 2]))


def test_every_numeric_rule_has_a_walk():
    numeric = {rule.key for rule in RULES if rule_is_numeric(rule)}
    assert numeric - set(WALKS) == set(), "numeric rules without a walk in tests/test_ranges.py"
    assert set(WALKS) - numeric == set(), "walks of keys that have no numeric rule"


def override(key: str, walk: Walk, value) -> str:
    return f"{key}={walk.template.format(repr(value) if isinstance(value, float) else value)}"


# ------------------------------------------------------------------ pre-flight and build


def merge(lines: list[str], cfg: DictConfig) -> None:
    """Merge overrides into a composed config as Hydra does; an error is the ConfigError compose_job gives."""
    try:
        ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(lines), cfg)
    except Exception as exc:
        raise cli.composition_error(exc, lines) from None


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The walk's tensors are tiny: handing each op to a pool of threads costs more than the op,
    and far more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ranges")
    write_mnist_from_digits(root / "mnist")
    write_coco(root / "coco")
    return {"coco": root / "coco", "default": root / "mnist", "runs": root / "runs"}


class Walker:
    """Composed contexts, and built data and models, kept for the whole walk."""

    def __init__(self, roots: dict[str, Path]):
        self.roots = roots
        self.composed: dict[tuple[str, ...], DictConfig] = {}  # by group choices
        self.bases: dict[tuple[str, ...], DictConfig] = {}  # by context
        self.data: dict[str, object] = {}
        self.models: dict[str, torch.nn.Module] = {}

    def context(self, walk: Walk) -> list[str]:
        root = self.roots["coco" if "dataset=coco" in walk.context else "default"]
        return [*SMALL, *walk.context, f"dataset.root={root}"]

    def preflight(self, key: str, walk: Walk, value) -> DictConfig:
        """`cli.preflight`'s checks of one job. Hydra composes the context's group choices once;
        the context's values, then the walked one, are merged as Hydra merges overrides
        (ConfigLoaderImpl._apply_overrides_to_config)."""
        context = tuple(self.context(walk))
        if context not in self.bases:
            choices = tuple(o for o in context if o.partition("=")[0] in CONFIG_GROUPS)
            if choices not in self.composed:
                with initialize_config_dir(config_dir=str(cli.CONF_DIR), version_base="1.3"):
                    self.composed[choices] = cli.compose_job(list(choices))
                with open_dict(self.composed[choices]):
                    del self.composed[choices]["hydra"]
            base = copy.deepcopy(self.composed[choices])
            merge([o for o in context if o not in choices], base)
            self.bases[context] = base
        cfg = copy.deepcopy(self.bases[context])
        merge([override(key, walk, value)], cfg)
        validate(cfg)
        check_combinations(cfg)
        return cfg

    def build(self, cfg: DictConfig) -> None:
        """What a run builds before its first step; the data and the model are built once for each
        config they read (a model reads its own keys, the data's classes and channels, and the
        loss's head)."""
        seed_everything(cfg.seed)
        data_key = json.dumps(OmegaConf.to_container(cfg.dataset, resolve=True), sort_keys=True)
        if data_key not in self.data:
            run_dir = self.roots["runs"] / str(len(self.data))
            run_dir.mkdir(parents=True)
            self.data[data_key] = build_data(cfg, run_dir, World())
        data = self.data[data_key]
        switches = resolve_switches(cfg, CPU, data, World())
        criterion, reweighting = build_loss(cfg, data, CPU)
        weights = reweighting.weights_for_epoch(reweighting.start_epoch, data.train_class_counts)
        assert weights is None or torch.isfinite(weights).all()
        model_key = json.dumps([OmegaConf.to_container(cfg.model), data.num_classes, data.in_chans, cfg.trainer.dtype,
                                type(criterion).__name__, criterion.normalized_classifier, criterion.sigmoid_head])
        if model_key not in self.models:
            self.models[model_key] = build_model(cfg, data, criterion, CPU, switches.channels_last, World())
        build_optimizer(cfg, self.models[model_key], criterion, switches)  # the optimiser and its scheduler
        generators = Generators.seeded(cfg.seed, CPU)
        train_loader, test_loader = build_loaders(cfg, data, CPU, switches, generators.shuffle, World())
        if cfg.trainer.num_workers > MAX_WORKERS_DRAWN:
            return
        for loader, train in ((train_loader, True), (test_loader, False)):
            images, targets = next(iter(loader))
            inputs = data.transform(images, train=train, generator=generators.augment)
            assert inputs.shape[0] == targets.shape[0] > 0 and torch.isfinite(inputs).all()


@pytest.fixture(scope="module")
def walker(roots) -> Walker:
    return Walker(roots)


WALKED = [(key, i) for key, walks in WALKS.items() for i in range(len(walks))]


@pytest.mark.parametrize("key, i", WALKED, ids=[f"{key}[{i}]" for key, i in WALKED])
def test_each_value_is_refused_at_preflight_or_builds(walker, key, i):
    walk = WALKS[key][i]
    problems = []
    for value in walk.values():
        line = override(key, walk, value)
        try:
            cfg = walker.preflight(key, walk, value)
        except ConfigError as error:
            message = str(error)
            if walk.allows(value):
                problems.append(f"{line}: refused: {message}")
            elif len(message.splitlines()) != 1 or key not in message:
                problems.append(f"{line}: refused, but not in one line naming {key}: {message!r}")
            continue
        if not walk.allows(value):
            problems.append(f"{line}: let through")
        elif value not in walk.heavy:
            try:
                walker.build(cfg)
            except Exception as exc:
                problems.append(f"{line}: the build failed: {''.join(traceback.format_exception(exc)[-3:])}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("key, i, value", THROUGH_PREFLIGHT,
                         ids=[f"{k}[{i}]={v!r}" for k, i, v in THROUGH_PREFLIGHT])
def test_cli_preflight_agrees(walker, key, i, value):
    walk = WALKS[key][i]
    try:
        walker.preflight(key, walk, value)
        expected = None
    except ConfigError as error:
        expected = str(error)
    try:
        cli.preflight([*walker.context(walk), override(key, walk, value)])
        found = None
    except ConfigError as error:
        found = str(error)
    assert found == expected
