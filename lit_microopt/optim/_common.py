"""What MicroAdam and Adam-mini share: argument checks, the finite-gradient check and exact state loading.

Both optimizers keep state tensors whose dtype is part of their meaning (int16 indices, uint8 codes,
bfloat16 statistics next to float32 parameters). PyTorch's ``Optimizer.load_state_dict`` casts floating
state to the parameter's dtype, so :class:`ExactStateOptimizer` restores every saved tensor with its own
dtype, after the subclass has checked that the saved state fits the parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import torch

SUPPORTED_PARAMETER_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_common_hyperparameters(owner: str, group: dict[str, Any], where: str = "") -> None:
    """Raise ``ValueError`` when ``lr``, ``betas``, ``eps`` or ``weight_decay`` of ``group`` is out of range.

    Args:
        owner: the optimizer's class name, for the message.
        group: a dict holding the four hyper-parameters.
        where: text naming the param group (``" in param group 1"``), empty for the constructor.
    """
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"{owner}: lr{where} must be a number or a one-element tensor, got shape {tuple(lr.shape)}.")
        lr = lr.item()
    if not lr >= 0.0:
        raise ValueError(f"{owner}: lr{where} must be >= 0, got {lr}.")
    betas = group["betas"]
    if not (isinstance(betas, Sequence) and len(betas) == 2):
        raise ValueError(f"{owner}: betas{where} must be a pair (beta1, beta2), got {betas!r}.")
    for index, beta in enumerate(betas):
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"{owner}: betas[{index}]{where} must be in [0, 1), got {beta}.")
    if not float(group["eps"]) >= 0.0:
        raise ValueError(f"{owner}: eps{where} must be >= 0, got {group['eps']}.")
    if not float(group["weight_decay"]) >= 0.0:
        raise ValueError(f"{owner}: weight_decay{where} must be >= 0, got {group['weight_decay']}.")


def check_gradient_types(owner: str, named_gradients: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Raise ``TypeError`` for sparse or complex gradients and unsupported dtypes, before anything changes."""
    for name, grad in named_gradients:
        if grad.is_sparse:
            raise TypeError(f"{owner} does not support sparse gradients ({name}); use dense gradients, e.g. nn.Embedding(sparse=False).")
        if grad.is_complex():
            raise TypeError(f"{owner} does not support complex parameters ({name}); optimise the real and imaginary parts as real tensors.")
        if grad.dtype not in SUPPORTED_PARAMETER_DTYPES:
            raise TypeError(
                f"{owner} supports float32, bfloat16 and float16 parameters, but {name} has a {grad.dtype} gradient; "
                "convert the model with .float(), .bfloat16() or .half()."
            )


def check_gradients_finite(owner: str, named_gradients: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Raise ``FloatingPointError`` naming every gradient that holds a NaN or an infinity.

    One device synchronisation per device, whatever the number of tensors.
    """
    extremes_by_device: dict[torch.device, list[torch.Tensor]] = {}
    names_by_device: dict[torch.device, list[str]] = {}
    for name, grad in named_gradients:
        # min and max in one pass: both are finite exactly when every element is (NaN propagates).
        extremes = torch.aminmax(grad.reshape(-1)) if grad.numel() else (grad.new_zeros(()), grad.new_zeros(()))
        extremes_by_device.setdefault(grad.device, []).extend(extremes)
        names_by_device.setdefault(grad.device, []).append(name)
    bad = []
    for device, extremes in extremes_by_device.items():
        # Stacked in float32 (gradients of several dtypes): a float16 or bfloat16 extreme stays finite there.
        finite = torch.isfinite(torch.stack([value.float() for value in extremes])).view(-1, 2).all(dim=1)
        bad.extend(name for name, ok in zip(names_by_device[device], finite.tolist()) if not ok)
    if bad:
        raise FloatingPointError(
            f"{owner}: non-finite gradient (NaN or inf) in {', '.join(bad)}; nothing was updated. "
            "Lower the learning rate, clip gradients, or pass check_finite=False when a GradScaler handles overflow."
        )


def parameter_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """A name for every parameter, in ``state_dict`` order: its ``param_names`` entry, else its position."""
    names = []
    for group_index, group in enumerate(optimizer.param_groups):
        given = group.get("param_names")
        for index in range(len(group["params"])):
            names.append(given[index] if given else f"param_groups[{group_index}].params[{index}]")
    return names


class ExactStateOptimizer(torch.optim.Optimizer, ABC):
    """An ``Optimizer`` whose ``load_state_dict`` checks the state first and keeps every tensor's dtype.

    Subclasses implement :meth:`_check_loaded_state`, which raises ``ValueError`` when the saved state does not
    fit; nothing is changed when it raises.
    """

    #: State keys kept on the CPU whatever the parameter's device (step counts and seeds: read without a sync).
    host_state_keys: tuple[str, ...] = ("step", "rounding_seed")

    def _parameters_with_gradients(self) -> list[tuple[int, str, torch.Tensor, int]]:
        """(group index, name, parameter, position in ``state_dict`` order) of every parameter with a gradient,
        its gradient's types checked (``TypeError`` before anything changes)."""
        names = iter(parameter_names(self))
        work = []
        position = 0
        for group_index, group in enumerate(self.param_groups):
            for param in group["params"]:
                name = next(names)
                if param.grad is not None:
                    work.append((group_index, name, param, position))
                position += 1
        check_gradient_types(type(self).__name__, [(name, param.grad) for _, name, param, _ in work])
        return work

    @abstractmethod
    def _expected_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of every state tensor of ``param`` in ``group``."""

    def _state_fix(self, param: torch.Tensor, group: dict[str, Any]) -> str:
        """The end of the message when a saved state does not fit ``param``: what to build the optimizer with."""
        return "load a state dict saved by this optimizer for the same model and settings."

    def _new_state(self, param: torch.Tensor, group: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
        """Zero-filled state for ``param``; ``rounding_seed`` (if any) gets ``seed``: the tensor's own random
        stream, deterministic and saved with the state."""
        state = {}
        for key, (shape, dtype) in self._expected_state(param, group).items():
            device = "cpu" if key in self.host_state_keys else param.device
            state[key] = torch.zeros(shape, dtype=dtype, device=device)
        if "rounding_seed" in state:
            state["rounding_seed"].fill_(seed)
        return state

    def initialize_state(self) -> None:
        """Create the state the first ``step()`` would create, for every parameter that has none, changing nothing
        else: on meta parameters it sizes the real state layout at any scale without allocating it.

        Parameters without elements get no state, as in ``step()``.
        """
        position = 0  # seeds follow state_dict order, as in step()
        for group in self.param_groups:
            for param in group["params"]:
                if not self.state.get(param) and param.numel() > 0:
                    self.state[param].update(self._new_state(param, group, seed=position))
                position += 1

    def _check_loaded_state(self, state_dict: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming the parameter and what differs when ``state_dict`` does not fit."""
        owner = type(self).__name__
        names = iter(parameter_names(self))
        for group, saved_group in zip(self.param_groups, state_dict["param_groups"]):
            for param, saved_id in zip(group["params"], saved_group["params"]):
                name = next(names)
                saved_state = state_dict["state"].get(saved_id)
                if not saved_state:
                    continue
                expected = self._expected_state(param, group)
                fix = self._state_fix(param, group)
                if set(saved_state) != set(expected):
                    raise ValueError(
                        f"{owner}: the saved state of {name} has entries {sorted(saved_state)} but this optimizer "
                        f"keeps {sorted(expected)}; {fix}"
                    )
                for key, (shape, dtype) in expected.items():
                    value = saved_state[key]
                    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.dtype != dtype:
                        found = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
                        raise ValueError(
                            f"{owner}: the saved {key} of {name} is {found}, but this optimizer needs {dtype} {shape}; {fix}"
                        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by ``state_dict()``; every tensor keeps its saved dtype.

        Raises:
            ValueError: the state was saved by a differently configured optimizer or for other parameters.
        """
        if len(state_dict["param_groups"]) != len(self.param_groups) or any(
            len(saved["params"]) != len(group["params"])
            for saved, group in zip(state_dict["param_groups"], self.param_groups)
        ):
            raise ValueError(
                f"{type(self).__name__}: the state dict has a different number of parameter groups or parameters "
                "than this optimizer; build the optimizer from the same model and groups as the saved one."
            )
        self._check_loaded_state(state_dict)
        super().load_state_dict(state_dict)
        # PyTorch cast floating state to each parameter's dtype: put back the saved tensors, dtypes intact.
        params = [p for group in self.param_groups for p in group["params"]]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        for param, saved_id in zip(params, saved_ids):
            saved_state = state_dict["state"].get(saved_id)
            if saved_state is None:
                continue
            restored = {}
            for key, value in saved_state.items():
                if isinstance(value, torch.Tensor):
                    device = "cpu" if key in self.host_state_keys else param.device
                    value = value.detach().to(device=device, copy=True)
                restored[key] = value
            self.state[param] = restored
