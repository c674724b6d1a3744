"""Checkpoint writes a kill cannot truncate, in the strategy and the command line, and the account of a bad file."""

from __future__ import annotations

import errno
import io
import os
import shutil
import sys

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_microopt.strategies import AtomicCheckpointIO, MicroOptDDPStrategy
from lit_microopt.strategies.checkpoint_io import checkpoint_file_problem, unreadable_checkpoint_message


class Killed(BaseException):
    """The process dying: not an Exception, so that nothing on the way handles it."""


@pytest.fixture
def killed_halfway_through_writing(monkeypatch, tmp_path):
    """The process dies halfway through writing a checkpoint's bytes to disk, and TMPDIR is another filesystem.

    ``os.rename`` out of ``TMPDIR`` fails with EXDEV, as it does across filesystems (``shutil.move`` then copies
    into the target in place); a copy, or a ``torch.save`` into a real file, writes half its bytes and dies.
    """
    other_filesystem = tmp_path / "tmpdir"
    other_filesystem.mkdir()
    monkeypatch.setenv("TMPDIR", str(other_filesystem))
    monkeypatch.setattr("tempfile.tempdir", None)  # tempfile reads TMPDIR again
    rename = os.rename

    def rename_across_filesystems(source, target, *args, **kwargs):
        if str(source).startswith(str(other_filesystem)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return rename(source, target, *args, **kwargs)

    def copy_half(source, target, *args, **kwargs):
        data = open(source, "rb").read()
        with open(target, "wb") as file:
            file.write(data[: len(data) // 2])
        raise Killed

    save = torch.save

    def save_half(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):  # memory: a kill loses nothing on disk
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        raise Killed

    monkeypatch.setattr(os, "rename", rename_across_filesystems)
    monkeypatch.setattr(shutil, "copyfile", copy_half)
    monkeypatch.setattr(torch, "save", save_half)


def the_checkpoint_io_of_the_command_line(tmp_path, monkeypatch):
    from lit_microopt.cli import LitMicroOptCLI
    from tests.test_cli import QUICKSTART, TINY_QUICKSTART

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_microopt"])
    cli = LitMicroOptCLI(["--config", QUICKSTART, *TINY_QUICKSTART], run=False)
    return cli.trainer.strategy.checkpoint_io


@pytest.mark.parametrize("made_by", ["command line", "microopt_ddp"])
def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one(tmp_path, monkeypatch, made_by, request):
    if made_by == "command line":
        checkpoint_io = the_checkpoint_io_of_the_command_line(tmp_path, monkeypatch)
    else:
        checkpoint_io = MicroOptDDPStrategy().checkpoint_io
    target = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint({"epoch": 1, "weights": torch.arange(100_000.0)}, target)
    request.getfixturevalue("killed_halfway_through_writing")
    with pytest.raises(Killed):
        checkpoint_io.save_checkpoint({"epoch": 2, "weights": torch.zeros(100_000)}, target)
    monkeypatch.undo()
    assert checkpoint_file_problem(target) is None
    previous = torch.load(target, weights_only=True)
    assert previous["epoch"] == 1 and torch.equal(previous["weights"], torch.arange(100_000.0))
    assert sorted(path.name for path in target.parent.iterdir()) == ["last.ckpt"]  # no checkpoint-like leftovers


def test_plain_lightning_checkpoint_io_is_replaced_but_a_users_own_is_kept():
    assert isinstance(MicroOptDDPStrategy().checkpoint_io, AtomicCheckpointIO)
    own = TorchCheckpointIO()
    assert MicroOptDDPStrategy(checkpoint_io=own).checkpoint_io is own


def test_an_atomic_write_reads_back(tmp_path):
    target = tmp_path / "deeper" / "epoch.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state": torch.ones(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["state"], torch.ones(3))
    AtomicCheckpointIO().save_checkpoint({"state": torch.zeros(3)}, target)  # over an existing one
    assert torch.equal(torch.load(target, weights_only=True)["state"], torch.zeros(3))


def test_an_unreadable_checkpoint_is_named_with_the_newest_readable_one_beside_it(tmp_path):
    older, newer = tmp_path / "best-epoch0.ckpt", tmp_path / "best-epoch1.ckpt"
    for path in (older, newer):
        torch.save({"epoch": 0}, path)
    os.utime(older, (1, 1))
    (tmp_path / "broken.ckpt").write_bytes(newer.read_bytes()[:50])  # newest, but truncated
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"")
    assert unreadable_checkpoint_message(last) == (
        f"checkpoint {last} cannot be used: it is empty (0 bytes), probably cut short while it was written; the "
        f"newest readable checkpoint beside it is {newer}: pass it to --ckpt_path."
    )
    assert unreadable_checkpoint_message(newer) is None
    assert "it is truncated or not a checkpoint (50 bytes" in unreadable_checkpoint_message(tmp_path / "broken.ckpt")
