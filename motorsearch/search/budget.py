"""A search's compute budget in trial-epochs: stop the whole search once its trials have trained
that many epochs between them.

``num_samples`` caps how many trials start; ``budget_epochs`` caps what they may spend, which is
the fair unit for comparing searches: ASHA stops poor trials early, so under one budget it gets
to try more configurations than a search that trains every trial to the end.

A trial's spend is the highest epoch it has reported (validation every epoch is what ASHA needs
anyway), so a restarted trial that repeats epochs after its last checkpoint is not charged twice.
The search stops at the first report that brings the total to the budget; trials still running
then are stopped where they are, so the total overshoots by less than one epoch per running trial.
"""

from __future__ import annotations

from typing import Any

from ray.tune.stopper import Stopper


class EpochBudget(Stopper):
    """Tune stopper: ``stop_all()`` once the trials' reported epochs add up to ``epochs``."""

    def __init__(self, epochs: int):
        if epochs < 1:
            raise ValueError(f"an epoch budget must be at least 1, but got {epochs}")
        self.epochs = int(epochs)
        self._reached: dict[str, int] = {}

    @property
    def spent(self) -> int:
        """Trial-epochs reported so far, over all trials."""
        return sum(self._reached.values())

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        epoch = result.get("epoch", result.get("training_iteration", 0))
        self._reached[trial_id] = max(self._reached.get(trial_id, 0), int(epoch))
        return False  # single trials are ASHA's business; the budget only ends the whole search

    def stop_all(self) -> bool:
        return self.spent >= self.epochs
