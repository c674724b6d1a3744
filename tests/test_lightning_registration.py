"""What importing the package promises: ``import lit_microopt`` is cheap and changes nothing outside the package;
the Lightning strategy names register with ``lit_microopt.strategies`` and the command line, the lm-eval model
name with ``lit_microopt.eval``."""

import subprocess
import sys

import pytest

REGISTERED = "print(sorted(name for name in StrategyRegistry if name.startswith('microopt_ddp')))"
EXPECTED = "['microopt_ddp', 'microopt_ddp_compressed', 'microopt_ddp_sharded', 'microopt_ddp_spawn']"


def run_python(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter (the test process has imported everything already)."""
    command = [sys.executable, *args] if args else [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_package_imports_neither_lightning_nor_lm_eval_nor_torch():
    loaded = run_python("import sys, lit_microopt; print(sorted({'lightning', 'lm_eval', 'torch'} & set(sys.modules)))")
    assert loaded == "[]"


def test_importing_the_package_leaves_the_import_system_as_it_was():
    code = ("import sys; finders, hooks = list(sys.meta_path), list(sys.path_hooks); import lit_microopt; "
            "print(sys.meta_path == finders and sys.path_hooks == hooks)")
    assert run_python(code) == "True"


def test_importing_the_optimizers_does_not_import_lightning():
    code = "import sys; from lit_microopt import AdamMini, MicroAdam; print('lightning' in sys.modules, 'lm_eval' in sys.modules)"
    assert run_python(code) == "False False"


def test_the_help_of_the_command_line_does_not_import_torch():
    code = ("import sys; from lit_microopt.__main__ import main; main(['--help']); "
            "print('torch' in sys.modules)")
    assert run_python(code).splitlines()[-1] == "False"
    assert "usage: python -m lit_microopt" in run_python("", "-m", "lit_microopt", "--help")


@pytest.mark.parametrize("imports", [
    "import lit_microopt.strategies; from lightning.pytorch.strategies import StrategyRegistry",
    "from lightning.pytorch.strategies import StrategyRegistry; import lit_microopt.strategies",
    "import lit_microopt.cli; from lightning.pytorch.strategies import StrategyRegistry",  # the command line
])
def test_the_strategies_are_registered_where_lightning_is_loaded(imports):
    assert run_python(f"{imports}; {REGISTERED}") == EXPECTED


def test_the_strategy_class_is_reachable_from_the_package():
    assert run_python("import lit_microopt; print(lit_microopt.MicroOptDDPStrategy.__name__)") == "MicroOptDDPStrategy"


def test_the_lm_eval_model_is_registered_by_the_eval_package():
    pytest.importorskip("lm_eval")
    code = ("import lit_microopt.eval; from lm_eval.api.registry import model_registry; "
            "print('lit_microopt' in model_registry)")
    assert run_python(code) == "True"
