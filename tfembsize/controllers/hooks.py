"""In-training controllers: controllers that act while the model trains, not between trainings.

An ask/tell `tfembsize.controllers.Controller` decides a plan, the environment trains it, and
the controller learns from the result. Some methods act *during* training instead (PEP's
threshold pruning captures masks at the step a budget is crossed; ESAPN grows rows per
mini-batch). They share one small interface, `InTrainingController`:

* ``attach(model)``: find the layers it acts on;
* the `tfembsize.training.TrainingHook` methods: per batch inside the compiled loop
  (``before_batch``/``after_batch``) and per chunk on the host (``on_chunk_end``);
* ``get_state``/``set_state``: JSON state, saved with every training checkpoint;
* ``done``: nothing more to do, training may stop.

`tfembsize.training.train_bpr(..., hook=controller)` runs it inside the compiled loop;
``controller.callback()`` (one generic `tfembsize.training.HookCallback`) runs its host part
under ``model.fit``.
"""

from __future__ import annotations

import abc
from typing import Any

from tfembsize.training.hooks import HookCallback, TrainingHook

__all__ = ["InTrainingController"]


class InTrainingController(TrainingHook, abc.ABC):
    """Base class of controllers that act inside training (see the module docstring).

    Subclasses implement `attach` and the hook methods they need; `on_train_begin` attaches
    the model if that was not done yet.
    """

    @abc.abstractmethod
    def attach(self, model: Any) -> InTrainingController:
        """Finds the layers the controller acts on; returns ``self``."""

    @property
    @abc.abstractmethod
    def attached(self) -> bool:
        """True once `attach` found the layers."""

    def on_train_begin(self, model: Any, optimizer: Any) -> None:
        """Attaches ``model`` if needed (subclasses that override this call it first)."""
        del optimizer
        if not self.attached:
            self.attach(model)

    def callback(
        self, *, check_every: int = 1, stop_when_done: bool = True, start_step: int = 0
    ) -> HookCallback:
        """A Keras callback running this controller's host part under ``model.fit``."""
        return HookCallback(
            self, check_every=check_every, stop_when_done=stop_when_done, start_step=start_step
        )
