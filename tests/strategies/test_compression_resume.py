"""The compression hook's error feedback is saved with the checkpoint, per rank: a resumed run takes the same steps.

``python -m lit_microopt fit`` on two CPU processes (gloo), configs/quickstart.yaml with the quickstart_ddp.yaml overlay (sharded state, Top-K
gradients) shrunk by tiny_run.yaml to 8 steps an epoch: two epochs in one run, against one epoch then a resume.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_microopt.strategies.ddp import COMPRESSION_CHECKPOINT_KEY

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
CONFIG = ROOT / "configs" / "quickstart_ddp.yaml"  # an overlay of the quickstart
TINY_RUN = Path(__file__).with_name("tiny_run.yaml")
SMALL = ["--data.init_args.train_size", "256"]  # 8 steps of 2 x 16 problems an epoch

pytestmark = pytest.mark.slow


def fit(folder: Path, *overrides: str) -> None:
    folder.mkdir(exist_ok=True)
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "lit_microopt", "fit", "--config", str(QUICKSTART), "--config", str(CONFIG), "--config", str(TINY_RUN), *SMALL,
         *overrides], cwd=folder, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two epochs in one run, and one epoch then a resume to two, each in its own folder."""
    uninterrupted, resumed = tmp_path_factory.mktemp("uninterrupted"), tmp_path_factory.mktemp("resumed")
    fit(uninterrupted, "--trainer.max_epochs", "2")
    fit(resumed, "--trainer.max_epochs", "1")
    after_one_epoch = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    fit(resumed, "--trainer.max_epochs", "2", "--ckpt_path", "checkpoints/last.ckpt")
    return uninterrupted, resumed, after_one_epoch


def test_the_checkpoint_holds_each_ranks_error_feedback(runs):
    _, resumed, after_one_epoch = runs
    saved = after_one_epoch[COMPRESSION_CHECKPOINT_KEY]
    assert [rank["iteration"] for rank in saved] == [8, 8]
    assert all(rank["error_feedback"] for rank in saved)
    # Each error feedback names its parameters (DDP's buckets, in the order their gradients came in).
    units = [[unit["parameters"] for unit in rank["error_feedback"].values()] for rank in saved]
    assert units[0] == units[1] and all(name.startswith("model.") for unit in units[0] for name in unit)
    # The two ranks' gradients differ, and so do their remainders.
    first, second = (rank["error_feedback"][0]["codes"] for rank in saved)
    assert not torch.equal(first, second)
    # The resumed run went on from there: 16 steps in all.
    final = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)[COMPRESSION_CHECKPOINT_KEY]
    assert [rank["iteration"] for rank in final] == [16, 16]


def _assert_the_same_steps(uninterrupted, resumed):
    """Both runs recorded the same parameters after every step, on every rank."""
    for rank in (0, 1):
        expected = torch.load(uninterrupted / "record" / f"rank{rank}.pt")
        found = torch.load(resumed / "record" / f"rank{rank}.pt")
        assert expected.keys() == found.keys()
        for name in expected:
            assert torch.equal(expected[name], found[name]), (rank, name)


def test_a_resumed_two_process_run_takes_the_steps_of_an_uninterrupted_one(runs):
    # The resumed process's DDP starts with one bucket of every parameter, in parameter order, and rebuilds its
    # buckets after its first step; the hook compresses that first bucket unit by unit, as the saved buckets.
    uninterrupted, resumed, _ = runs
    _assert_the_same_steps(uninterrupted, resumed)


def test_with_buckets_ddp_keeps_a_resumed_run_takes_the_steps_of_an_uninterrupted_one(tmp_path):
    # find_unused_parameters=True: DDP keeps its first buckets (it does not reorder them after the first step), so
    # the resumed run's buckets are those the saved error feedback belongs to.
    overlay = tmp_path / "keep_buckets.yaml"
    overlay.write_text("trainer:\n  strategy:\n    init_args:\n      find_unused_parameters: true\n")
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    fit(uninterrupted, "--config", str(overlay), "--trainer.max_epochs", "2")
    fit(resumed, "--config", str(overlay), "--trainer.max_epochs", "1")
    fit(resumed, "--config", str(overlay), "--trainer.max_epochs", "2", "--ckpt_path", "checkpoints/last.ckpt")
    _assert_the_same_steps(uninterrupted, resumed)
