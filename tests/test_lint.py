"""pyflakes over the code: an undefined name in a rarely-run branch (a timer, an error path) fails here, not in
production."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyflakes_clean():
    p = subprocess.run([sys.executable, "-m", "pyflakes", "liqwatch", "tests"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
