"""What a new user sees first: the Adam-mini partition summary, shown by the command line, and a warning when the head
counts found no attention weight to use them on."""

from __future__ import annotations

import sys

import pytest
import torch

import lit_microopt.cli  # noqa: F401  (Lightning's log handler binds to the real stderr, not to one test's capture)
from lit_microopt.__main__ import main
from lit_microopt.optim import AdamMini
from tests.test_cli import QUICKSTART, ROOT, TINY_QUICKSTART


def test_the_command_line_shows_the_adam_mini_partition(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_microopt"])
    with pytest.raises(SystemExit):  # stopped right after the optimizer is built: the checkpoint does not exist
        main(["fit", "--config", QUICKSTART, "--config", str(ROOT / "configs" / "quickstart_adam_mini.yaml"),
              *TINY_QUICKSTART, "--ckpt_path", "none.ckpt"])
    error = capsys.readouterr().err
    assert "INFO: AdamMini partition of 29 parameters: head 6 (18 blocks), row 16" in error


class TimmAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(16, 48)
        self.proj = torch.nn.Linear(16, 16)


class DiffusersAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(16, 16) for _ in range(3))


@pytest.mark.parametrize("attention", [TimmAttention, DiffusersAttention], ids=["timm attn.qkv", "diffusers to_q"])
def test_head_counts_that_match_no_attention_weight_warn(attention):
    model = torch.nn.ModuleDict({"attn": attention()})
    with pytest.warns(UserWarning, match="n_heads=4 was given, but no parameter was recognised as a query, key"):
        AdamMini(model.named_parameters(), n_heads=4)


def test_head_counts_that_match_warn_nothing(recwarn):
    model = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(16, 16), "k_proj": torch.nn.Linear(16, 16)})
    AdamMini(model.named_parameters(), n_heads=4)
    assert not [warning for warning in recwarn if "n_heads" in str(warning.message)]
