"""``OptimizerWrapper``: a torch optimizer that wraps another and shares its groups and state."""

from __future__ import annotations

import abc
from typing import Any

from torch.optim import Optimizer

from lightning_echo.errors import ConfigError


class OptimizerWrapper(Optimizer, metaclass=abc.ABCMeta):
    """Base of the optimizers that change how a wrapped optimizer steps (its gradients, its lr).

    A real ``torch.optim.Optimizer`` whose ``param_groups``, ``state`` and ``defaults`` are the
    wrapped optimizer's own objects, read through (so they stay shared even after the wrapped
    optimizer's ``load_state_dict`` replaces its lists): lr schedulers, Lightning's
    ``LearningRateMonitor``, gradient clipping and checkpoints treat the wrapper as the optimizer.
    Step hooks registered on the wrapper run around the wrapper's ``step``.

    A subclass implements ``step``, keeps its own state in the attributes named by
    ``OWN_FIELDS`` (kept by ``copy.deepcopy`` and pickling), and saves it with
    :meth:`_own_state` / :meth:`_load_own_state` under ``STATE_KEY`` in :meth:`state_dict`,
    next to the wrapped optimizer's entries. Mutable state belongs in one object held by such a
    field: Lightning's ``LightningOptimizer`` proxy copies the wrapper's attributes, so a plain
    counter assigned through the proxy would not reach the wrapper.
    """

    STATE_KEY = "wrapper"
    OWN_FIELDS: tuple[str, ...] = ()
    # While Optimizer.__init__ runs it resets param_groups/state and re-adds every group; the
    # groups are already the wrapped optimizer's, so those calls are skipped (see the setters).
    _adopting = False

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise ConfigError("optimizer", type(optimizer).__name__, "must be a torch.optim.Optimizer")
        self.optimizer = optimizer
        self._adopting = True
        try:
            super().__init__(optimizer.param_groups, optimizer.defaults)
        finally:
            self._adopting = False

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        if not self._adopting:
            self.optimizer.param_groups = groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, state: Any) -> None:
        if not self._adopting:
            self.optimizer.state = state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer (and so to this one)."""
        if self._adopting:
            return
        self.optimizer.add_param_group(param_group)
        self._group_added(self.optimizer.param_groups[-1], len(self.optimizer.param_groups) - 1)

    def _group_added(self, group: dict[str, Any], index: int) -> None:
        """Called for each group added after construction (to check it or extend own state)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The wrapped optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @abc.abstractmethod
    def _own_state(self) -> dict[str, Any]:
        """This wrapper's own state, for :meth:`state_dict` (plain values and tensors)."""

    @abc.abstractmethod
    def _load_own_state(self, own: dict[str, Any]) -> None:
        """Restore what :meth:`_own_state` returned."""

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict plus this wrapper's own under ``STATE_KEY``."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state_dict = dict(self.optimizer.state_dict())
        state_dict[self.STATE_KEY] = self._own_state()
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` saved: the wrapped optimizer's state, then this wrapper's own.

        A plain state dict of the wrapped optimizer (no ``STATE_KEY`` entry) loads that state and
        leaves the wrapper's own as it is.
        """
        state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        own = state_dict.pop(self.STATE_KEY, None)
        self.optimizer.load_state_dict(state_dict)
        if own is not None:
            self._load_own_state(own)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer.__getstate__ keeps only defaults/state/param_groups; a wrapper's are the
        # wrapped optimizer's, so keep it and the own fields instead (hooks are dropped, as torch does).
        state = {"defaults": self.defaults, "optimizer": self.optimizer}
        state.update({name: getattr(self, name) for name in self.OWN_FIELDS})
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(optimizer={self.optimizer!r})"
