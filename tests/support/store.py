"""Store helpers for tests: write v1 events from another process, build test applications."""

import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

TESTS_DIR = Path(__file__).resolve().parent.parent
ROOT = TESTS_DIR.parent


def write_v1_gadget(env: dict[str, str]) -> UUID:
    """Record a v1 Gadget through `env` in a separate interpreter; return its id."""
    proc = subprocess.run(
        [sys.executable, "-m", "support.upcasting", "write", "v1", json.dumps(env)],
        cwd=TESTS_DIR, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(ROOT)])},
    )
    assert proc.returncode == 0, proc.stderr
    return UUID(proc.stdout.strip().splitlines()[-1])
