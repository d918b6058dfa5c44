"""storage/ must stay free of ML and UI libraries so every layer can import it cheaply."""

import subprocess
import sys
from pathlib import Path

from tests.support import top_level_imports

STORAGE_DIR = Path(__file__).resolve().parents[2] / "storage"
FORBIDDEN = {
    "torch",
    "torchvision",
    "torchmetrics",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "numpy",
    "scipy",
    "cv2",
    "gradio",
    "gradio_client",
    "engine",
    "webapp",
}


def test_storage_sources_import_no_ml_or_ui_library() -> None:
    sources = sorted(STORAGE_DIR.rglob("*.py"))
    assert len(sources) >= 6
    offending = {str(p.relative_to(STORAGE_DIR)): top_level_imports(p) & FORBIDDEN for p in sources}
    assert {name: found for name, found in offending.items() if found} == {}


def test_importing_storage_loads_no_ml_or_ui_library() -> None:
    code = (
        "import sys, storage, storage.db, storage.tables, storage.files, storage.repository, storage.export;"
        f"print(sorted(set({sorted(FORBIDDEN)!r}) & {{m.split('.')[0] for m in sys.modules}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=STORAGE_DIR.parent, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
