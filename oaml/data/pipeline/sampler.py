"""Identity-balanced batches (P identities x K images) for QAConv's pairwise matching and triplet losses.

Matching losses need positives inside each batch. QAConv's own graph sampler builds a class-by-class distance
graph every epoch, infeasible at 10k-100k face identities, so batches here are drawn the PK way (Hermans et al.,
"In Defense of the Triplet Loss for Person Re-Identification", 2017): a random set of P identities with K images
each.

Epoch definition: each epoch shuffles all identities with a generator seeded by ``(seed, epoch)``, deals them
round-robin to the ranks (disjoint sets, the same count per rank; the ``num_identities % num_replicas`` left
over sit the epoch out, a different few each epoch), and each rank cuts its share into batches of P identities,
dropping the last incomplete one. So an epoch visits every identity at most once, and all but fewer than
``P * num_replicas + num_replicas`` identities exactly once, with K images each: it covers identities, not
images (an identity with 100 images contributes K of them per epoch).

That is the right unit for small synthetic sets and person re-identification, but a face recipe's "26 epochs"
means 26 passes over the *images* (CASIA-WebFace: 494k images, 10.6k identities). ``epoch_size="images"``
gives such epochs: as many batches as the data set has images per rank, made of consecutive identity passes
(each pass as above, with its own shuffle).

Identity weighting: dealing every identity once per pass samples an identity with 45 images as often as one with
2, so on a long-tailed set (LFW: half the identities have 2 images) each image of a large identity is seen a
tenth as often, and the within-identity variety it holds (pose, light, age) is under-used; arcface_torch avoids
this by shuffling images, not identities. ``identity_weighting=a > 0`` draws each batch's P distinct identities
with probability proportional to ``(image count) ** a`` instead (``a = 1``: every image about equally often;
``a = 0.5`` between). Such batches are drawn per rank from the rank's own generator, so two ranks may hold the
same identity in one step (harmless: the matching losses compare images within a rank's batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from oaml.errors import ConfigError, DataError


class IdentityBalancedBatchSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of dataset indices: ``batch_size // num_instances`` identities x K images.

    Args:
        labels: identity label of every dataset index (any integers).
        batch_size: images per batch on each process (rank); a multiple of ``num_instances``.
        num_instances: K, images per identity in a batch (>= 2, so that every image has a positive). An identity
            with fewer than K images gives all its images plus random repeats (a repeat is its own positive).
        seed: base seed; batches are a pure function of ``(seed, epoch, rank, num_replicas)``.
        num_replicas, rank: the distributed world; default from ``torch.distributed`` when it is initialised,
            else 1 and 0.
        epoch_size: ``"identities"`` (a pass over the identities) or ``"images"`` (as many images as the set holds).
        identity_weighting: 0 deals every identity once per pass; ``a > 0`` draws identities with probability
            proportional to ``(image count) ** a`` (module docstring).

    Call ``set_epoch(epoch)`` before iterating for a new draw per epoch. Lightning does it through the
    ``sampler`` attribute (see there). A mid-epoch resume is
    ``oaml.data.pipeline.item_keys.KeyedBatches``'s job.
    Under DDP, Lightning must not wrap it in a DistributedSampler: pass ``use_distributed_sampler=False`` to the
    Trainer, since this sampler already gives each rank its own identities.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        batch_size: int,
        num_instances: int = 4,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        epoch_size: str = "identities",
        identity_weighting: float = 0.0,
    ) -> None:
        if epoch_size not in ("identities", "images"):
            raise ConfigError(
                f"IdentityBalancedBatchSampler: epoch_size (data.epoch_size) must be 'identities' or 'images', "
                f"got {epoch_size!r}"
            )
        self.epoch_size = epoch_size
        if (
            isinstance(identity_weighting, bool)
            or not isinstance(identity_weighting, (int, float))
            or not 0.0 <= identity_weighting < float("inf")
        ):
            raise ConfigError(
                "data.identity_weighting must be a finite number >= 0 (0: every identity once per pass; 1: "
                f"identities in proportion to their images), got {identity_weighting!r}"
            )
        self.identity_weighting = float(identity_weighting)
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"IdentityBalancedBatchSampler: labels must be a non-empty 1-D sequence of ints, got shape "
                f"{labels.shape} dtype {labels.dtype}"
            )
        if not isinstance(num_instances, int) or num_instances < 2:
            raise ConfigError(
                f"data.num_instances must be an int >= 2 (images per identity, so that "
                f"each has a positive), got {num_instances!r}"
            )
        if not isinstance(batch_size, int) or batch_size < num_instances or batch_size % num_instances:
            raise ConfigError(
                f"data.batch_size={batch_size!r} is not a multiple of data.num_instances={num_instances} (a batch is "
                f"P identities x K images); e.g. data.batch_size={max(2, batch_size // num_instances) * num_instances}"
            )
        num_replicas, rank = _resolve_world(num_replicas, rank)

        identities, inverse = np.unique(labels, return_inverse=True)
        if len(identities) < 2:
            raise DataError(
                f"the training data holds {len(identities)} identity; matching losses need at "
                "least 2 (negatives)"
            )
        ids_per_batch = batch_size // num_instances
        if ids_per_batch < 2:
            raise ConfigError(
                f"data.batch_size={batch_size} with data.num_instances={num_instances} gives 1 identity per batch, "
                "so no negatives; use data.batch_size >= 2 * data.num_instances"
            )
        ids_per_rank = len(identities) // num_replicas
        if ids_per_rank < ids_per_batch:
            raise ConfigError(
                f"the training data has {len(identities)} identities, {ids_per_rank} for each of {num_replicas} "
                f"process(es), fewer than the {ids_per_batch} a batch needs (data.batch_size={batch_size} // "
                f"data.num_instances={num_instances}); lower data.batch_size or raise data.num_instances"
            )
        complete = int((np.bincount(inverse) >= num_instances).sum())
        if complete < ids_per_batch:
            # Identities with fewer than K images fill up with repeats; a batch made mostly of them has
            # few true positives for the matching loss.
            raise DataError(
                f"only {complete} of the {len(identities)} identities in the training data have "
                f"data.num_instances={num_instances} images, fewer than the {ids_per_batch} identities a batch "
                f"needs (data.batch_size={batch_size}); lower data.num_instances or data.batch_size, or add images"
            )
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(identities)))[:-1]
        self._images_of = np.split(order, bounds)  # dataset indices of each identity, ascending
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._ids_per_batch = ids_per_batch
        self._ids_per_rank = ids_per_rank
        self._num_images = int(labels.size)
        counts = np.array([len(images) for images in self._images_of], dtype=np.float64)
        self._identity_p = counts**self.identity_weighting / (counts**self.identity_weighting).sum()

    @property
    def num_identities(self) -> int:
        return len(self._images_of)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def sampler(self) -> IdentityBalancedBatchSampler:
        """This batch sampler itself, so that Lightning's per-epoch ``set_epoch`` reaches it.

        Lightning calls ``set_epoch`` on a loader's ``sampler`` and on its ``batch_sampler.sampler``, never on
        the batch sampler: without this attribute every epoch repeated epoch 0's batches (the same K images of
        each identity, in the same order), also on resume.
        """
        return self

    @property
    def _batches_per_pass(self) -> int:
        return self._ids_per_rank // self._ids_per_batch

    def __len__(self) -> int:
        if self.epoch_size == "images":
            images_per_batch = self._ids_per_batch * self.num_instances * self.num_replicas
            return max(1, self._num_images // images_per_batch)
        return self._batches_per_pass

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.num_replicas])
        k = self.num_instances
        if self.identity_weighting > 0:
            for _ in range(len(self)):
                ids = rng.choice(
                    self.num_identities, size=self._ids_per_batch, replace=False, p=self._identity_p
                )
                yield [index for identity in ids for index in _draw(rng, self._images_of[identity], k)]
            return
        remaining = len(self)
        identity_pass = 0
        while remaining > 0:
            # The same permutation on every rank (seeded without the rank), then a per-rank image draw.
            seed = [self.seed, self.epoch] if identity_pass == 0 else [self.seed, self.epoch, identity_pass]
            shared = np.random.default_rng(seed)
            my_ids = shared.permutation(self.num_identities)[self.rank :: self.num_replicas][
                : self._ids_per_rank
            ]
            for b in range(min(remaining, self._batches_per_pass)):
                batch: list[int] = []
                for identity in my_ids[b * self._ids_per_batch : (b + 1) * self._ids_per_batch]:
                    batch.extend(_draw(rng, self._images_of[identity], k))
                yield batch
                remaining -= 1
            identity_pass += 1


def _draw(rng: np.random.Generator, images: np.ndarray, k: int) -> list[int]:
    """K of an identity's images: distinct when it has K or more, else all of them plus random repeats."""
    if len(images) >= k:
        return rng.choice(images, size=k, replace=False).tolist()
    return np.concatenate((rng.permutation(images), rng.choice(images, size=k - len(images)))).tolist()


def _resolve_world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(
            f"IdentityBalancedBatchSampler: num_replicas must be an int >= 1, got {num_replicas!r}"
        )
    if not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(
            f"IdentityBalancedBatchSampler: rank must be an int in [0, num_replicas={num_replicas}), got {rank!r}"
        )
    return num_replicas, rank
