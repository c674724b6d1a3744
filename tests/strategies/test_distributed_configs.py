"""The multi-machine overlays of configs/distributed/ parse on top of the recipes they are written for."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from lit_microopt.__main__ import main
from lit_microopt.strategies import MicroOptDDPStrategy, TopKCompression

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    ("recipe", "overlay", "nodes", "devices", "compressed"),
    [
        ("llama2_7b_gsm8k_microadam.yaml", "torchrun.yaml", 2, 8, True),
        ("llama2_7b_sft_adam_mini.yaml", "slurm.yaml", 2, 4, False),
    ],
)
def test_an_overlay_gives_a_recipe_its_machines_and_strategy(capsys, monkeypatch, recipe, overlay, nodes, devices,
                                                             compressed):
    monkeypatch.setattr(sys, "argv", ["lit_microopt"])  # LightningCLI reads sys.argv when handed none
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / recipe), "--config", str(CONFIGS / "distributed" / overlay),
              "--print_config"])
    assert exit_info.value.code == 0
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert (trainer["num_nodes"], trainer["devices"]) == (nodes, devices)
    assert trainer["strategy"]["class_path"] == "lit_microopt.strategies.MicroOptDDPStrategy"
    arguments = trainer["strategy"]["init_args"]
    compression = arguments["gradient_compression"]
    strategy = MicroOptDDPStrategy(
        shard_optimizer_state=arguments["shard_optimizer_state"],
        gradient_compression=TopKCompression(**compression) if compression else None,
        process_group_backend=arguments["process_group_backend"],
    )
    assert strategy.shard_optimizer_state and (strategy.compression_state is not None) is compressed
