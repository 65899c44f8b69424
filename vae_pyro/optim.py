"""Adam for SVI as one torch optimizer over every parameter (Pyro keeps one per tensor).

pyro.optim.Adam builds a torch Adam for each parameter tensor and steps them one by one:
ten Python-level optimizer steps and kernel launches per SVI step for the MLP VAE, about a
tenth of a CPU training step. This PyroOptim gives SVI the same interface and the same
updates (Adam is elementwise: each tensor's moments and step count are its own) from a single
torch Adam whose fused kernel updates all tensors in one call. Its get_state/set_state use
pyro.optim.Adam's format, one torch state dict per parameter name, so checkpoints written by
either load into the other. `Wrapper`s change the gradients before the inner optimizer steps:
`UnitGrads` (optim.normalize_grads) and distributed.AllReduce (data-parallel training).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyro
import torch
from pyro.optim import PyroOptim


class Adam(PyroOptim):
    """Drop-in for pyro.optim.Adam({...}) inside SVI (no per-parameter args or clipping).

    After each step the gradients are released (``grad = None``) rather than zeroed, so the
    next backward writes fresh gradients instead of adding into zeros; SVI's own zeroing then
    has nothing to do. Hyperparameters always come from ``optim_args``, also on resume: a
    changed learning rate takes effect (pyro.optim.Adam would restore the saved one).
    """

    def __init__(self, optim_args: dict[str, Any]) -> None:
        if not isinstance(optim_args, dict):
            raise TypeError("vae_pyro.optim.Adam takes a dict of torch.optim.Adam arguments")
        super().__init__(torch.optim.Adam, optim_args)
        self._optimizer: torch.optim.Adam | None = None
        self._known: set[torch.Tensor] = set()

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        new = [p for p in params if p not in self._known]
        if new:
            self._add(new)
        self._optimizer.step(*args, **kwargs)
        self._optimizer.zero_grad(set_to_none=True)

    def _add(self, params: list[torch.Tensor]) -> None:
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(params, **self.pt_optim_args)
        else:
            self._optimizer.add_param_group({"params": params})
        self._known.update(params)
        store = pyro.get_param_store()
        for p in params:
            saved = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
            if saved is not None:
                # torch's own loading puts each state tensor on p's device and dtype the way
                # this (fused or not) Adam expects; only the moments and step are kept.
                single = torch.optim.Adam([p], **self.pt_optim_args)
                single.load_state_dict(saved)
                self._optimizer.state[p] = single.state[p]

    def get_state(self) -> dict[str, dict]:
        """{parameter name: torch Adam state dict of that parameter alone} (Pyro's format)."""
        store = pyro.get_param_store()
        state = dict(self._state_waiting_to_be_consumed)  # not yet seen: carried over
        for group in self._optimizer.param_groups if self._optimizer else []:
            settings = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                own = self._optimizer.state.get(p)
                state[store.param_name(p)] = {
                    "state": {0: dict(own)} if own else {},
                    "param_groups": [{**settings, "params": [0]}],
                }
        return state


class Wrapper(PyroOptim):
    """A PyroOptim that does something to the gradients, then steps `inner`; its state is the
    inner optimizer's, so checkpoints do not change."""

    def __init__(self, inner: PyroOptim) -> None:  # no PyroOptim.__init__: inner holds all
        self.inner = inner

    def get_state(self) -> dict[str, dict]:
        return self.inner.get_state()

    def set_state(self, state_dict: dict[str, dict]) -> None:
        self.inner.set_state(state_dict)


class UnitGrads(Wrapper):
    """Divides each parameter tensor's gradient by its L2 norm (+ 1e-7), then steps `inner`:
    with Adam inside, Tomczak & Welling's AdamNormGrad (github jmtomczak/vae_vampprior,
    utils/optimizer.py). Every tensor's step then weighs alike, however large its gradient."""

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        params = list(params)
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norms = torch._foreach_norm(grads)
            torch._foreach_add_(norms, 1e-7)
            torch._foreach_div_(grads, norms)
        self.inner(params, *args, **kwargs)
