"""Data order: which micro-batches each process reads, epoch after epoch, and from where after a resume.

A *batch sampler* gives the micro-batches of the whole job for one epoch (lists of dataset indices, the same
sequence on every rank; ``set_epoch(epoch)`` reseeds it). :class:`RandomBatchSampler` is the default; the
stage datasets may bring a length-grouped one. :class:`RankBatches` deals micro-batch ``j`` of an epoch to
rank ``j % world_size``, so an optimizer step covers the same samples whatever the number of processes,
and drops the tail that does not fill a whole optimizer step (every epoch has the same number of steps).
The position in the data is ``(epoch, offset)``, offset counting this rank's micro-batches of the epoch
already consumed; resuming skips those indices without loading them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset


class RandomBatchSampler:
    """A seeded random permutation per epoch, cut into micro-batches of ``micro_batch`` (the last partial
    one dropped)."""

    def __init__(self, num_samples: int, micro_batch: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.micro_batch = micro_batch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.micro_batch

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=gen).tolist()
        for start in range(0, len(self) * self.micro_batch, self.micro_batch):
            yield order[start : start + self.micro_batch]


class RankBatches:
    """This rank's micro-batches, as DataLoaders per epoch.

    Args:
        dataset: map-style dataset.
        collate_fn: list of items -> the model's batch dict.
        batch_sampler: micro-batches of the whole job (see the module docstring).
        rank / world_size: this process and the number of processes.
        grad_accum: micro-batches per rank and optimizer step.
        seed: seeds the DataLoader's own generator (worker seeds), never the global RNG.
        num_workers: DataLoader workers.
    """

    def __init__(self, dataset: Dataset, collate_fn: Callable[[list], Any], batch_sampler: Iterable[list[int]],
                 *, rank: int, world_size: int, grad_accum: int, seed: int = 0, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.batch_sampler = batch_sampler
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.seed = seed
        self.num_workers = num_workers
        self.steps_per_epoch = len(self._job_batches(0)) // (grad_accum * world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the data gives {len(self._job_batches(0))} micro-batches per epoch, fewer than one optimizer "
                f"step needs ({grad_accum} x {world_size} processes): lower optim.global_batch or add data")

    @property
    def per_epoch(self) -> int:
        """Micro-batches this rank reads per epoch."""
        return self.steps_per_epoch * self.grad_accum

    def _job_batches(self, epoch: int) -> list[list[int]]:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)
        return [list(b) for b in self.batch_sampler]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches (index lists) of ``epoch``."""
        job = self._job_batches(epoch)
        usable = self.steps_per_epoch * self.grad_accum * self.world_size
        if len(job) < usable:
            raise ValueError(f"epoch {epoch} gives {len(job)} micro-batches, epoch 0 gave enough for "
                             f"{self.steps_per_epoch} steps: the batch sampler must give as many every epoch")
        return job[self.rank : usable : self.world_size]

    def loader(self, epoch: int, offset: int = 0) -> DataLoader:
        """The DataLoader over ``epoch``'s micro-batches, skipping the first ``offset``."""
        return DataLoader(
            self.dataset,
            batch_sampler=self.epoch_batches(epoch)[offset:],
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch),
        )

    def stream(self, epoch: int, offset: int = 0) -> Iterator[Any]:
        """Batches from ``(epoch, offset)`` on, moving into the next epochs without end."""
        while True:
            yield from self.loader(epoch, offset)
            epoch, offset = epoch + 1, 0
