"""Which implementation of an op runs: the compiled kernel for the tensor's device, or the reference.

- A CUDA tensor uses the CUDA kernel when it is built, a CPU tensor the CPU kernel; otherwise the pure-PyTorch
  reference runs, after one warning per process and device type that names the command that builds it.
- ``LIT_MICROOPT_BACKEND=reference|compiled|auto`` (default ``auto``) forces a path; ``compiled`` raises
  ``RuntimeError`` when the kernel for the tensor's device is missing.
- An extension that fails to import (for instance built against another PyTorch) counts as missing: the
  import error is kept for :func:`kernels_report`, and ``import lit_microopt`` never fails because of it.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch

BACKEND_VARIABLE = "LIT_MICROOPT_BACKEND"
BACKENDS = ("auto", "reference", "compiled")
BUILD_COMMAND = "pip install --no-build-isolation -e ."  # from the repository's root
#: Every op the extension defines, per optimizer; each has a reference twin in lit_microopt.ops.reference.
MICROADAM_OPS = ("ef_dequant_add_", "block_topk", "ef_quantize_", "ef_compress_", "window_adam_update_")
ADAM_MINI_OPS = ("adam_mini_update_",)
OP_NAMES = MICROADAM_OPS + ADAM_MINI_OPS

_extension_error: str | None = None
_warned_devices: set[str] = set()


def _load_extension() -> bool:
    """Import ``lit_microopt._C`` (registers the compiled ops); remember why when it fails."""
    global _extension_error
    try:
        importlib.import_module("lit_microopt._C")
    except (ImportError, OSError) as error:  # not built, or built against another PyTorch (ABI)
        _extension_error = f"{type(error).__name__}: {error}"
        return False
    return True


EXTENSION_LOADED = _load_extension()


def _register_fake_implementations() -> None:
    """Every op mutates its arguments in place and returns nothing: its fake (meta) implementation is empty,
    which lets ``torch.compile`` and meta-device tracing run through the custom ops."""
    for name in OP_NAMES:
        torch.library.register_fake(f"lit_microopt::{name}")(lambda *args, **kwargs: None)


if EXTENSION_LOADED:
    _register_fake_implementations()


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


def use_compiled(tensor: torch.Tensor, op_name: str) -> bool:
    """Whether the op ``op_name`` on ``tensor`` should run its compiled kernel (see the module's docstring)."""
    setting = backend_setting()
    if setting == "reference":
        return False
    device_type = tensor.device.type
    if compiled_available(device_type, (op_name,)):
        return True
    if setting == "compiled":
        raise RuntimeError(_missing_message(device_type) + f"; or set {BACKEND_VARIABLE}=reference.")
    if device_type in ("cpu", "cuda") and device_type not in _warned_devices:
        _warned_devices.add(device_type)
        warnings.warn(_missing_message(device_type) + "; using the slower pure-PyTorch reference.", stacklevel=3)
    return False


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
