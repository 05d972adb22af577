"""A run directory belongs to one process, a refused run changes nothing in it, files follow the
umask, and a stop signal at any point ends the command with one line and exit code 75.

Runs go in-process through `cli.main` unless the behaviour needs a process of its own (start-up
signals, kill -9, a packed sweep). A run killed with kill -9 mid-training, whose lock and `.tmp`
files must not get in the way of the same command, is test_resume's SIGKILL test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import IMBENCH, SMOKE, imbench_environment
from test_bad_inputs import snapshot
from imbalance_bench import cli
from imbalance_bench.errors import EXIT_STOPPED, EXIT_USER_ERROR
from imbalance_bench.rundir import LOCK_FILE, RunDirLock, remove_leftovers
from imbalance_bench.runfiles import atomic_write_bytes, write_json


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1]


@pytest.fixture
def smoke(data_root):
    """The overrides of a CPU smoke run of the main job on the tiny MNIST files."""
    return [*SMOKE, f"dataset.root={data_root}", "dataset.limit_train=200", "dataset.limit_test=50"]


# ------------------------------------------------------------------ a refused run touches nothing


def test_a_sweep_rerun_with_its_values_reordered_relabels_nothing(smoke, tmp_path, imbench_in_process):
    sweep = tmp_path / "sweep"
    code, err = imbench_in_process("-m", *smoke, "loss=ce,bce", "reweight=none", f"hydra.sweep.dir={sweep}")
    assert code == 0, err
    jobs = {name: snapshot(sweep / name) for name in ("0", "1")}
    assert "- loss=ce" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()

    code, err = imbench_in_process("-m", *smoke, "loss=bce,ce", "reweight=none", f"hydra.sweep.dir={sweep}")

    assert code == EXIT_USER_ERROR
    assert "2 job(s) of the sweep failed" in last_line(err) and "differs in loss" in err
    assert {name: snapshot(sweep / name) for name in ("0", "1")} == jobs


# ------------------------------------------------------------------ one run directory, one process


HOLD_LOCK = """
import os, sys, time
from imbalance_bench.rundir import RunDirLock
lock = RunDirLock(sys.argv[1]).acquire()
lock.announce()
if sys.argv[2:] and os.fork() == 0:  # a child, as a DataLoader worker is forked, with the lock file open
    time.sleep(60)
    os._exit(0)
print("held", flush=True)
time.sleep(60)
"""


def lock_holder(run_dir: Path, *fork_child: str) -> subprocess.Popen:
    """Another process holding the run directory's lock (as a training run does), with a forked child
    when `fork_child` is given; returns once it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir), *fork_child], stdout=subprocess.PIPE,
                              text=True, env=imbench_environment())
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_in_a_busy_run_directory_is_refused_naming_the_holder(smoke, tmp_path,
                                                                              imbench_in_process):
    """The holder is another process holding the lock: imbench exits 2 naming its PID and host,
    and writes nothing."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = lock_holder(run_dir)
    try:
        before = snapshot(run_dir)
        code, err = imbench_in_process(*smoke, f"hydra.run.dir={run_dir}")
    finally:
        holder.kill()
        holder.wait()
    assert code == EXIT_USER_ERROR
    line = last_line(err)
    assert f"in use by PID {holder.pid} on {socket.gethostname()}" in line and str(run_dir) in line
    assert snapshot(run_dir) == before


def test_a_lock_left_by_a_killed_run_never_blocks(tmp_path):
    """kill -9 of the holder frees the directory at once, even while a child it forked (a DataLoader
    worker, say) lives on with the lock file open."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = lock_holder(run_dir, "fork a child")
    [child] = children_of(holder.pid)
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert alive(child)
        assert f"PID {holder.pid}" in (run_dir / LOCK_FILE).read_text()  # left behind, as kill -9 leaves it
        with RunDirLock(run_dir) as lock:
            lock.announce()
            assert f"PID {os.getpid()}" in (run_dir / LOCK_FILE).read_text()
    finally:
        os.kill(child, signal.SIGKILL)
    assert not (run_dir / LOCK_FILE).exists()


def test_default_run_directories_of_launches_in_the_same_second_differ():
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        dirs = [str(compose(config_name="config", return_hydra_config=True).hydra.run.dir) for _ in range(2)]
    assert dirs[0] != dirs[1] and dirs[0].rpartition("-")[2].isdigit() and len(dirs[0].rpartition("-")[2]) == 6


# ------------------------------------------------------------------ the run directory can be written


def test_a_run_directory_under_a_file_is_one_line_before_anything_runs(smoke, tmp_path, imbench_in_process,
                                                                       monkeypatch):
    (tmp_path / "taken").write_text("a file\n")
    monkeypatch.setattr(cli, "hydra_app", lambda: pytest.fail("the pre-flight checks let it through"))
    code, err = imbench_in_process(*smoke, f"hydra.run.dir={tmp_path / 'taken' / 'run'}")
    assert code == EXIT_USER_ERROR
    assert last_line(err) == (f"imbench: error: hydra.run.dir={tmp_path / 'taken' / 'run'} cannot be used: "
                              f"{tmp_path / 'taken'} is a file, not a folder; choose another folder")


def test_a_run_directory_name_too_long_is_one_line(smoke, tmp_path, imbench_in_process):
    code, err = imbench_in_process("-m", *smoke, f"hydra.sweep.dir={tmp_path / ('x' * 300)}")
    assert code == EXIT_USER_ERROR
    assert "hydra.sweep.dir=" in last_line(err) and "longer than 255 bytes" in last_line(err)


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to another user for the check (needs root)")
def test_a_run_directory_without_write_permission_is_one_line(smoke, imbench_in_process):
    """As an ordinary user (nobody), a folder of mode 0555: refused before anything runs."""
    top = Path(tempfile.mkdtemp())
    try:
        top.chmod(0o755)
        (top / "read_only").mkdir(mode=0o555)
        (top / "read_only").chmod(0o555)
        os.seteuid(65534)
        try:
            code, err = imbench_in_process(*smoke, f"hydra.run.dir={top / 'read_only' / 'run'}", "--cfg", "job")
            assert code == 0  # printing the config needs no folder
            code, err = imbench_in_process(*smoke, f"hydra.run.dir={top / 'read_only' / 'run'}")
        finally:
            os.seteuid(0)
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=True)
    assert code == EXIT_USER_ERROR
    assert f"permission denied: cannot write in {top / 'read_only'}" in last_line(err)


def test_a_folder_where_metrics_json_goes_is_found_before_training(smoke, tmp_path, imbench_in_process,
                                                                   monkeypatch):
    import imbalance_bench.train as train_module

    run_dir = tmp_path / "run"
    (run_dir / "metrics.json").mkdir(parents=True)
    monkeypatch.setattr(train_module, "build_data", lambda *a, **k: pytest.fail("data read before the check"))
    code, err = imbench_in_process(*smoke, f"hydra.run.dir={run_dir}")
    assert code == EXIT_USER_ERROR
    assert last_line(err) == (f"imbench: error: {run_dir / 'metrics.json'} is a folder, where the run writes a "
                              "file; move it away or use another run directory")
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.json"]


# ------------------------------------------------------------------ files follow the umask


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_end_with_the_mode_of_a_plain_open(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        write_json(tmp_path / "metrics.json", {"a": 1})
        with open(tmp_path / "plain", "w") as fh:
            fh.write("x")
    finally:
        os.umask(previous)
    for name in ("a.bin", "metrics.json", "plain"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_leftovers_are_only_the_temporary_files_of_atomic_writes(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".metrics.json.x1.tmp", tmp_path / "checkpoints" / ".best.pt.y2.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / "metrics.json", tmp_path / "checkpoints" / "last.pt"]
    for path in stale + kept:
        path.write_text("x")
    assert sorted(remove_leftovers(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


# ------------------------------------------------------------------ stop signals anywhere


def handles(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler of its own for `signum` (SigCgt in /proc)."""
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.parametrize("signum, word", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_a_signal_during_start_up_is_one_line_and_exit_75(tmp_path, signum, word):
    proc = subprocess.Popen([*IMBENCH, "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                            env=imbench_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not handles(proc.pid, signal.SIGTERM):  # imbench's handlers are in: its heavy imports begin
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STOPPED, stderr[-3000:]
    assert last_line(stderr) == (f"imbench: stopped by {word} during start-up; run the same command again to "
                                 "start or resume the run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT])
def test_a_signal_while_the_data_is_read_is_one_line_and_exit_75(smoke, tmp_path, imbench_in_process, monkeypatch,
                                                                 signum):
    import imbalance_bench.build as build_module

    original = build_module.build_target

    def signal_during_dataset(node, key, **kwargs):
        if key == "dataset":
            os.kill(os.getpid(), signum)
        return original(node, key, **kwargs)

    monkeypatch.setattr(build_module, "build_target", signal_during_dataset)
    run_dir = tmp_path / "run"
    code, err = imbench_in_process(*smoke, f"hydra.run.dir={run_dir}")
    assert code == EXIT_STOPPED
    assert last_line(err) == (f"imbench: stopped by {signal.Signals(signum).name} during reading the data; run the "
                              "same command again to start or resume the run")
    assert not (run_dir / LOCK_FILE).exists() and not list(run_dir.rglob("*.tmp"))


def test_a_signal_during_the_final_write_leaves_no_temporary_file_and_the_rerun_finishes(smoke, tmp_path,
                                                                                         imbench_in_process,
                                                                                         monkeypatch):
    import imbalance_bench.runfiles as runfiles

    fsync = os.fsync

    def signal_while_writing_metrics(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rpartition("/")[2].startswith(".metrics.json."):
            os.kill(os.getpid(), signal.SIGTERM)
        return fsync(fd)

    monkeypatch.setattr(runfiles.os, "fsync", signal_while_writing_metrics)
    run_dir = tmp_path / "run"
    code, err = imbench_in_process(*smoke, f"hydra.run.dir={run_dir}")
    assert code == EXIT_STOPPED
    assert last_line(err).startswith("imbench: stopped by SIGTERM during writing the results;")
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "metrics.json").exists()

    monkeypatch.setattr(runfiles.os, "fsync", fsync)
    code, err = imbench_in_process(*smoke, f"hydra.run.dir={run_dir}")
    assert code == 0, err
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    return state != "Z"


def test_sigterm_to_a_packed_sweep_stops_every_job_with_a_checkpoint(smoke, tmp_path):
    """hydra/launcher=pack: SIGTERM to the launching process reaches both workers; each running job
    checkpoints and stops, the third job does not start, the sweep ends with its summary line and
    exit 75, and no worker outlives it."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [*IMBENCH, "-m", "hydra/launcher=pack", "hydra.launcher.n_jobs=2", *smoke, "dataset.limit_train=32",
         "trainer.epochs=200", "trainer.max_steps=null", "loss=ce,bce,focal", "reweight=none",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=imbench_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not all((sweep / job / "checkpoints" / "last.pt").exists() for job in ("0", "1")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    workers = children_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == EXIT_STOPPED, stderr[-3000:]
    assert "Traceback" not in stderr
    assert last_line(stderr).startswith("imbench: stopped by SIGTERM: the sweep's running jobs wrote their checkpoints")
    assert "3 job(s): 0 trained, 0 resumed, 0 already complete (skipped), 0 failed, 3 stopped" in stdout + stderr
    summary = json.loads((sweep / "sweep.json").read_text())
    assert [job["outcome"] for job in summary["jobs"]] == ["stopped"] * 3
    assert "not started" in summary["jobs"][2]["error"]
    for job in ("0", "1"):
        assert not (sweep / job / "metrics.json").exists() and not list((sweep / job).rglob("*.tmp"))
    assert not (sweep / "2" / "checkpoints").exists()
    deadline = time.monotonic() + 10
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)  # the workers and loky's resource tracker exit on their own
    assert workers and not [pid for pid in workers if alive(pid)]
