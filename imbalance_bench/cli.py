"""`imbench`: one Hydra app over conf/.

Before Hydra runs, every job of the command (each point of a multirun sweep) is composed and
validated, so a typo fails at once with one line that names the key and what is allowed,
instead of a Hydra error block or a traceback half-way through a sweep. A job of a sweep that
fails at run time (a missing dataset file, unavailable weights, a crash) prints its one line and
the sweep goes on; the command then exits 2 naming the failed jobs.

Re-running a sweep into the same folder (`hydra.sweep.dir=DIR`) skips the jobs whose metrics.json
is complete and resumes the others from their last checkpoint; the sweep ends with one line
counting the jobs trained, resumed, already complete and failed, and writes DIR/sweep.json.

Under torchrun (`torchrun --nproc_per_node=N -m imbalance_bench ...`) the N processes train one
run with DDP: rank 0 picks the run directory and passes it to the others, which log nothing and
write nothing there; only rank 0 prints errors.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from imbalance_bench import config as _schemas  # noqa: F401  (registers the structured schemas)
from imbalance_bench import CONF_DIR
from imbalance_bench.config import CONFIG_GROUPS, check_combinations, validate
from imbalance_bench.distributed import World, check_ddp, close_world, init_world, world_from_env
from imbalance_bench.errors import (
    EXIT_STOPPED, EXIT_USER_ERROR, ConfigError, ImbenchError, ProcessError, print_user_error, user_message,
)
from imbalance_bench.signals import (
    SIGNALS, Interrupted, received, report_stop, signal_name, stop_at_once, stopped_now,
)
from imbalance_bench.rundir import check_writable
from imbalance_bench.runfiles import write_json

log = logging.getLogger("imbench")
FAILED_JOBS: list[str] = []  # jobs of the current multirun that failed
JOB_RECORDS = ".jobs"  # <sweep dir>/.jobs/<job num>.json: what each job of the current sweep did
SWEEP_SUMMARY = "sweep.json"  # <sweep dir>/sweep.json: every job's outcome, written when the sweep ends
OUTCOMES = ("trained", "resumed", "complete", "failed", "stopped")  # the order of the summary line


def say_error(message: str, this_process_only: bool = False) -> None:
    """`imbench: error: MESSAGE` on stderr; in a DDP run from rank 0 alone (every process meets the
    same error), unless the error is `this_process_only`."""
    if this_process_only or world_from_env().is_main:
        print_user_error("imbench", message)


def fail(message: str, this_process_only: bool = False) -> None:
    """Print one line to stderr and exit with the user-error code."""
    say_error(message, this_process_only)
    raise SystemExit(EXIT_USER_ERROR)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_app(cfg: DictConfig) -> float:
    """The Hydra task: run one job and return the monitored metric (for Hydra sweepers).

    In a sweep a job that fails (a user error, or a crash whose traceback goes to the job's
    traceback.txt) does not stop the others; each job leaves a record that SweepReport sums up.
    A stop signal stops the whole sweep: the running jobs checkpoint, the others do not start."""
    hydra_cfg = HydraConfig.get()
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    output_dir = Path(hydra_cfg.runtime.output_dir)
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if sweeping and "joblib" in launcher:
        pin_to_gpu(cfg, int(hydra_cfg.job.num))
        SweepStop.join_as_worker(Path(hydra_cfg.sweep.dir))
    try:
        with stop_at_once():
            # after the handlers are in: a stop from here on either left the marker or reaches this job
            stopped_by = SweepStop.requested(Path(hydra_cfg.sweep.dir)) if sweeping else None
            if stopped_by is not None:
                record_job(hydra_cfg, "stopped", f"not started: the sweep was stopped by {stopped_by}")
                return float("nan")
            try:
                from imbalance_bench.train import run_job

                result = run_job(cfg, output_dir)
            except Exception:
                if received() is not None:  # the stop came out as another error (signals.py)
                    raise stopped_now(received()) from None
                raise
    except Interrupted as exc:  # SIGTERM / SIGINT / SIGUSR2: the whole command stops, sweep included
        if not sweeping:
            raise  # main prints its line
        if "submitit" in launcher:  # one SLURM job per sweep job: it ends here, and may be requeued
            report_stop("imbench", exc)
            hand_over_to_scheduler(exc.signum)
            raise SystemExit(EXIT_STOPPED) from None
        return job_stopped(hydra_cfg, exc)
    except ImbenchError as exc:
        if not sweeping:
            fail(user_message(exc), this_process_only=isinstance(exc, ProcessError))
        return job_failed(hydra_cfg, user_message(exc))
    except Exception as exc:
        if not sweeping:
            raise  # a crash of a single run: the traceback is the report
        trace = output_dir / "traceback.txt"
        trace.parent.mkdir(parents=True, exist_ok=True)
        trace.write_text(traceback.format_exc())
        return job_failed(hydra_cfg, f"crashed with {type(exc).__name__}: {_first_line(exc)} (traceback in {trace})")
    finally:
        close_job_log(output_dir)
    if sweeping:
        record_job(hydra_cfg, result.outcome)
    value = result.metrics["final"][result.metrics["monitor"]]
    return float("nan") if value is None else float(value)


def close_job_log(output_dir: Path) -> None:
    """Detach the log file Hydra opened in the job's folder: Hydra logs the next job's launch line
    before it configures that job's log, which would otherwise land in this job's imbench.log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == output_dir.resolve():
            root.removeHandler(handler)
            handler.close()


def device_for_job(choice: str, job_num: int, device_count: int) -> str:
    """The device of job `job_num` of a local parallel sweep: with several GPUs, `auto` and `cuda`
    go round-robin by job number (n_jobs at once puts n_jobs / device_count jobs on each GPU);
    an explicit choice (`cpu`, `cuda:N`) is kept."""
    if choice in ("auto", "cuda") and device_count > 1:
        return f"cuda:{job_num % device_count}"
    return choice


def pin_to_gpu(cfg: DictConfig, job_num: int) -> None:
    import torch
    from omegaconf import open_dict

    device = device_for_job(str(cfg.trainer.device), job_num, torch.cuda.device_count())
    if device != cfg.trainer.device:
        with open_dict(cfg):
            cfg.trainer.device = device
        log.info("job #%d runs on %s", job_num, device)


def hand_over_to_scheduler(signum: int | None) -> None:
    """After the checkpoint of a run stopped by SIGUSR2 is written, pass the signal on to the handler
    that was there before the run (under hydra/launcher=slurm that is submitit's, which requeues
    the job; the requeued job resumes from the checkpoint)."""
    if signum == signal.SIGUSR2 and callable(signal.getsignal(signal.SIGUSR2)):
        signal.raise_signal(signal.SIGUSR2)


def record_job(hydra_cfg, outcome: str, message: str | None = None) -> None:
    """Leave this job's record for SweepReport; jobs may run in other processes (hydra/launcher=pack),
    so the record is a file."""
    records = Path(hydra_cfg.sweep.dir) / JOB_RECORDS
    records.mkdir(parents=True, exist_ok=True)
    record = {"job": int(hydra_cfg.job.num), "overrides": " ".join(hydra_cfg.overrides.task),
              "dir": hydra_cfg.runtime.output_dir, "outcome": outcome, "error": message}
    (records / f"{hydra_cfg.job.num}.json").write_text(json.dumps(record) + "\n")


def job_failed(hydra_cfg, message: str) -> float:
    print_user_error("imbench", f"job #{hydra_cfg.job.num}: {message}")
    record_job(hydra_cfg, "failed", message)
    return float("nan")


def job_stopped(hydra_cfg, exc: Interrupted) -> float:
    """A job of a local sweep stopped by a signal (after its checkpoint): the sweep stops with it."""
    sys.stderr.write(f"imbench: job #{hydra_cfg.job.num}: {exc}\n")
    SweepStop.request(Path(hydra_cfg.sweep.dir), signal_name(exc.signum) if exc.signum else "a signal")
    record_job(hydra_cfg, "stopped", str(exc))
    return float("nan")


class SweepStop:
    """A stop signal to a local sweep (basic or joblib launcher) stops all of it, and nothing is lost.

    In the launching process the signal is not fatal: it leaves `<sweep dir>/.jobs/stop`, which keeps
    the jobs not yet started from starting, and is passed on to the joblib workers, where each
    running job checkpoints and stops like a single run. The sweep then ends as usual, with its
    summary line and sweep.json, the workers are shut down, and `imbench` exits 75."""

    MARKER = "stop"
    WORKER = "worker-"  # .jobs/worker-PID: a joblib worker ready for a stop signal
    sweep_dir: Path | None = None
    signal: str | None = None  # the signal that stopped the sweep, once one did
    _previous: dict = {}

    @classmethod
    def start(cls, sweep_dir: Path) -> None:
        cls.sweep_dir, cls.signal = sweep_dir, None
        for stale in [sweep_dir / JOB_RECORDS / cls.MARKER, *(sweep_dir / JOB_RECORDS).glob(f"{cls.WORKER}*")]:
            stale.unlink(missing_ok=True)
        os.environ[SWEEP_PARENT] = str(os.getpid())  # the joblib workers started from here inherit it
        if threading.current_thread() is threading.main_thread():
            cls._previous = {s: signal.signal(s, cls._handle) for s in SIGNALS}

    @classmethod
    def end(cls) -> None:
        """Put the handlers back and shut joblib's workers down; also when the sweep itself failed."""
        for signum, handler in cls._previous.items():
            signal.signal(signum, handler)
        cls._previous = {}
        os.environ.pop(SWEEP_PARENT, None)
        shut_down_workers()
        if cls.sweep_dir is not None:
            cls.signal = cls.requested(cls.sweep_dir)

    @classmethod
    def _handle(cls, signum, frame) -> None:
        """Between the jobs of an in-process sweep, and in the process that launched joblib's workers
        (a job in this process handles the signal itself: see hydra_app)."""
        cls.request(cls.sweep_dir, signal_name(signum))
        if signum == signal.SIGINT and from_terminal():
            return  # Ctrl-C reached the workers too: a second one would stop them before their checkpoint
        for pid in cls.workers(cls.sweep_dir):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    @classmethod
    def request(cls, sweep_dir: Path, name: str) -> None:
        marker = sweep_dir / JOB_RECORDS / cls.MARKER
        marker.parent.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            marker.write_text(name + "\n")

    @staticmethod
    def requested(sweep_dir: Path) -> str | None:
        """The signal that stopped the sweep in `sweep_dir`, or None."""
        try:
            return (sweep_dir / JOB_RECORDS / SweepStop.MARKER).read_text().strip() or "a signal"
        except OSError:
            return None

    @staticmethod
    def join_as_worker(sweep_dir: Path) -> None:
        """In a joblib worker, before its job: a stop signal between two jobs must not kill the worker
        (joblib would then abort the sweep), so it is ignored there; the launching process has kept
        the next jobs from starting. Only then does the worker list itself (`.jobs/worker-PID`) for
        the launching process to pass a signal on to: a worker still starting up gets none, and
        finds the stop marker when its first job begins."""
        if os.environ.get(SWEEP_PARENT) in (None, str(os.getpid())):
            return  # the launching process itself
        for signum in SIGNALS:
            if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
                signal.signal(signum, signal.SIG_IGN)
        (sweep_dir / JOB_RECORDS).mkdir(parents=True, exist_ok=True)
        (sweep_dir / JOB_RECORDS / f"{SweepStop.WORKER}{os.getpid()}").touch()

    @staticmethod
    def workers(sweep_dir: Path) -> list[int]:
        """The PIDs of the joblib workers that can take a stop signal now."""
        listed = (sweep_dir / JOB_RECORDS).glob(f"{SweepStop.WORKER}*")
        return [int(path.name.removeprefix(SweepStop.WORKER)) for path in listed]


SWEEP_PARENT = "IMBENCH_SWEEP_PARENT"  # the PID of the process that launched the sweep


def from_terminal() -> bool:
    """Whether this process is in the terminal's foreground process group (Ctrl-C reaches all of it)."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def shut_down_workers() -> None:
    """Stop joblib's reusable worker processes, so that none outlives the sweep."""
    if "joblib" not in sys.modules:
        return
    from joblib.externals.loky import reusable_executor

    if reusable_executor._executor is not None:
        reusable_executor._executor.shutdown(wait=True)


class SweepReport(Callback):
    """At the end of a multirun, in the launching process: one line counting the jobs that were
    trained, resumed, found complete (skipped) and failed, and `sweep.json` with every job's
    outcome (conf/config.yaml registers it under hydra.callbacks). Failed jobs make the command exit 2."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        for record in (Path(config.hydra.sweep.dir) / JOB_RECORDS).glob("*.json"):
            record.unlink()  # left by an earlier run of a sweep into the same folder
        if "submitit" not in str(config.hydra.launcher.get("_target_", "")):
            SweepStop.start(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        paths = sorted((sweep_dir / JOB_RECORDS).glob("*.json"), key=lambda p: int(p.stem))
        jobs = [json.loads(path.read_text()) for path in paths]
        counts = {outcome: sum(job["outcome"] == outcome for job in jobs) for outcome in OUTCOMES}
        write_json(sweep_dir / SWEEP_SUMMARY, {"jobs": jobs, "counts": counts})
        labels = {"complete": "already complete (skipped)"}
        log.info("sweep %s: %d job(s): %s", sweep_dir, len(jobs),
                 ", ".join(f"{n} {labels.get(outcome, outcome)}" for outcome, n in counts.items()))
        FAILED_JOBS.extend(f"#{job['job']} ({job['overrides']})" for job in jobs if job["outcome"] == "failed")
        SweepStop.end()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: pre-flight checks, then hand over to Hydra. A stop signal at any point
    ends the command with one line and exit code 75 (signals.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with stop_at_once():
        try:
            try:
                run_command(argv)
            except Exception:
                if received() is not None:  # the stop came out as another error (signals.py)
                    raise stopped_now(received()) from None
                raise
        except Interrupted as exc:
            raise SystemExit(report_stop("imbench", exc)) from None


def run_command(argv: list[str]) -> None:
    world = world_from_env()
    try:
        jobs = preflight(argv)
        if world.distributed and jobs:
            argv = join_ddp_run(argv, jobs[0], init_world())
    except ImbenchError as exc:
        fail(str(exc))
    finally:
        GlobalHydra.instance().clear()
    sys.argv = [sys.argv[0]] + argv
    FAILED_JOBS.clear()
    SweepStop.sweep_dir = SweepStop.signal = None
    try:
        hydra_app()
    finally:
        SweepStop.end()  # a no-op when the sweep's end already did it, or for a single run
        close_world()
    failed = f"{len(FAILED_JOBS)} job(s) of the sweep failed (their errors are above): {'; '.join(FAILED_JOBS)}"
    if SweepStop.signal is not None:
        raise Interrupted(f"stopped by {SweepStop.signal}: the sweep's running jobs wrote their checkpoints and the "
                          f"others did not start{'; ' + failed if FAILED_JOBS else ''}; run the same command "
                          "again to resume the sweep")
    if FAILED_JOBS:
        fail(failed)


# ------------------------------------------------------------------ pre-flight


def check_stage_of(cfg: DictConfig) -> None:
    """A decoupled stage's stage-1 run (decoupled.check_stage), read before any data."""
    from imbalance_bench.data import data_source
    from imbalance_bench.decoupled import check_stage

    check_stage(cfg, data_source(cfg.dataset).label_kind)


def preflight(argv: list[str], configs: list[DictConfig] | None = None, check_stages: bool = True) -> list[list[str]]:
    """Compose and validate every job the command line describes; raise ConfigError on the first bad one.
    Returns the jobs' override lists (none when Hydra itself answers: --help, --info, a user config tree);
    each job's composed config is appended to `configs` when given (read without composing it again).
    `check_stages=False` leaves a decoupled stage's stage-1 run unread (a table that trains it first)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    world = world_from_env()
    if world.distributed and args.multirun:
        raise ConfigError(f"-m/--multirun under torchrun ({world.size} processes) is not allowed: torchrun trains "
                          "one run; sweep with one torchrun per job, or with hydra/launcher=pack or slurm")
    modes = [flag for flag, given in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                      ("--info", args.info), ("--shell-completion", args.shell_completion)) if given]
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} cannot be given together: choose one "
                          "(to print a sweep job's config, run --cfg job with that job's values, without -m)")
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return []
    if args.config_path or (args.config_name not in (None, "config")):
        return []  # a user config tree: Hydra reports its own composition errors
    jobs = expand_jobs(args.overrides, multirun=args.multirun)
    with config_search_path(args.config_dir):
        compose = SweepComposer() if len(jobs) > 1 else compose_job
        for overrides in jobs:
            check_group_options(overrides)
            check_added_keys(overrides)
            cfg = compose(overrides)
            validate(cfg)
            check_ddp(cfg, world)
            if not args.cfg:  # a run: check what the implementations declare (this imports them, and torch),
                check_combinations(cfg)  # and since Hydra makes the run's folder first thing, that it can
                if check_stages:
                    check_stage_of(cfg)
                key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
                check_writable(Path(str(OmegaConf.select(cfg, key))), key)
            if configs is not None:
                configs.append(cfg)
    return jobs


#: overrides that rank 0 sets for every process of a DDP run, and those of the other processes
DDP_RUN_DIR = "hydra.run.dir"
DDP_QUIET = ("hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled")


def join_ddp_run(argv: list[str], overrides: list[str], world: World) -> list[str]:
    """The command line of this process of a DDP run: rank 0 resolves the run directory (its
    `${now:...}` included) and every process is given that one directory, so that the run has one
    folder, not one per process. Processes other than rank 0 write no .hydra/ and no log file."""
    from hydra._internal.utils import get_args_parser

    run_dir = None
    if world.is_main:
        with config_search_path(get_args_parser().parse_known_args(argv)[0].config_dir):
            run_dir = str(compose_job(overrides).hydra.run.dir)
    run_dir = world.broadcast(run_dir)
    quiet = () if world.is_main else DDP_QUIET
    replaced = (DDP_RUN_DIR, *(o.partition("=")[0] for o in quiet))
    kept = [a for a in argv if a.lstrip("+").partition("=")[0] not in replaced]
    return [*kept, f"{DDP_RUN_DIR}={hydra_quoted(run_dir)}", *quiet]


def hydra_quoted(value: str) -> str:
    """`value` as a single-quoted Hydra override value: quotes escaped, and backslashes doubled only
    where they precede a quote or the closing quote (Hydra's rule for quoted strings)."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"


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


def check_group_options(overrides: list[str]) -> None:
    """Each group choice (`loss=focal`, `experiment='cui2019_table2/softmax'`) names an existing option;
    values are read as Hydra parses them, quotes and spaces included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    for override in OverridesParser.create().parse_overrides(overrides):
        key, value = override.key_or_group, override.value()
        if key == "hydra/launcher":
            check_launcher(loader, str(value))
        if override.is_delete() or key not in CONFIG_GROUPS or not isinstance(value, str) or value == "":
            continue
        options = group_options(loader, key)
        if value not in options:
            raise ConfigError(f"{key}={value} is not allowed: unknown option; choose one of: {', '.join(options)}")


#: launcher options and the plugin each needs (all in the `launchers` extra)
LAUNCHER_PLUGINS = {"pack": "hydra_joblib_launcher", "joblib": "hydra_joblib_launcher",
                    "slurm": "hydra_submitit_launcher", "submitit_slurm": "hydra_submitit_launcher",
                    "submitit_local": "hydra_submitit_launcher"}


def check_launcher(loader, choice: str) -> None:
    """`hydra/launcher=NAME` names a launcher whose plugin is installed."""
    import importlib.util

    plugin = LAUNCHER_PLUGINS.get(choice)
    if plugin is not None and importlib.util.find_spec(f"hydra_plugins.{plugin}") is None:
        raise ConfigError(f"hydra/launcher={choice} is not allowed here: its plugin is not installed; "
                          "pip install 'imbalance-bench[launchers]'")
    options = group_options(loader, "hydra/launcher")
    if choice not in options:
        raise ConfigError(f"hydra/launcher={choice} is not allowed: unknown option; choose one of: {', '.join(options)}")


def check_added_keys(overrides: list[str]) -> None:
    """`+key=value` and `++key=value` add a key that the typed schemas do not know: Hydra lets them
    through, so each is composed as a plain `key=value`, which names the unknown key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    added = [o for o in parsed if (o.is_add() or o.is_force_add()) and o.key_or_group not in CONFIG_GROUPS
             and not o.key_or_group.startswith("hydra.")]
    if added:
        compose_job([o.input_line.lstrip("+") if o in added else o.input_line for o in parsed])


#: conf/, the installed plugins and a --config-dir do not change while imbench runs; keyed by search path
_GROUP_OPTIONS: dict[tuple[str, str], list[str]] = {}


def group_options(loader, group: str) -> list[str]:
    """Every option of a config group, nested ones as `sub/name` (conf/experiment/cui2019_table2/softmax.yaml
    is `experiment=cui2019_table2/softmax`), sorted. Listed once per process: Hydra reads the
    config sources again on each call, which a sweep of many jobs would pay per job."""
    key = (" ".join(source.full_path() for source in loader.get_sources()), group)
    if key not in _GROUP_OPTIONS:
        options = list(loader.get_group_options(group))
        for sub in loader.list_groups(group):
            options += [f"{sub}/{name}" for name in group_options(loader, f"{group}/{sub}")]
        _GROUP_OPTIONS[key] = sorted(options)
    return _GROUP_OPTIONS[key]


@contextmanager
def config_search_path(config_dir: str | None):
    """Hydra set up on conf/ as the app sets itself up, with `--config-dir DIR` searched first (a
    folder of the user's own options, e.g. DIR/loss/mine.yaml for `loss=mine`)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        if config_dir is not None:
            folder = Path(config_dir).expanduser().resolve()
            if not folder.is_dir():
                raise ConfigError(f"--config-dir {config_dir} is not allowed: no such folder")
            search_path = create_config_search_path(str(CONF_DIR))
            search_path.prepend(provider="command-line", path=f"file://{folder}",
                                anchor=SearchPathQuery(provider="schema"))
            GlobalHydra.instance().clear()  # initialize_config_dir puts back what was there before it
            Hydra.create_main_hydra2(task_name="imbench", config_search_path=search_path)
        yield


def compose_job(overrides: list[str]) -> DictConfig:
    """The job's config as Hydra composes it, with every value outside `hydra` resolved, so that an
    interpolation that cannot be (an unset `${oc.env:NAME}`, a key that refers to itself or to no
    key) is found here, before anything runs. Any composition error is a ConfigError naming the key."""
    try:
        cfg = hydra.compose(config_name="config", overrides=overrides, return_hydra_config=True)
        resolve_values(cfg)
    except Exception as exc:
        raise composition_error(exc, overrides) from None
    return cfg


class SweepComposer:
    """`compose_job` for the many jobs of a sweep, composing each set of group choices once.

    Hydra composes a job in two stages: the group choices (`loss=focal`, `experiment=...`) build the
    defaults list and the config from it, then the value overrides (`seed=1`,
    `dataset.imbalance_factor=10`) are merged into that config in order. The jobs of a grid mostly
    share their group choices, so here the first stage runs once per distinct set of them and the
    second, Hydra's own merge, once per job; a 72-job table is checked in a fraction of the time."""

    def __init__(self) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self._parser = OverridesParser.create()
        self._groups = set(GlobalHydra.instance().config_loader().list_groups(""))
        self._bases: dict[tuple[str, ...], DictConfig] = {}

    def is_value(self, override) -> bool:
        """A value override (merged after composition), not a group choice."""
        key = override.key_or_group
        return override.package is None and "/" not in key and ("." in key or key not in self._groups)

    def __call__(self, overrides: list[str]) -> DictConfig:
        import copy

        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        parsed = self._parser.parse_overrides(overrides)
        choices = tuple(o.input_line for o in parsed if not self.is_value(o))
        if choices not in self._bases:
            self._bases[choices] = compose_job(list(choices))
        cfg = copy.deepcopy(self._bases[choices])
        try:
            ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if self.is_value(o)], cfg)
            resolve_values(cfg)
        except Exception as exc:
            raise composition_error(exc, overrides) from None
        return cfg


def resolve_values(cfg: DictConfig) -> None:
    """Resolve every value outside `hydra`: an interpolation that cannot be resolved raises here."""
    for key in cfg:
        if key != "hydra":
            node = cfg[key]  # resolves a top-level value
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True)


def composition_error(exc: Exception, overrides: list[str]) -> ConfigError:
    """The one-line ConfigError for an exception of Hydra's composition or OmegaConf's resolution."""
    from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    key = getattr(cause, "full_key", None)
    message = _first_line(getattr(cause, "msg", cause))
    if key and isinstance(cause, InterpolationResolutionError):
        # the resolver's own words: 'KeyError raised while resolving interpolation: "Environment variable ..."'
        reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", message).strip('"')
        message = f"cannot resolve the interpolation ({reason})"
    elif key and (" not in " in message or "is not in struct" in message):
        choices = [o for o in overrides if o.partition("=")[0] in CONFIG_GROUPS]
        return ConfigError(f"{key}: unknown key; {_known_keys(key, choices)}")
    if key:
        value = next((o.partition("=")[2] for o in overrides if o.lstrip("+~").startswith(f"{key}=")), None)
        shown = f"{key}={value}" if value is not None else key
        return ConfigError(f"{shown} is not allowed: {message}")
    return ConfigError(_first_line(exc))


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
