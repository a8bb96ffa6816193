"""The README's quickstart runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_quickstart_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README has no Python quickstart"
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()
    obs_id, state = first.split()
    assert state == "buffered"
    assert str(uuid.UUID(obs_id)) == obs_id
    assert second == "True running 2026-12-01"
