"""``import lit_microopt`` registers the strategies in Lightning without importing Lightning itself."""

import subprocess
import sys

import pytest

REGISTERED = "print(sorted(name for name in StrategyRegistry if name.startswith('microopt_ddp')))"
EXPECTED = "['microopt_ddp', 'microopt_ddp_compressed', 'microopt_ddp_sharded', 'microopt_ddp_spawn']"


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (the test process has imported everything already)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_optimizers_does_not_import_lightning():
    assert run_python("import sys, lit_microopt; print('lightning' in sys.modules)") == "False"


@pytest.mark.parametrize("imports", [
    "import lit_microopt; from lightning.pytorch.strategies import StrategyRegistry",  # Lightning later
    "from lightning.pytorch.strategies import StrategyRegistry; import lit_microopt",  # Lightning first
    "import lit_microopt, lightning; StrategyRegistry = lightning.pytorch.strategies.StrategyRegistry",
])
def test_the_strategies_are_registered_whichever_is_imported_first(imports):
    assert run_python(f"{imports}; {REGISTERED}") == EXPECTED


def test_the_strategy_class_is_reachable_from_the_package():
    assert run_python("import lit_microopt; print(lit_microopt.MicroOptDDPStrategy.__name__)") == "MicroOptDDPStrategy"
