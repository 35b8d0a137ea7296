"""Continuous batching: which sequences run this step, and how many tokens each computes."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from core.block_manager import BlockManager
from core.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One step's work: each sequence with the number of new tokens it computes."""

    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def is_decode(self) -> bool:
        return all(
            n == 1 and s.num_computed_tokens == len(s) - 1
            for s, n in zip(self.seqs, self.num_tokens)
        )

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


class Scheduler:
    """Running sequences first (decodes and unfinished prefill chunks), then waiting ones,
    under two limits: ``max_batch_size`` sequences and ``max_num_batched_tokens`` tokens.

    A prompt longer than the token budget is prefilled in chunks over several steps. When KV
    blocks run out, the newest running sequence is preempted: its blocks are freed and it is
    recomputed later (its full blocks usually come back from the prefix cache).
    """

    def __init__(
        self, block_manager: BlockManager, max_batch_size: int, max_num_batched_tokens: int
    ) -> None:
        self.block_manager = block_manager
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def can_admit(self) -> bool:
        """Whether the next schedule would take a waiting sequence (one waits, a slot is free)."""
        return bool(self.waiting) and len(self.running) < self.max_batch_size

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)
        self.num_preemptions += 1

    def schedule(self, admit_waiting: bool = True) -> ScheduledBatch:
        """This step's batch. A running sequence with nothing to compute (its next token is not
        sampled yet, under async scheduling) sits the step out; ``admit_waiting=False`` keeps
        the waiting ones out too (a step scheduled before the previous one's tokens are known)."""
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        # 1. running sequences, oldest first; the newest are preempted when blocks run out
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            if n == 0:
                i += 1
                continue
            while not bm.allocate_slots(seq, n):
                victim = self.running[-1]
                self._preempt(victim, batch)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                break  # seq itself was the newest and got preempted
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
            budget -= n
            i += 1
        # 2. waiting sequences, in arrival order (preempted ones are at the front)
        while admit_waiting and budget > 0 and self.can_admit:
            seq = self.waiting[0]
            bm.match_prefix(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            if not bm.allocate_slots(seq, n):
                bm.free(seq)
                seq.num_computed_tokens = 0
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
            budget -= n
        return batch

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
