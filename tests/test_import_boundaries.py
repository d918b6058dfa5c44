"""What importing a module pulls in: the adapter index, the boxes and the whole web app load without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")


@pytest.mark.parametrize(
    "module",
    [
        "engine.adapters",
        "engine.boxes",
        "engine.masks",
        "engine.config",
        "engine.generation.parameters",
        "webapp.studio",
        "webapp.auth",
        "webapp.app",
    ],
)
def test_module_imports_no_torch(module: str) -> None:
    probe = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"{module} imports {done.stdout.strip()}"
