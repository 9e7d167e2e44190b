"""Spread state owns a model whose state is split over ranks: one whole checkpoint by name, parts handed back.

Pipeline stages (``common.strategies.pipeline``) and parameter servers
(``common.strategies.param_server``) each hold part of a model and its optimizer state.
:class:`SpreadState` gives such a backend the core's checkpoint protocol unchanged: before a
save every rank offers its part (:meth:`~SpreadState.part_state`, a collective gather) and
rank 0 writes the whole model and optimizer state under the whole model's parameter names;
on restore rank 0's whole state is broadcast and every rank takes its part
(:meth:`~SpreadState.load_part`). A checkpoint is thus the same file whatever the layout,
and resumes on any other.
"""

from __future__ import annotations

import copy

import torch


def named_optimizer_state(optimizer: torch.optim.Optimizer, names: list[str]) -> dict:
    """An optimizer's state keyed by parameter name (``names``: its parameters' names, in order)."""
    sd = optimizer.state_dict()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return {"state": {names[i]: s for i, s in sd["state"].items()}, "param_groups": groups}


def load_named_optimizer_state(optimizer: torch.optim.Optimizer, names: list[str],
                               state: dict) -> None:
    """Load the entries of ``names`` from a whole optimizer state by name."""
    groups = [{**g, "params": list(range(len(names)))} for g in state["param_groups"][:1]]
    optimizer.load_state_dict({"state": {i: state["state"][n] for i, n in enumerate(names)
                                         if n in state["state"]},
                               "param_groups": groups})


def merge(parts: list[dict]) -> dict:
    """The whole state from the parts (``{"model": {name: tensor}, "optimizer": named}``)."""
    groups = next(p["optimizer"]["param_groups"] for p in parts if p["optimizer"]["param_groups"])
    whole = {"model": {}, "optimizer": {"state": {}, "param_groups": groups}, "scaler": None}
    for p in parts:
        whole["model"].update(p["model"])
        whole["optimizer"]["state"].update(p["optimizer"]["state"])
    return whole


class SpreadState:
    """Checkpoint methods of a ``Backend`` whose model state is spread over ranks.

    The backend sets ``whole_signature`` (``[name, shape]`` of the whole model) and implements
    :meth:`part_state` (this rank's part, or None if it holds none to save) and
    :meth:`load_part` (take this rank's part of a whole state)."""

    whole_signature: list[list]
    _whole_state: dict | None = None

    def part_state(self) -> dict | None:
        raise NotImplementedError

    def load_part(self, whole: dict) -> None:
        raise NotImplementedError

    def state(self) -> dict:
        return self.part_state() or {}

    def snapshot(self) -> dict:
        return copy.deepcopy(self.state())

    def signature(self) -> list[list]:
        return self.whole_signature

    def state_to_save(self) -> dict | None:
        """The whole model on rank 0, gathered from the parts (a collective)."""
        parts = [p for p in self.allgather_object(self.part_state(), name="state_parts") if p]
        return merge(parts) if self.runtime().is_root else None

    def load_state(self, state: dict, source: str) -> None:
        """On rank 0 (restore): hold the whole state until :meth:`broadcast_state`."""
        self._whole_state = state

    def broadcast_state(self) -> None:
        """Every rank takes its part of rank 0's whole state: the checkpoint it read, or else the
        parts as they are gathered now (one source for every copy)."""
        whole = self._whole_state if self.runtime().is_root else None
        if not self.broadcast_object(whole is not None, name="spread_has_state"):
            whole = self.state_to_save()
        whole = self.broadcast_object(whole, name="spread_state")
        self._whole_state = None
        self.load_part(whole)
