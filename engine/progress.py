"""How long jobs report progress: one callback type, and the figures a training step reports. No torch here."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# step, total, a human-readable line
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class TrainingStep:
    """What one optimisation step of the training loop reports to a listener (the studio's progress bar)."""

    step: int
    total: int
    loss: float

    @property
    def message(self) -> str:
        return f"step {self.step}/{self.total} loss {self.loss:.4f}"


StepFn = Callable[[TrainingStep], None]
# Asked between steps: True stops the job at the next safe point.
StopFn = Callable[[], bool]


def append_log(folder: Path, record: dict) -> None:
    """Append `record` as one JSON line to `folder/log.jsonl`, the log every training stage writes as it goes."""
    with (Path(folder) / "log.jsonl").open("a") as log:
        log.write(json.dumps(record) + "\n")
