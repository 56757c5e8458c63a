"""A length-grouped, deterministic, resumable sampler: items of similar length share a batch.

Order of an epoch (the same on every process, given ``seed`` and ``epoch``):

1. a random permutation of all items (``numpy.random.default_rng([seed, epoch])``);
2. cut into mega-batches of ``batch_size * num_replicas * mega_batch_mult`` items, each sorted by length,
   longest first, then cut into *global batches* of ``batch_size * num_replicas`` items;
3. the global batches shuffled, except that the one holding the longest item goes first (an out-of-memory
   shows on the first step, not hours later);
4. without ``drop_last`` the order is filled up to whole global batches with items from its start (as
   ``DistributedSampler`` does); with it the incomplete tail is dropped.

Rank ``r`` takes slice ``r`` of every global batch, so the ranks' batches have similar lengths too. To resume
mid-epoch, ``set_epoch(epoch, start=k)`` skips the first ``k`` items this rank already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Yields item indices for one rank; batch them with ``DataLoader(batch_size=batch_size)``.

    Args:
        lengths: token count of each item (``ConversationDataset.lengths``).
        batch_size: items per batch on one rank (the micro batch).
        seed: seed of the order; epoch: set with :meth:`set_epoch` before each epoch.
        num_replicas / rank: data-parallel processes and this one's index.
        mega_batch_mult: global batches per sorted mega-batch (larger: less padding, less randomness).
        drop_last: drop the last incomplete global batch instead of filling it.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, mega_batch_mult: int = 50, drop_last: bool = False):
        if batch_size < 1 or mega_batch_mult < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need batch_size, mega_batch_mult, num_replicas >= 1 and 0 <= rank < num_replicas; "
                             f"got {batch_size}, {mega_batch_mult}, {num_replicas}, {rank}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.seed = batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.mega_batch_mult, self.drop_last = mega_batch_mult, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch ``epoch``'s order and skip its first ``start`` items of this rank (resume)."""
        if not 0 <= start <= self.per_rank():
            raise ValueError(f"start must be in [0, {self.per_rank()}], got {start}")
        self.epoch, self.start = epoch, start

    def _global(self) -> int:
        return self.batch_size * self.num_replicas

    def per_rank(self) -> int:
        """Items each rank gets in one epoch."""
        n, size = len(self.lengths), self._global()
        batches = n // size if self.drop_last else -(-n // size)
        return batches * self.batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int64 (per_rank * num_replicas,) the global order of ``epoch`` (all ranks)."""
        n, size = len(self.lengths), self._global()
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(n)
        mega = size * self.mega_batch_mult
        chunks = [perm[i:i + mega] for i in range(0, n, mega)]
        order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        total = self.per_rank() * self.num_replicas
        if total > n:
            order = np.concatenate([order, np.resize(order, total - n)])
        batches = [order[i:i + size] for i in range(0, total, size)]
        if not batches:
            return np.zeros(0, dtype=np.int64)
        longest = int(np.argmax([self.lengths[b].max() for b in batches]))
        rest = [b for k, b in enumerate(batches) if k != longest]
        shuffled = [rest[k] for k in rng.permutation(len(rest))]
        return np.concatenate([batches[longest], *shuffled])

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order(self.epoch).reshape(-1, self.num_replicas, self.batch_size)
        mine = order[:, self.rank].reshape(-1)
        return iter(mine[self.start:].tolist())

    def __len__(self) -> int:
        return self.per_rank() - self.start


class LengthGroupedBatchSampler:
    """The job's micro-batches (lists of ``micro_batch`` indices, the same on every rank) in a length-grouped
    order: what ``training.batches.RankBatches`` deals to ranks (micro-batch j to rank j % world size), so
    neighbouring micro-batches, and thus the ranks of one step, have similar lengths. The incomplete last
    micro-batch is dropped, as ``RandomBatchSampler`` does. ``set_epoch(epoch)`` reseeds."""

    def __init__(self, lengths: Sequence[int], micro_batch: int, seed: int = 0, mega_batch_mult: int = 50):
        self.micro_batch = micro_batch
        self.order = LengthGroupedSampler(lengths, micro_batch, seed=seed, mega_batch_mult=mega_batch_mult,
                                          drop_last=True)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return self.order.per_rank() // self.micro_batch

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.order)
        for start in range(0, len(order), self.micro_batch):
            yield order[start:start + self.micro_batch]
