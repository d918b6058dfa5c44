"""Time budgets: a training stage that must end within a wall-clock budget shortens its planned steps as it goes."""

from __future__ import annotations

import time
from typing import Protocol

# Steps between two re-plannings of a time-budgeted stage (`TrainConfig.max_train_seconds`).
BUDGET_CHECK_STEPS = 25


def steps_within_budget(planned: int, done: int, run_steps: int, elapsed_s: float, budget_s: float) -> int:
    """The step a time-budgeted run ends at: `done` plus as many steps as the rate of this run's `run_steps` steps in
    `elapsed_s` fits in what is left of `budget_s`; never beyond `planned`, never before `done`."""
    if run_steps < 1 or elapsed_s <= 0:
        return planned
    remaining = max(0.0, budget_s - elapsed_s)
    return max(done, min(planned, done + int(remaining * run_steps / elapsed_s)))


class BudgetedStage(Protocol):
    """A stage's config with a step plan and a wall-clock budget (`TrainConfig`, `AutoencoderConfig`, ...)."""

    max_train_steps: int
    max_train_seconds: float | None


def replanned_steps(config: BudgetedStage, done: int, first_step: int, started: float) -> int | None:
    """The stage's new end step at a re-planning (every BUDGET_CHECK_STEPS steps of a budgeted stage), from the rate
    of the steps since `first_step`, run since the `time.time()` `started`; None when no re-planning is due."""
    if config.max_train_seconds is None or done % BUDGET_CHECK_STEPS:
        return None
    return steps_within_budget(
        config.max_train_steps, done, done - first_step, time.time() - started, config.max_train_seconds
    )
