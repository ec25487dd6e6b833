"""The import contracts of pyproject.toml ([tool.importlinter]): imports point down the layers
(commands > tooling > worker > pipeline > batch records > recsys > learning > model > io and the plain
modules), the serving package imports nothing of stream_rec_devtools, and no import cycle exists at any depth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "broken" not in proc.stdout.lower().replace("0 broken", "")
    assert proc.stdout.count("KEPT") >= 3, proc.stdout
