"""What a training set does with an image it cannot read: ``data.on_bad_image=error|skip``.

Among millions of downloaded faces a few files are truncated or are not images at all. Decoding every image
before training to find them costs as much as an epoch, so they are met at first read, in a loader worker:

- ``error`` (default) stops the run with one line naming the file (``oaml.errors`` strips the worker's
  traceback);
- ``skip`` replaces the item by the next readable image of the same identity (so identity-balanced batches
  keep their P x K shape and the label stays true), warns once per file, and counts the files. The count is
  kept in shared memory, so every loader worker adds to the one the main process reports in ``metrics.json``
  (``data/bad_images_skipped``). The substitute is a fixed choice, so a resumed run reads what the
  uninterrupted one read.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from oaml.errors import ConfigError, DataError, MissingFileError

BAD_IMAGE_POLICIES = ("error", "skip")

T = TypeVar("T")


class BadImages:
    """Reads items through ``load`` under a policy; ``labels`` (one per item) say which items may replace
    which. ``describe(index)`` names an item's file in messages."""

    def __init__(self, policy: str, labels: np.ndarray, describe: Callable[[int], str]) -> None:
        if policy not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"data.on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {policy!r}")
        self.policy = policy
        self.labels = labels
        self.describe = describe
        # One byte per item, in shared memory: which files were found bad (in any worker).
        self._bad = torch.zeros(len(labels), dtype=torch.uint8).share_memory_() if policy == "skip" else None

    @property
    def count(self) -> int:
        """Distinct files skipped so far, by every process that shares this object."""
        return 0 if self._bad is None else int(self._bad.sum())

    def load(self, index: int, read: Callable[[int], T]) -> T:
        """``read(index)``, or under ``skip`` the first readable image of the same identity after it."""
        try:
            return read(index)
        except (DataError, MissingFileError) as error:
            if self._bad is None:
                raise
            self._note(index, error)
        same = np.flatnonzero(self.labels == self.labels[index])
        start = int(np.searchsorted(same, index))
        for other in np.roll(same, -start)[1:].tolist():
            if self._bad[other]:
                continue
            try:
                return read(other)
            except (DataError, MissingFileError) as error:
                self._note(other, error)
        raise DataError(
            f"no readable image of identity {int(self.labels[index])} (all {same.size} failed, e.g. "
            f"{self.describe(index)}); remove the identity or its files"
        )

    def _note(self, index: int, error: Exception) -> None:
        assert self._bad is not None
        if not self._bad[index]:
            self._bad[index] = 1
            warnings.warn(f"skipped unreadable training image ({error})", stacklevel=3)
