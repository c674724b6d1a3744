"""Which implementation of an op runs: PyTorch's dispatcher chooses, this module sets the rules.

- :mod:`lit_microopt.ops.library` defines every op with the pure-PyTorch reference as its default kernel; the
  compiled extension then registers a CPU kernel and, when built with CUDA, a CUDA kernel for each op. A tensor
  runs its device's kernel where one is registered, the reference otherwise, after one warning per process and
  device type that names the command that builds the kernels.
- ``LIT_MICROOPT_BACKEND=reference|compiled|auto`` (default ``auto``) forces a path: ``reference`` runs the
  reference without the dispatcher; ``compiled`` raises ``RuntimeError`` where the dispatcher would fall back.
- An extension that fails to load (not built, built against another PyTorch, or built from an older checkout
  whose kernels do not match the schemas) counts as missing: its error is kept for :func:`kernels_report`,
  nothing of it is registered, and ``import lit_microopt`` never fails because of it.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch

from lit_microopt.ops.library import OPS, op_names

BACKEND_VARIABLE = "LIT_MICROOPT_BACKEND"
BACKENDS = ("auto", "reference", "compiled")
BUILD_COMMAND = "pip install --no-build-isolation -e ."  # from the repository's root
#: Every op, per optimizer (each defined in lit_microopt.ops.library with its reference).
MICROADAM_OPS = op_names("MicroAdam")
ADAM_MINI_OPS = op_names("AdamMini")
OP_NAMES = op_names()

_extension_error: str | None = None
_warned_devices: set[str] = set()


def _load_extension() -> bool:
    """Load ``lit_microopt._C`` and register its kernels for the ops defined above; remember why when it fails."""
    global _extension_error
    try:
        extension = importlib.import_module("lit_microopt._C")
        # All or nothing: a kernel whose signature differs from its op's schema registers no kernel at all.
        extension.register_kernels()
    except (ImportError, OSError, RuntimeError, AttributeError) as error:  # AttributeError: an older build
        _extension_error = f"{type(error).__name__}: {error}"
        return False
    return True


EXTENSION_LOADED = _load_extension()


def compiled_available(device_type: str, op_names: tuple[str, ...] = OP_NAMES) -> bool:
    """Whether the compiled ops ``op_names`` (default: all) have kernels for ``device_type`` (``"cpu"``, ``"cuda"``)."""
    if not EXTENSION_LOADED:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and all(_has_kernel(name, key) for name in op_names)


@functools.lru_cache(maxsize=None)
def _has_kernel(op_name: str, dispatch_key: str) -> bool:
    # Kernels register when the extension loads and never change after: asked at every op call, so remembered.
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"lit_microopt::{op_name}", dispatch_key)


def backend_setting() -> str:
    """The value of ``LIT_MICROOPT_BACKEND`` (``auto`` when unset), checked."""
    setting = os.environ.get(BACKEND_VARIABLE, "auto").strip().lower() or "auto"
    if setting not in BACKENDS:
        raise ValueError(f"{BACKEND_VARIABLE}={setting!r} is not one of {', '.join(BACKENDS)}; unset it or pick one.")
    return setting


def _missing_message(device_type: str) -> str:
    why = f" ({_extension_error})" if _extension_error else ""
    if device_type == "cuda":
        how = f"install a CUDA build of PyTorch and nvcc, then rebuild: LIT_MICROOPT_BUILD_CUDA=1 {BUILD_COMMAND}"
    else:
        how = f"rebuild it: {BUILD_COMMAND}"
    return f"lit_microopt's compiled {device_type.upper()} kernels are not available{why}; {how}"


def use_reference() -> bool:
    """Whether ``LIT_MICROOPT_BACKEND=reference`` asks for the reference whatever is compiled."""
    return backend_setting() == "reference"


def reference_fallback(device_type: str) -> None:
    """Called where the dispatcher runs an op's reference because no kernel is registered for ``device_type``:
    raise under ``LIT_MICROOPT_BACKEND=compiled``, else warn once per process and device type."""
    if backend_setting() == "compiled":
        raise RuntimeError(_missing_message(device_type) + f"; or set {BACKEND_VARIABLE}=reference.")
    if device_type in ("cpu", "cuda") and device_type not in _warned_devices:
        _warned_devices.add(device_type)
        warnings.warn(_missing_message(device_type) + "; using the slower pure-PyTorch reference.", stacklevel=2)


def run(op_name: str, *arguments) -> None:
    """Run the op ``op_name`` on its arguments (those of its schema): through the dispatcher, or the reference
    directly under ``LIT_MICROOPT_BACKEND=reference``."""
    op = OPS[op_name]
    if use_reference():
        op.reference(*arguments)
    else:
        _overload(op_name)(*arguments)


@functools.lru_cache(maxsize=None)
def _overload(op_name: str) -> torch._ops.OpOverload:
    return OPS[op_name].overload


def kernels_report() -> str:
    """What is compiled and what each optimizer will use on each device, as text."""
    lines = [f"lit_microopt extension: {'loaded' if EXTENSION_LOADED else 'not loaded'}"]
    if _extension_error:
        lines.append(f"  import error: {_extension_error}")
    archs = torch.ops.lit_microopt.cuda_architectures() if EXTENSION_LOADED else ""
    for device_type in ("cpu", "cuda"):
        built = [name for name in OP_NAMES if compiled_available(device_type, (name,))]
        detail = f" (architectures {archs})" if device_type == "cuda" and built else ""
        lines.append(f"  {device_type.upper()} kernels{detail}: {', '.join(built) or 'none'}")
    setting = os.environ.get(BACKEND_VARIABLE, "auto")
    lines.append(f"{BACKEND_VARIABLE}={setting}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    families = {"MicroAdam": MICROADAM_OPS, "AdamMini": ADAM_MINI_OPS}
    for device_type in devices:
        for optimizer, op_names in families.items():
            compiled = setting != "reference" and compiled_available(device_type, op_names)
            lines.append(f"{optimizer} on {device_type}: {'compiled kernels' if compiled else 'reference (pure PyTorch)'}")
    return "\n".join(lines)
