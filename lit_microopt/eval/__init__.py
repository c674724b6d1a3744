"""Evaluation with EleutherAI's lm-evaluation-harness (``lm_eval`` 0.4.x).

- :class:`LitMicroOptLM`: a trained ``CausalLM`` (checkpoint or in memory) as the lm-eval model ``lit_microopt``;
- :class:`LMEvalCallback`: lm-eval tasks during or after ``fit``, logged as ``lm_eval/<task>/<metric>``;
- :func:`evaluate_checkpoint` and :func:`export_checkpoint`: the ``eval`` and ``export`` commands;
- ``configs/tasks/``: the quickstart's held-out sums as lm-eval tasks (:mod:`.arithmetic_tasks` makes their data).

Importing this package (the ``eval`` command and :class:`LMEvalCallback` do; ``import lit_microopt`` does not)
registers ``lit_microopt`` in lm-eval's model registry as a name to import on first use: registering reads no
model code, so it costs a few milliseconds. The names above are imported when first used too.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The name lm-eval knows :class:`LitMicroOptLM` by.
MODEL_NAME = "lit_microopt"
_MODEL_TARGET = "lit_microopt.eval.harness_model:LitMicroOptLM"

#: Public names, each with the module that defines it (imported on first use).
_LAZY_NAMES = {
    "LitMicroOptLM": "lit_microopt.eval.harness_model",
    "LMEvalCallback": "lit_microopt.eval.lm_eval_callback",
    "evaluate_checkpoint": "lit_microopt.eval.evaluate",
    "export_checkpoint": "lit_microopt.eval.export",
    "load_causal_lm": "lit_microopt.eval.checkpoints",
    "UnknownTaskError": "lit_microopt.eval.tasks",
}


def register_lm_eval_model() -> bool:
    """Make ``lit_microopt`` a model name of lm-eval (done on import); whether lm-eval is installed.

    Example:
        >>> from lm_eval.api.registry import get_model
        >>> register_lm_eval_model() and get_model("lit_microopt").__name__
        'LitMicroOptLM'
    """
    try:
        # lm-eval's own names first: its get_model fills the registry with them only while it is empty.
        import lm_eval.models  # noqa: F401
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=_MODEL_TARGET)
    return True


register_lm_eval_model()


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MODEL_NAME",
    "LMEvalCallback",
    "LitMicroOptLM",
    "UnknownTaskError",
    "evaluate_checkpoint",
    "export_checkpoint",
    "load_causal_lm",
    "register_lm_eval_model",
]
