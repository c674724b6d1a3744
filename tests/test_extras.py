"""The optional dependencies: a missing one stops with an error naming the extra that installs it."""

import pytest

from lit_microopt._extras import EXTRAS, require_extra


def test_a_missing_module_names_the_extra_and_the_command(monkeypatch):
    monkeypatch.setitem(EXTRAS, "eval", ("lit_microopt_no_such_module",))
    with pytest.raises(ModuleNotFoundError) as error:
        require_extra("eval")
    assert "pip install 'lit-microopt[eval]'" in str(error.value)
    assert error.value.name == "lit_microopt_no_such_module"


def test_installed_modules_pass_without_being_imported():
    require_extra("plot", "json")


def test_every_extra_of_the_package_metadata_is_known():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(extras) and {"all", "test"} <= set(extras)
