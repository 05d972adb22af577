"""Start-up cost: `imbench --help`, `imbench --cfg job` and a config mistake answer without importing torch,
torchvision, timm or scikit-learn (each takes seconds to import on a small machine), so a typo
costs a fraction of a second. Fresh interpreters, since this test process has them all loaded."""

import subprocess
import sys

import pytest

from conftest import imbench_environment

HEAVY = ("torch", "torchvision", "timm", "sklearn")
PROBE = """
import sys
from imbalance_bench.__main__ import main
sys.argv = ["imbench", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    print("EXIT", exc.code, file=sys.stderr)
else:
    print("EXIT", 0, file=sys.stderr)
print("HEAVY", *[m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
""".format(heavy=HEAVY)


@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["--cfg", "job", "experiment=focal_coco_f2"], 0),
                                        (["reweight=cb", "reweight.beta=2"], 2), (["trainer.epoch=3"], 2)])
def test_help_cfg_and_a_config_mistake_import_no_heavy_module(tmp_path, argv, code):
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=tmp_path, env=imbench_environment(),
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert lines[-2] == f"EXIT {code}" and lines[-1] == "HEAVY", proc.stderr[-2000:]
    if code:
        assert lines[0].startswith("imbench: error: ") and len(lines) == 3
