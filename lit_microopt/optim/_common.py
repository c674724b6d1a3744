"""What MicroAdam and Adam-mini share: argument checks, the finite-gradient check and exact state loading.

Both optimizers keep state tensors whose dtype is part of their meaning (int16 indices, uint8 codes,
bfloat16 statistics next to float32 parameters). PyTorch's ``Optimizer.load_state_dict`` casts floating
state to the parameter's dtype, so :class:`ExactStateOptimizer` restores every saved tensor with its own
dtype, after the subclass has checked that the saved state fits the parameters.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lit_microopt import ops

SUPPORTED_PARAMETER_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: How a bfloat16 or float16 parameter's new value is rounded to its dtype (``param_rounding``, per param group):
#: to nearest, or stochastically (unbiased), so that updates below half an ulp still move it on average.
PARAM_ROUNDING_MODES = ("nearest", "stochastic")


def rounds_parameter_stochastically(group: dict[str, Any], param: torch.Tensor) -> bool:
    """Whether ``param``'s new values are rounded stochastically: ``param_rounding="stochastic"`` in its group and a
    dtype narrower than float32 (a float32 parameter has nothing to round)."""
    return group.get("param_rounding", "nearest") == "stochastic" and param.dtype.itemsize < 4


def check_common_hyperparameters(owner: str, group: dict[str, Any], where: str = "") -> None:
    """Raise ``ValueError`` when ``lr``, ``betas``, ``eps``, ``weight_decay`` or ``param_rounding`` of ``group`` is out
    of range.

    Args:
        owner: the optimizer's class name, for the message.
        group: a dict holding the five hyper-parameters.
        where: text naming the param group (``" in param group 1"``), empty for the constructor.
    """
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"{owner}: lr{where} must be a number or a one-element tensor, got shape {tuple(lr.shape)}.")
        lr = lr.item()
    # NaN fails every comparison; inf passes ">= 0" but turns the first step into NaN parameters.
    if not (lr >= 0.0 and math.isfinite(lr)):
        raise ValueError(f"{owner}: lr{where} must be >= 0 and finite, got {lr}.")
    betas = group["betas"]
    if not (isinstance(betas, Sequence) and len(betas) == 2):
        raise ValueError(f"{owner}: betas{where} must be a pair (beta1, beta2), got {betas!r}.")
    for index, beta in enumerate(betas):
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"{owner}: betas[{index}]{where} must be in [0, 1), got {beta}.")
    if not float(group["eps"]) >= 0.0:
        raise ValueError(f"{owner}: eps{where} must be >= 0, got {group['eps']}.")
    weight_decay = float(group["weight_decay"])
    if not (weight_decay >= 0.0 and math.isfinite(weight_decay)):
        raise ValueError(f"{owner}: weight_decay{where} must be >= 0 and finite, got {group['weight_decay']}.")
    if group["param_rounding"] not in PARAM_ROUNDING_MODES:
        raise ValueError(
            f"{owner}: param_rounding{where} must be 'nearest' or 'stochastic', got {group['param_rounding']!r}."
        )


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


def check_gradients_finite(owner: str, named_gradients: Sequence[tuple[str, torch.Tensor]]) -> dict[str, float]:
    """Raise ``FloatingPointError`` naming every gradient that holds a NaN or an infinity; else return the largest
    magnitude of each gradient, by name.

    One op call (:func:`lit_microopt.ops.max_magnitudes`) and one device synchronisation per device, whatever the
    number of tensors.
    """
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, grad in named_gradients:
        by_device.setdefault(grad.device, []).append((name, grad))
    magnitudes = {}
    for entries in by_device.values():
        # A NaN propagates into the largest magnitude: it is finite exactly when every element is.
        largest = ops.max_magnitudes([grad for _, grad in entries]).tolist()
        magnitudes.update((name, magnitude) for (name, _), magnitude in zip(entries, largest))
    bad = [name for name, _ in named_gradients if not math.isfinite(magnitudes[name])]
    if bad:
        raise non_finite_gradient_error(owner, bad)
    return magnitudes


def gradient_extremes(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of ``grad`` in one pass (zeros when it is empty): both are finite exactly when every
    element is, since a NaN propagates."""
    return torch.aminmax(grad.reshape(-1)) if grad.numel() else (grad.new_zeros(()), grad.new_zeros(()))


def non_finite_gradient_error(owner: str, names: Sequence[str]) -> FloatingPointError:
    """The error of a step refused because the gradients ``names`` hold a NaN or an infinity."""
    return FloatingPointError(
        f"{owner}: non-finite gradient (NaN or inf) in {', '.join(names)}; nothing was updated. "
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


def _loaded_group(group: dict[str, Any], saved_group: dict[str, Any]) -> dict[str, Any]:
    """A param group once a saved one is loaded into it: the saved settings win (as in ``torch.optim``), the
    settings an older dict lacks stay the group's, and the parameters stay the group's."""
    return {**group, **saved_group, "params": group["params"]}


class ExactStateOptimizer(torch.optim.Optimizer, ABC):
    """An ``Optimizer`` whose ``load_state_dict`` checks the state first and keeps every tensor's dtype.

    Subclasses implement :meth:`_check_loaded_state`, which raises ``ValueError`` when the saved state does not
    fit; nothing is changed when it raises.
    """

    #: State keys kept on the CPU whatever the parameter's device (step counts and seeds: read without a sync).
    host_state_keys: tuple[str, ...] = ("step", "rounding_seed")

    def __getstate__(self) -> dict[str, Any]:
        """What pickling and ``copy.deepcopy`` keep: every instance attribute but the hooks.

        torch's ``__getstate__`` keeps only ``defaults``, ``state`` and ``param_groups``; these optimizers keep
        settings and partitions as attributes too, and a copy without them cannot step. Hooks are left out, as
        torch leaves them out (``__setstate__`` gives the copy empty ones).
        """
        return {key: value for key, value in self.__dict__.items() if not key.startswith("_optimizer_")}

    def _reject_repeated_parameters(self, param_group: dict[str, Any], where: str) -> dict[str, Any]:
        """``param_group`` with its ``params`` as a list; ``ValueError`` naming a tensor that it holds twice or that
        another group already holds (an optimizer would step it twice, and torch only warns or names no tensor)."""
        params = param_group["params"]
        if isinstance(params, (set, frozenset)):
            return param_group  # torch refuses unordered collections with its own message
        items = [params] if isinstance(params, torch.Tensor) else list(params)
        given_names = param_group.get("param_names")
        held = {id(param): name for param, name in zip(
            (param for group in self.param_groups for param in group["params"]), parameter_names(self))}
        seen: dict[int, str] = {}
        for index, item in enumerate(items):
            is_named = isinstance(item, tuple) and len(item) == 2
            tensor = item[1] if is_named else item
            if not isinstance(tensor, torch.Tensor):
                continue  # torch's own check names what is not a tensor
            name = item[0] if is_named else (
                given_names[index] if given_names and index < len(given_names) else f"params[{index}]")
            if id(tensor) in seen:
                raise ValueError(
                    f"{type(self).__name__}: {name}{where} is the same tensor as {seen[id(tensor)]}; pass every "
                    "parameter once."
                )
            if id(tensor) in held:
                raise ValueError(
                    f"{type(self).__name__}: {name}{where} is already in the optimizer as {held[id(tensor)]}; put "
                    "every parameter in one param group only."
                )
            seen[id(tensor)] = name
        return {**param_group, "params": items}

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
        """Raise ``ValueError`` naming the parameter and what differs when ``state_dict`` does not fit, or when a
        value could not have come from a step (see :meth:`_check_loaded_values`)."""
        owner = type(self).__name__
        names = iter(parameter_names(self))
        for group, saved_group in zip(self.param_groups, state_dict["param_groups"]):
            # The state must fit the settings the group will have once loaded: the saved ones win.
            group = _loaded_group(group, saved_group)
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
                    if key in self.host_state_keys:
                        self._check_counter(name, key, value)
                    elif not isinstance(value, torch.Tensor):
                        raise ValueError(f"{owner}: the saved {key} of {name} is {value!r}, not a tensor; {fix}")
                    elif tuple(value.shape) != shape:
                        raise ValueError(
                            f"{owner}: the saved {key} of {name} is {value.dtype} {tuple(value.shape)}, but this "
                            f"optimizer needs {dtype} {shape}; {fix}"
                        )
                    elif value.dtype != dtype:
                        raise ValueError(
                            f"{owner}: the saved {key} of {name} is {value.dtype} {shape}, but this optimizer needs "
                            f"{dtype} {shape}; {self._dtype_fix(key)}"
                        )
                self._check_loaded_values(name, param, group, saved_state)

    def _completed_saved_state(
        self, param: torch.Tensor, group: dict[str, Any], position: int, saved_state: dict[str, Any]
    ) -> dict[str, Any]:
        """``saved_state`` (not empty) of ``param`` completed to what ``group``, the group as it will be once loaded,
        needs, before it is checked and loaded: entries a subclass can supply without changing the results
        (``position`` is the parameter's place in ``state_dict`` order, which seeds a new state). Returns a new dict,
        or ``saved_state`` itself when nothing changes (the default)."""
        return saved_state

    def _complete_loaded_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """``state_dict`` with every parameter's state passed through :meth:`_completed_saved_state` (a shallow copy
        when anything changes: the caller's dict is left as it is)."""
        state = dict(state_dict["state"])
        position = 0
        for group, saved_group in zip(self.param_groups, state_dict["param_groups"]):
            loaded = _loaded_group(group, saved_group)
            for param, saved_id in zip(group["params"], saved_group["params"]):
                if state.get(saved_id):
                    state[saved_id] = self._completed_saved_state(param, loaded, position, state[saved_id])
                position += 1
        return {**state_dict, "state": state}

    def _check_counter(self, name: str, key: str, value: Any) -> None:
        """A step count or seed is a whole number (a Python number, as older dicts hold it, or a 0-d tensor);
        a step count is also >= 0."""
        if isinstance(value, torch.Tensor):
            number = value.item() if value.numel() == 1 and not value.is_complex() else None
        else:
            number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        whole = number is not None and math.isfinite(number) and number == int(number)
        if not whole or (key == "step" and number < 0):
            need = "a whole number >= 0" if key == "step" else "a whole number"
            raise ValueError(
                f"{type(self).__name__}: the saved {key} of {name} is {value!r}, but it must be {need}; "
                "load a state dict saved by this optimizer's state_dict()."
            )

    def _dtype_fix(self, key: str) -> str:
        """The end of the message when a saved state tensor has another dtype than this optimizer keeps."""
        return "state_dict() keeps every dtype: load the dict it saved without converting its tensors."

    def _check_loaded_values(self, name: str, param: torch.Tensor, group: dict[str, Any], saved_state: dict[str, Any]) -> None:
        """Raise ``ValueError`` when a saved value, though of the right shape and dtype, is one that no step writes
        (a corrupted checkpoint). The subclasses check what their kernels rely on; the shapes are already checked."""

    def _restored_value(self, param: torch.Tensor, key: str, value: Any) -> Any:
        """A saved state entry as the optimizer keeps it: a copy with its own dtype, on the parameter's device (host
        keys on the CPU); a step count or seed saved as a Python number becomes an int64 tensor."""
        if key in self.host_state_keys:
            if not isinstance(value, torch.Tensor):
                return torch.tensor(int(value), dtype=torch.int64)
            return value.detach().to(device="cpu", dtype=torch.int64, copy=True)
        if isinstance(value, torch.Tensor):
            return value.detach().to(device=param.device, copy=True)
        return value

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by ``state_dict()``; every tensor keeps its saved dtype.

        As in ``torch.optim.Optimizer``: the load-state-dict pre-hooks run first, and the dict they return (if any)
        is the one checked and loaded; the post-hooks run last, once the state is in place. Nothing changes when
        the dict does not fit.

        Raises:
            ValueError: the state was saved by a differently configured optimizer or for other parameters, or holds
                a value that no step writes (the message names the parameter and the entry).
        """
        state_dict = state_dict.copy()  # shallow, as torch: a hook may replace entries without touching the caller's
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        if len(state_dict["param_groups"]) != len(self.param_groups) or any(
            len(saved["params"]) != len(group["params"])
            for saved, group in zip(state_dict["param_groups"], self.param_groups)
        ):
            raise ValueError(
                f"{type(self).__name__}: the state dict has a different number of parameter groups or parameters "
                "than this optimizer; build the optimizer from the same model and groups as the saved one."
            )
        state_dict = self._complete_loaded_state(state_dict)
        self._check_loaded_state(state_dict)

        # torch's loading casts floating state to each parameter's dtype, which would corrupt this state: the
        # same steps, with every tensor kept as saved.
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        params_by_saved_id = {
            saved_id: param
            for saved, group in zip(saved_groups, self.param_groups)
            for saved_id, param in zip(saved["params"], group["params"])
        }
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for saved_id, saved_state in state_dict["state"].items():
            param = params_by_saved_id.get(saved_id)
            if param is None:  # not a parameter's state: kept as it is, as torch does
                state[saved_id] = saved_state
            else:
                state[param] = {key: self._restored_value(param, key, value) for key, value in saved_state.items()}
        # A saved group's settings win; settings an older dict lacks (and the names) stay this optimizer's.
        param_groups = [_loaded_group(group, saved) for group, saved in zip(self.param_groups, saved_groups)]
        self.__setstate__({"state": state, "param_groups": param_groups})
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
