"""Each dependency has one home: Gradio only in the UI modules, no SQL or torch in webapp/ at all."""

from __future__ import annotations

from pathlib import Path

from tests.support import top_level_imports

WEBAPP_DIR = Path(__file__).resolve().parents[2] / "webapp"
UI_MODULES = {
    "app.py",
    *(f"tabs/{tab}.py" for tab in ("common", "upload", "generate", "finetune", "dataset", "export")),
}
NEVER_IN_WEBAPP = {"sqlalchemy", "alembic", "torch", "diffusers", "transformers", "peft", "accelerate"}


def test_only_the_ui_imports_gradio_and_nothing_imports_sql_or_torch() -> None:
    found = {
        path.relative_to(WEBAPP_DIR).as_posix(): top_level_imports(path) for path in sorted(WEBAPP_DIR.rglob("*.py"))
    }
    assert {"studio/service.py", "studio/generation.py", "auth.py", "validation.py", "cli.py", "app.py"} <= set(found)
    assert {name for name, modules in found.items() if "gradio" in modules} == UI_MODULES
    assert {name: modules & NEVER_IN_WEBAPP for name, modules in found.items() if modules & NEVER_IN_WEBAPP} == {}
