"""User errors (bad config values, bad data files) end a run with one line; bugs keep their traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from oaml.errors import ConfigError, DataError, find_user_error, report_user_errors, user_error_message


class _CorruptItem(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        raise DataError(f"cannot decode image from /data/faces/{index}.jpg: broken data stream")


def test_a_loader_worker_error_is_reported_as_what_the_worker_raised() -> None:
    loader = DataLoader(_CorruptItem(), batch_size=1, num_workers=1)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    assert "Traceback" in str(caught.value)  # torch packs the worker's traceback into the message
    assert user_error_message(caught.value, caught.value) == (
        "DataError: cannot decode image from /data/faces/0.jpg: broken data stream"
    )


def test_an_error_inside_instantiate_names_the_config_node() -> None:
    node = {"_target_": "oaml.data.formats.image_folder.ImageFolderDataset", "root": "/nonexistent/faces"}
    with pytest.raises(InstantiationException) as caught:
        instantiate({"data": {"train": node}}).data.train  # noqa: B018
    user = find_user_error(caught.value)
    assert isinstance(user, FileNotFoundError)
    assert user_error_message(caught.value, user) == (
        "MissingFileError: image folder root /nonexistent/faces does not exist or is not a folder "
        "(while building config node data.train)"
    )


def test_a_bug_keeps_its_traceback_and_a_user_error_exits_with_one_line(capsys, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @report_user_errors
    def bug() -> None:
        raise KeyError("a bug, not a user error")

    with pytest.raises(KeyError):
        bug()

    @report_user_errors
    def bad_value() -> None:
        raise ConfigError("data.batch_size=30 is not a multiple of data.num_instances=4")

    with pytest.raises(SystemExit) as exit_info:
        bad_value()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "Error: ConfigError: data.batch_size=30 is not a multiple of data.num_instances=4"
    )
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError):
        bad_value()


def _cli(module: str, *args: str, full_error: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_user_errors_print_one_line_and_hydra_full_error_shows_the_traceback(tmp_path: Path) -> None:
    # The example: a batch that is no whole number of identities, refused before any training.
    run = _cli("oaml.train", "data.batch_size=30", f"hydra.run.dir={tmp_path / 'a'}")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [
        "Error: ConfigError: data.batch_size=30 is not a multiple of data.num_instances=4 (a batch is P identities x "
        "K images); e.g. data.batch_size=28 (while building config node data)"
    ]
    assert not (tmp_path / "a" / "checkpoints").exists()
    assert errors[0] in (tmp_path / "a" / "train.log").read_text()  # the run's log keeps it too

    full = _cli("oaml.train", "data.batch_size=30", f"hydra.run.dir={tmp_path / 'b'}", full_error=True)
    assert full.returncode == 1 and "Traceback" in full.stderr and "ConfigError" in full.stderr

    # A random-bytes checkpoint for evaluation.
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(4096))
    run = _cli("oaml.evaluate", f"ckpt={junk}", f"hydra.run.dir={tmp_path / 'c'}")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"Error: DataError: {junk} is not a PyTorch checkpoint" in run.stderr
