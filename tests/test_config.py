"""Config composition and validation (conf/, imbalance_bench/config.py)."""

from pathlib import Path

import pytest

from omegaconf import DictConfig, OmegaConf

from imbalance_bench.config import CONFIG_GROUPS, RULES, validate
from imbalance_bench.errors import ConfigError

CONF = Path(__file__).resolve().parent.parent / "conf"
# Nested options count too: conf/experiment/cui2019_table2/softmax.yaml is experiment=cui2019_table2/softmax.
OPTIONS = [(group, p.relative_to(CONF / group).with_suffix("").as_posix())
           for group in CONFIG_GROUPS for p in sorted((CONF / group).rglob("*.yaml"))]


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(CONFIG_GROUPS)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    validate(cfg)
    if group not in ("experiment", "recipe"):  # those two only change other groups
        assert "_target_" in cfg[group] or group == "trainer"


def leaves(node: DictConfig, prefix: str = ""):
    for key in node:
        value, dotted = node[key], f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from leaves(value, dotted + ".")
        else:
            yield dotted, OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def test_every_number_of_every_option_has_a_range_check(compose_cfg):
    """The schemas check types (a bool key takes only booleans); every key holding a number or a
    list of numbers in any option also has a range rule in config.RULES."""
    ruled = {rule.key for rule in RULES}
    unchecked = set()
    for group, option in OPTIONS:
        for key, value in leaves(compose_cfg([f"{group}={option}"])):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            numbers = isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value)
            if (number or numbers) and key not in ruled:
                unchecked.add(key)
    assert not unchecked, f"numeric keys without a range rule: {sorted(unchecked)}"


def test_main_job_is_its_preset_and_the_group_defaults_are_plain(compose_cfg):
    """`make run` trains class-balanced focal loss through its preset; without one, a loss is just
    that loss: `loss=ce` is plain cross-entropy unless `reweight=` says otherwise."""
    main = compose_cfg(["experiment=mnist_lt_cb_focal"])
    assert main.dataset.name == "mnist_lt" and main.dataset.imbalance_factor == 100
    assert main.model.name == "resnet32" and main.loss.name == "focal" and main.reweight.name == "cb"
    assert main.trainer.epochs <= 5
    plain = compose_cfg()
    assert plain.loss.name == "ce" and plain.reweight.name == "none"
    assert (plain.dataset, plain.model, plain.trainer, plain.scheduler) == (main.dataset, main.model, main.trainer,
                                                                           main.scheduler)
    for loss in ("ce", "bce", "focal"):
        assert compose_cfg([f"loss={loss}"]).reweight.name == "none"
    assert compose_cfg(["loss=ce", "reweight=cb"]).reweight.name == "cb"
    makefile = (CONF.parent / "Makefile").read_text()
    assert "MAIN_JOB := experiment=mnist_lt_cb_focal" in makefile and "$(MAIN_JOB) $(ARGS)" in makefile


def test_cifar_recipe_defaults(compose_cfg):
    cfg = compose_cfg(["experiment=cifar_lt"])
    assert cfg.dataset.name == "cifar10_lt"
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 2e-4
    assert cfg.scheduler.warmup_epochs == 5 and list(cfg.scheduler.milestones) == [160, 180]
    assert cfg.scheduler.gamma == 0.01
    assert cfg.trainer.batch_size == 128 and cfg.trainer.epochs == 200
    assert cfg.dataset.augment.crop_padding == 4 and cfg.dataset.augment.hflip


def test_command_line_group_choice_beats_the_preset(compose_cfg):
    cfg = compose_cfg(["experiment=cui2019_table2/cb_best_cifar10_if100", "dataset=cifar100_lt"])
    assert cfg.dataset.name == "cifar100_lt" and cfg.dataset.imbalance_factor == 100
    cfg = compose_cfg(["experiment=cifar_lt", "loss=ce", "reweight=none"])
    assert cfg.dataset.name == "cifar10_lt" and cfg.loss.name == "ce" and cfg.reweight.name == "none"


# The training recipes (conf/recipe/), each as (epochs, batch size, optimizer, lr, scheduler, warm-up
# epochs, milestones and their lr factor): written out, so that a change to a recipe file or to a
# group default shows here.
RECIPES = {
    "cifar_lt": (200, 128, "SGD", 0.1, "warmup_multistep", 5, ([160, 180], 0.01)),   # Cui et al. 2019; Cao et al. 2019
    "quick": (4, 128, "SGD", 0.1, "warmup_cosine", 0, None),
    "multimnist": (30, 128, "SGD", 0.1, "warmup_cosine", 1, None),
    "coco": (20, 32, "AdamW", 1e-4, "warmup_cosine", 1, None),
}
# not recipe options: what decoupled/crt and decoupled/lws make of quick's (Kang et al. 2020: 10 epochs,
# cosine), and Menon et al.'s CIFAR-LT recipe (lr x0.1, not x0.01, at 160 and 180)
PRESET_SCHEDULES = {"stage2": (10, 128, "SGD", 0.1, "warmup_cosine", 0, None),
                    "menon": (200, 128, "SGD", 0.1, "warmup_multistep", 5, ([160, 180], 0.1))}
DATASET_RECIPES = {"mnist_lt": "quick", "cifar10_lt": "cifar_lt", "cifar100_lt": "cifar_lt",
                   "multimnist": "multimnist", "coco": "coco"}


def recipe_of(cfg: DictConfig) -> str:
    """The name of the recipe a composed config trains with (its values if none matches)."""
    scheduler = cfg.scheduler._target_.rpartition(".")[2]
    steps = (list(cfg.scheduler.milestones), cfg.scheduler.gamma) if "milestones" in cfg.scheduler else None
    values = (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.optimizer._target_.rpartition(".")[2], cfg.optimizer.lr,
              scheduler, cfg.scheduler.warmup_epochs, steps)
    return next((name for name, recipe in {**RECIPES, **PRESET_SCHEDULES}.items() if recipe == values), str(values))


def test_every_dataset_and_recipe_is_listed():
    assert {o for g, o in OPTIONS if g == "dataset"} == set(DATASET_RECIPES)
    assert {o for g, o in OPTIONS if g == "recipe"} == set(RECIPES)


@pytest.mark.parametrize("dataset", sorted(DATASET_RECIPES))
def test_a_dataset_trains_its_recipe_unless_a_preset_or_the_command_line_picks_one(compose_cfg, dataset):
    """`imbench dataset=cifar10_lt` is the published 200-epoch recipe, not the quick MNIST one; a preset's
    recipe beats the dataset's (experiment=cifar_lt dataset=mnist_lt is 200 epochs), `recipe=` beats both."""
    own = DATASET_RECIPES[dataset]
    for overrides, recipe in [
        ([], own), (["experiment=none"], own), (["experiment=cifar_lt"], "cifar_lt"),
        (["experiment=cui2019_table2/cb_best_cifar100_if10"], "cifar_lt"), (["experiment=mnist_lt_cb_focal"], "quick"),
        (["experiment=plm_multimnist"], "multimnist"), (["experiment=focal_coco_f2"], "coco"),
        (["experiment=cao2019_table2/ldam_drw", "recipe=quick"], "quick"),
    ]:
        cfg = compose_cfg([*overrides, f"dataset={dataset}"])
        assert (cfg.dataset.name, recipe_of(cfg)) == (dataset, recipe), overrides


def loss_of(cfg: DictConfig) -> str:
    loss = cfg.loss
    if loss.name == "focal":
        return f"focal({loss.gamma:g}{',softmax' if loss.softmax else ''})"
    return f"plm({loss.base})" if loss.name == "plm" else loss.name


def reweight_of(cfg: DictConfig) -> str:
    weights = cfg.reweight
    start = f",start={weights.start_epoch}" if weights.start_epoch else ""
    return f"cb({weights.beta:g}{start})" if weights.name == "cb" else weights.name + start


# What every preset composes to on its own: dataset and imbalance factor, model, loss (focal: gamma,
# and softmax for Cao et al.'s form), re-weighting (cb: beta, and the DRW start epoch) and recipe.
PRESETS = """
none                                   mnist_lt    100 resnet32 ce               none            quick
mnist_lt_quick                         mnist_lt    100 resnet32 ce               none            quick
mnist_lt_cb_focal                      mnist_lt    100 resnet32 focal(2)         cb(0.9999)      quick
cifar_lt                               cifar10_lt  100 resnet32 ce               none            cifar_lt
plm_multimnist                         multimnist   10 resnet32 plm(bce)         none            multimnist
focal_coco_f2                          coco          - resnet50 focal(2)         none            coco
cui2019_table2/softmax                 cifar10_lt  100 resnet32 ce               none            cifar_lt
cui2019_table2/sigmoid                 cifar10_lt  100 resnet32 bce              none            cifar_lt
cui2019_table2/focal_g05               cifar10_lt  100 resnet32 focal(0.5)       none            cifar_lt
cui2019_table2/focal_g1                cifar10_lt  100 resnet32 focal(1)         none            cifar_lt
cui2019_table2/focal_g2                cifar10_lt  100 resnet32 focal(2)         none            cifar_lt
cui2019_table2/cb_best_cifar10_if200   cifar10_lt  200 resnet32 ce               cb(0.9999)      cifar_lt
cui2019_table2/cb_best_cifar10_if100   cifar10_lt  100 resnet32 focal(1)         cb(0.9999)      cifar_lt
cui2019_table2/cb_best_cifar10_if50    cifar10_lt   50 resnet32 focal(2)         cb(0.9999)      cifar_lt
cui2019_table2/cb_best_cifar10_if20    cifar10_lt   20 resnet32 ce               cb(0.9999)      cifar_lt
cui2019_table2/cb_best_cifar10_if10    cifar10_lt   10 resnet32 bce              cb(0.9999)      cifar_lt
cui2019_table2/cb_best_cifar10_if1     cifar10_lt    1 resnet32 bce              cb(0.9999)      cifar_lt
cui2019_table2/cb_best_cifar100_if200  cifar100_lt 200 resnet32 focal(1)         cb(0.9)         cifar_lt
cui2019_table2/cb_best_cifar100_if100  cifar100_lt 100 resnet32 focal(1)         cb(0.9)         cifar_lt
cui2019_table2/cb_best_cifar100_if50   cifar100_lt  50 resnet32 bce              cb(0.99)        cifar_lt
cui2019_table2/cb_best_cifar100_if20   cifar100_lt  20 resnet32 focal(0.5)       cb(0.99)        cifar_lt
cui2019_table2/cb_best_cifar100_if10   cifar100_lt  10 resnet32 focal(0.5)       cb(0.999)       cifar_lt
cui2019_table2/cb_best_cifar100_if1    cifar100_lt   1 resnet32 bce              cb(0.9999)      cifar_lt
cao2019_table2/erm                     cifar10_lt  100 resnet32 ce               none            cifar_lt
cao2019_table2/focal                   cifar10_lt  100 resnet32 focal(1,softmax) none            cifar_lt
cao2019_table2/ldam                    cifar10_lt  100 resnet32 ldam             none            cifar_lt
cao2019_table2/cb_rw                   cifar10_lt  100 resnet32 ce               cb(0.9999)      cifar_lt
cao2019_table2/cb_focal                cifar10_lt  100 resnet32 focal(1,softmax) cb(0.9999)      cifar_lt
cao2019_table2/ldam_drw                cifar10_lt  100 resnet32 ldam             cb(0.9999,start=160) cifar_lt
cao2019_table2/cb_rs                   cifar10_lt  100 resnet32 ce               none            cifar_lt
cao2019_table2/m_drw                   cifar10_lt  100 resnet32 ldam             cb(0.9999,start=160) cifar_lt
cao2019_table2/hg_drs                  cifar10_lt  100 resnet32 ldam             none            cifar_lt
cao2019_table2/ldam_hg_drs             cifar10_lt  100 resnet32 ldam             none            cifar_lt
menon2021_table3/erm                   cifar10_lt  100 resnet32 ce               none            menon
menon2021_table3/la_loss               cifar10_lt  100 resnet32 logit_adjusted   none            menon
menon2021_table3/weight_norm           cifar10_lt  100 resnet32 ce               none            menon
decoupled/crt                          mnist_lt    100 resnet32 ce               none            stage2
decoupled/lws                          mnist_lt    100 resnet32 ce               none            stage2
decoupled/tau_norm                     mnist_lt    100 resnet32 ce               none            quick
"""


PRESET_ROWS = {line.split()[0]: line.split()[1:] for line in PRESETS.strip().splitlines()}


def test_the_preset_table_lists_every_preset():
    assert set(PRESET_ROWS) == {o for g, o in OPTIONS if g == "experiment"}


@pytest.mark.parametrize("preset", PRESET_ROWS)
def test_every_preset_composes_to_its_row(compose_cfg, preset):
    """Pins what each preset trains, so that an edit to a preset, to the base it builds on
    (experiment/cifar_lt, mnist_lt_quick), to a recipe or to a group default cannot change it unnoticed."""
    cfg = compose_cfg([f"experiment={preset}"])
    factor = cfg.dataset.imbalance_factor
    found = [cfg.dataset.name, "-" if factor is None else f"{factor:g}", cfg.model.name, loss_of(cfg),
             reweight_of(cfg), recipe_of(cfg)]
    assert found == PRESET_ROWS[preset]


@pytest.mark.parametrize(
    "override, key",
    [
        ("dataset.imbalance_factor=0.5", "dataset.imbalance_factor"),
        ("dataset.imbalance_type=linear", "dataset.imbalance_type"),
        ("dataset.limit_train=0", "dataset.limit_train"),
        ("reweight=cb reweight.beta=1.0", "reweight.beta"),
        ("reweight=cb reweight.beta=-0.1", "reweight.beta"),
        ("reweight.start_epoch=-1", "reweight.start_epoch"),
        ("loss=focal loss.gamma=-0.5", "loss.gamma"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.device=tpu", "trainer.device"),
        ("trainer.monitor=auc", "trainer.monitor"),
        ("scheduler.warmup_epochs=-2", "scheduler.warmup_epochs"),
        ("scheduler.min_lr_factor=2", "scheduler.min_lr_factor"),
        ("seed=-1", "seed"),
        ("dataset.seed=-3", "dataset.seed"),
        ("dataset.limit_test=0", "dataset.limit_test"),
        ("dataset.augment.crop_padding=-1", "dataset.augment.crop_padding"),
        ("dataset.mean=[nan]", "dataset.mean"),
        ("dataset.std=[0]", "dataset.std"),
        ("optimizer.momentum=1.0", "optimizer.momentum"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.eval_batch_size=0", "trainer.eval_batch_size"),
        ("trainer.amp_dtype=float8", "trainer.amp_dtype"),
        ("trainer.num_workers=-1", "trainer.num_workers"),
        ("trainer.eval_every=0", "trainer.eval_every"),
        ("trainer.cuda_graphs=maybe", "trainer.cuda_graphs"),
        ("trainer.amp=1", "trainer.amp"),
        ("trainer.compile=yes", "trainer.compile"),
        ("trainer.data_on_device=on", "trainer.data_on_device"),
        ("trainer.sync_every=0", "trainer.sync_every"),
        ("trainer.sync_every=true", "trainer.sync_every"),
        ("trainer.resume=true", "trainer.resume"),
        ("trainer.resume=''", "trainer.resume"),
        ("metrics.many_shot_above=-1", "metrics.many_shot_above"),
        ("metrics.few_shot_below=-1", "metrics.few_shot_below"),
    ],
)
def test_bad_values_name_the_key(compose_cfg, override, key):
    cfg = compose_cfg(override.split())
    with pytest.raises(ConfigError, match=f"^{key}=") as err:
        validate(cfg)
    assert "must be" in str(err.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["scheduler=warmup_multistep", "scheduler.gamma=0"], "^scheduler.gamma=0.0 is not allowed"),
        (["optimizer=adamw", "optimizer.betas=[0.9]"], "^optimizer.betas=.* two numbers in"),
        (["optimizer=adamw", "optimizer.betas=[0.9,1.0]"], "^optimizer.betas=.* two numbers in"),
        (["optimizer.momentum=0", "optimizer.nesterov=true"], "^optimizer.nesterov=true .* momentum > 0"),
        (["metrics.few_shot_below=50", "metrics.many_shot_above=20"], "^metrics.few_shot_below=50 .* <= metrics"),
        # MultiMNIST without overlap places one digit per 28x28 cell: 64 px holds a 2x2 grid
        (["dataset=multimnist", "dataset.max_digits=5"], r"^dataset\.max_digits=5 is not allowed with "
         r"dataset\.overlap=false and dataset\.canvas_size=64: .*2x2=4 .*dataset\.canvas_size to >= 84"),
        (["dataset=coco", "dataset.head_count=10", "dataset.imbalance_factor=null"], "^dataset.head_count=10 is not allowed with dataset.imbalance_factor=null"),
    ],
)
def test_bad_combinations_name_the_key(compose_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(overrides))


def test_multimnist_digits_that_fill_the_grid_or_overlap_are_allowed(compose_cfg):
    validate(compose_cfg(["dataset=multimnist", "dataset.max_digits=9", "dataset.canvas_size=84"]))  # 3x3 cells
    validate(compose_cfg(["dataset=multimnist", "dataset.max_digits=10", "dataset.overlap=true"]))


def test_scheduler_milestones_must_be_sorted(compose_cfg):
    cfg = compose_cfg(["scheduler=warmup_multistep", "scheduler.milestones=[180,160]"])
    with pytest.raises(ConfigError, match="scheduler.milestones"):
        validate(cfg)


def test_a_sweep_composes_each_job_as_hydra_does():
    """SweepComposer composes each set of group choices once and merges each job's values into a
    copy: every job's config equals Hydra's own composition, and a bad value is the same error."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from imbalance_bench.cli import CONF_DIR, SweepComposer, compose_job, expand_jobs

    jobs = expand_jobs(["experiment=cui2019_table2/softmax,cui2019_table2/focal_g05", "dataset=cifar10_lt,cifar100_lt",
                        "dataset.imbalance_factor=10,100", "seed=0,3", "loss.gamma=1.5", "hydra.launcher.n_jobs=2",
                        "hydra/launcher=pack"], multirun=True)
    jobs = [[o for o in job if not (o == "loss.gamma=1.5" and "softmax" in job[0])] for job in jobs]
    assert len(jobs) == 16
    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composer = SweepComposer()
            for job in jobs:
                fast, hydras = composer(job), compose_job(job)
                plain = []
                for cfg in (fast, hydras):
                    assert cfg.hydra.launcher.n_jobs == 2
                    content = OmegaConf.to_container(cfg)
                    # what Hydra records about the command line itself, not a value of the job
                    content["hydra"].pop("overrides"), content["hydra"].pop("runtime")
                    content["hydra"]["job"].pop("override_dirname")
                    plain.append(content)
                assert plain[0] == plain[1], job
            assert len(composer._bases) == 4  # one composition per (experiment, dataset)
            with pytest.raises(ConfigError) as fast_error:
                composer(["dataset=cifar10_lt", "dataset.imbalance_factor=abc"])
            with pytest.raises(ConfigError) as hydra_error:
                compose_job(["dataset=cifar10_lt", "dataset.imbalance_factor=abc"])
            assert str(fast_error.value) == str(hydra_error.value)
            assert str(fast_error.value).startswith("dataset.imbalance_factor=abc is not allowed")
    finally:
        GlobalHydra.instance().clear()
