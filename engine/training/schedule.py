"""Time budgets: a training stage that must end within a wall-clock budget shortens its planned steps as it goes."""

from __future__ import annotations

# Steps between two re-plannings of a time-budgeted stage (`TrainConfig.max_train_seconds`).
BUDGET_CHECK_STEPS = 25


def steps_within_budget(planned: int, done: int, run_steps: int, elapsed_s: float, budget_s: float) -> int:
    """The step a time-budgeted run ends at: `done` plus as many steps as the rate of this run's `run_steps` steps in
    `elapsed_s` fits in what is left of `budget_s`; never beyond `planned`, never before `done`."""
    if run_steps < 1 or elapsed_s <= 0:
        return planned
    remaining = max(0.0, budget_s - elapsed_s)
    return max(done, min(planned, done + int(remaining * run_steps / elapsed_s)))
