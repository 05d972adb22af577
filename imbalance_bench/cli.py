"""`imbench`: one Hydra app over conf/.

Before Hydra runs, every job of the command (each point of a multirun sweep) is composed and
validated, so a typo fails at once with one line that names the key and what is allowed,
instead of a Hydra error block or a traceback half-way through a sweep. A job of a sweep that
stops on a user error at run time (a missing dataset file, unavailable weights) prints its one line
and the sweep goes on; the command then exits 2 naming the failed jobs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from imbalance_bench import config as _schemas  # noqa: F401  (registers the structured schemas)
from imbalance_bench.checkpoint import EXIT_INTERRUPTED, Interrupted
from imbalance_bench.config import CONFIG_GROUPS, check_label_kind, validate
from imbalance_bench.errors import ConfigError, ImbenchError, exit_user_error, print_user_error, user_message

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("imbench")
FAILED_JOBS: list[str] = []  # jobs of the current multirun that stopped on a user error
FAILED_MARKERS = ".failed_jobs"  # <sweep dir>/.failed_jobs/<job num>: one line per failed job


def fail(message: str) -> None:
    """Print one line to stderr and exit with the user-error code."""
    exit_user_error("imbench", message)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_app(cfg: DictConfig) -> float:
    """The Hydra task: run one job and return the monitored metric (for Hydra sweepers)."""
    from imbalance_bench.train import run

    hydra_cfg = HydraConfig.get()
    try:
        metrics = run(cfg, hydra_cfg.runtime.output_dir)
    except Interrupted as exc:  # SIGTERM / SIGINT: the whole command stops, sweep included
        print_user_error("imbench", str(exc))
        raise SystemExit(EXIT_INTERRUPTED) from None
    except ImbenchError as exc:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            fail(user_message(exc))
        # In a sweep the other jobs still run; main() reports the failed ones and exits non-zero.
        # Jobs may run in other processes (hydra/launcher=pack), so the record is a file.
        overrides = " ".join(hydra_cfg.overrides.task)
        markers = Path(hydra_cfg.sweep.dir) / FAILED_MARKERS
        markers.mkdir(parents=True, exist_ok=True)
        (markers / str(hydra_cfg.job.num)).write_text(f"#{hydra_cfg.job.num} ({overrides})\n")
        print_user_error("imbench", f"job #{hydra_cfg.job.num}: {user_message(exc)}")
        return float("nan")
    value = metrics["final"][metrics["monitor"]]
    return float("nan") if value is None else float(value)


class SweepFailures(Callback):
    """Collects, in the launching process, the jobs of a multirun that stopped on a user error
    (conf/config.yaml registers it under hydra.callbacks)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        for marker in (Path(config.hydra.sweep.dir) / FAILED_MARKERS).glob("*"):
            marker.unlink()  # left by an earlier sweep into the same folder

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        markers = sorted((Path(config.hydra.sweep.dir) / FAILED_MARKERS).glob("*"), key=lambda p: int(p.name))
        FAILED_JOBS.extend(marker.read_text().strip() for marker in markers)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: pre-flight checks, then hand over to Hydra."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        preflight(argv)
    except ConfigError as exc:
        fail(str(exc))
    finally:
        GlobalHydra.instance().clear()
    sys.argv = [sys.argv[0]] + argv
    FAILED_JOBS.clear()
    hydra_app()
    if FAILED_JOBS:
        fail(f"{len(FAILED_JOBS)} job(s) of the sweep failed (their errors are above): {'; '.join(FAILED_JOBS)}")


# ------------------------------------------------------------------ pre-flight


def preflight(argv: list[str]) -> list[list[str]]:
    """Compose and validate every job the command line describes; raise ConfigError on the first bad one.
    Returns the jobs' override lists (none when Hydra itself answers: --help, --info, a user config tree)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return []
    if args.config_path or args.config_dir or (args.config_name not in (None, "config")):
        return []  # a user config tree: Hydra reports its own composition errors
    jobs = expand_jobs(args.overrides, multirun=args.multirun)
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides in jobs:
            check_group_options(overrides)
            cfg = compose_job(overrides)
            validate(cfg)
            check_dataset_label_kind(cfg)
    return jobs


def expand_jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job: one job for a single run, the sweep's grid for `-m`."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"cannot parse the overrides: {_first_line(exc)}") from None
    if not multirun:
        if any(o.is_sweep_override() for o in parsed):
            sweep = next(o.input_line for o in parsed if o.is_sweep_override())
            raise ConfigError(f"{sweep}: a sweep needs multirun; add -m (or --multirun)")
        return [overrides]
    try:
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:
        # A sweeper of another kind (e.g. Optuna's interval()) describes its own grid: check the base.
        return [[o.input_line for o in parsed if not o.is_sweep_override()]]
    return [job for batch in batches for job in batch]


def check_dataset_label_kind(cfg: DictConfig) -> None:
    """trainer.monitor and the loss must suit the dataset's label kind (known before any data is read)."""
    from imbalance_bench.data import dataset_label_kind

    label_kind = dataset_label_kind(str(cfg.dataset.get("name", "")))
    if label_kind is not None:
        check_label_kind(cfg, label_kind)


def check_group_options(overrides: list[str]) -> None:
    """Each group choice (`loss=focal`, `experiment='cui2019_table2/softmax'`) names an existing option;
    values are read as Hydra parses them, quotes and spaces included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    for override in OverridesParser.create().parse_overrides(overrides):
        key, value = override.key_or_group, override.value()
        if override.is_delete() or key not in CONFIG_GROUPS or not isinstance(value, str) or value == "":
            continue
        options = group_options(loader, key)
        if value not in options:
            raise ConfigError(f"{key}={value} is not allowed: unknown option; choose one of: {', '.join(options)}")


def group_options(loader, group: str) -> list[str]:
    """Every option of a config group, nested ones as `sub/name` (conf/experiment/cui2019_table2/softmax.yaml
    is `experiment=cui2019_table2/softmax`), sorted."""
    options = list(loader.get_group_options(group))
    for sub in loader.list_groups(group):
        options += [f"{sub}/{name}" for name in group_options(loader, f"{group}/{sub}")]
    return sorted(options)


def compose_job(overrides: list[str]) -> DictConfig:
    from omegaconf.errors import OmegaConfBaseException

    try:
        return hydra.compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
        key = getattr(cause, "full_key", None)
        message = _first_line(getattr(cause, "msg", cause))
        if key and (" not in " in message or "is not in struct" in message):
            choices = [o for o in overrides if o.partition("=")[0] in CONFIG_GROUPS]
            raise ConfigError(f"{key}: unknown key; {_known_keys(key, choices)}") from None
        if key:
            value = next((o.partition("=")[2] for o in overrides if o.lstrip("+~").startswith(f"{key}=")), None)
            shown = f"{key}={value}" if value is not None else key
            raise ConfigError(f"{shown} is not allowed: {message}") from None
        raise ConfigError(_first_line(exc)) from None


def _known_keys(full_key: str, group_choices: list[str]) -> str:
    parent = full_key.rpartition(".")[0]
    base = hydra.compose(config_name="config", overrides=group_choices)  # options already checked
    node = OmegaConf.select(base, parent) if parent else base
    if isinstance(node, DictConfig):
        keys = sorted(k for k in node.keys() if not str(k).startswith("_"))
        return f"known keys{' of ' + parent if parent else ''}: {', '.join(map(str, keys))}"
    return "see `imbench --cfg job` for the known keys"


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
