"""The README's commands work as written: each `imbench ...`, `scripts/...`, `make run ARGS=...`,
`torchrun ... -m imbalance_bench ...` and `imbench-report ...` in its code blocks (and the commands in
its tables) passes pre-flight (composition, validation, combination checks) without training or
reading data, and the group table marks the defaults conf/config.yaml really has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra

from conftest import exit_code, reproduce_script_args
from imbalance_bench import cli, report_cli, reproduce

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
STARTS = ("imbench ", "imbench-report ", "scripts/", "make run", "torchrun ", "python -m imbalance_bench")


def code_lines() -> list[str]:
    """Every line of the bash code blocks, and every inline code span of a table row."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", README, flags=re.S | re.M):
        lines += block.splitlines()
    for row in (line for line in README.splitlines() if line.startswith("|")):
        lines += re.findall(r"`([^`]+)`", row)
    return lines


def readme_commands() -> list[str]:
    commands = []
    for line in code_lines():
        command = re.split(r"\s#\s", " " + line.strip() + " ", maxsplit=1)[0].strip()  # a trailing comment
        if command.startswith("scripts/"):  # checked as a dry run in any case
            command = command.replace(" --dry-run", "")
        if command.startswith(STARTS) and command not in commands:
            commands.append(command)
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_this_file_checks():
    kinds = {c.split()[0] for c in COMMANDS}
    assert {"imbench", "imbench-report", "make", "torchrun", "python"} <= kinds
    assert any(c.startswith("scripts/reproduce_") for c in COMMANDS)
    assert len(COMMANDS) >= 25


def imbench_args(command: str) -> list[str]:
    """The `imbench` arguments of a README command line."""
    words = shlex.split(command)
    if words[0] == "imbench":
        return words[1:]
    if words[0] == "make":  # make run ARGS="...": the main job's preset, then the arguments
        makefile = (REPO / "Makefile").read_text()
        main_job = re.search(r"^MAIN_JOB\s*:=\s*(.*)$", makefile, flags=re.M).group(1).split()
        extra = next((w.partition("=")[2] for w in words if w.startswith("ARGS=")), "")
        return [*main_job, *shlex.split(extra)]
    if words[0] in ("torchrun", "python"):
        return words[words.index("imbalance_bench") + 1:]
    raise AssertionError(command)


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_each_readme_command_passes_preflight(command, tmp_path, monkeypatch, capsys, imbench_in_process):
    monkeypatch.chdir(tmp_path)  # the run folders it checks are relative to the working directory
    if command.startswith("imbench-report"):  # the options (the run folders are examples)
        args = report_cli.build_parser().parse_args(shlex.split(command)[1:])
        assert args.paths
        return
    if command.startswith("scripts/"):
        args = reproduce_script_args(shlex.split(command), tmp_path)
        code = exit_code(reproduce.main, [*args, "--dry-run"])  # every job of every sweep composed and validated
        captured = capsys.readouterr()
        assert code == 0, f"{command}: exit {code}: {captured.err.strip()}"
        assert re.search(r"\d+ runs ->", captured.out)
        return
    args = imbench_args(command)
    if "--help" in args:  # Hydra answers it (and sets up its logging, which the fixture puts back)
        assert imbench_in_process(*args)[0] == 0
        return
    try:
        jobs = cli.preflight(args)
    finally:
        GlobalHydra.instance().clear()
    assert jobs, command


def test_the_group_table_marks_each_default_of_config_yaml():
    defaults = {}
    for entry in yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            (group, option), = entry.items()
            if not group.startswith("override "):
                defaults[group] = option
    table = README.split("| group | options | notes |", 1)[1].split("\n\n", 1)[0]
    marked = {}
    group = None
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        group = cells[0].strip("`") or group
        for option in re.findall(r"`([\w/]+)` \(default\)", cells[1]):
            marked[group] = option
    assert marked == defaults


def test_the_setup_heading_names_what_it_lists():
    section = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    heading = section.splitlines()[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    for line in block.splitlines():
        command = line.split("#")[0].strip()
        assert command and f"`{command}`" in heading, (command, heading)
    assert "source .venv/bin/activate" in block and 'make run ARGS="' in section


def test_make_run_prints_the_activate_hint_once():
    makefile = (REPO / "Makefile").read_text()
    stamp_recipe = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "source $(BIN)/activate" in stamp_recipe  # printed when the environment is made, not every run
    assert "activate" not in makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]

