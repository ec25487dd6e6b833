"""Per-user event sequences as the model sees them: item rows with the time gap before each event.

* :class:`UserSequence` / :func:`to_sequence` / :func:`pad_batch` -- training and evaluation data;
* :func:`time_gaps` -- the gap feature of a run of timestamps (seconds since the previous event);
* :func:`run_steps` / :func:`rewarm` -- the serving side: advance many users' hidden states through
  their events with one batched ``Recommender.step`` per round, and rebuild a hidden state from a
  stored history (a state written by another model version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .gru import PAD


@dataclass
class UserSequence:
    """One user's sequence as item rows and time gaps (seconds since the previous event)."""

    rows: np.ndarray  # int64 [L]
    gaps: np.ndarray  # float32 [L]
    valid_row: int = PAD  # the validation target (PAD = none)


def to_sequence(events: Sequence[tuple[str, float]], row_of: dict[str, int],
                valid_item: str | None = None) -> UserSequence:
    """``[(item_id, ts), ...]`` -> rows and gaps. Items not in ``row_of`` are dropped (they have no row)."""
    kept = [(row_of[i], t) for i, t in events if i in row_of]
    rows = np.array([r for r, _ in kept], dtype=np.int64)
    ts = np.array([t for _, t in kept], dtype=np.float64)
    gaps = np.zeros(len(kept), dtype=np.float32)
    if len(kept) > 1:
        gaps[1:] = np.diff(ts).astype(np.float32)
    valid_row = row_of.get(valid_item, PAD) if valid_item is not None else PAD
    return UserSequence(rows, gaps, valid_row)


def pad_batch(seqs: list[UserSequence], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows [B, L], gaps [B, L] and lengths [B] of the sequences ``idx``."""
    lengths = [len(seqs[i].rows) for i in idx]
    L = max(lengths)
    rows = np.zeros((len(idx), L), dtype=np.int64)
    gaps = np.zeros((len(idx), L), dtype=np.float32)
    for b, i in enumerate(idx):
        rows[b, :lengths[b]] = seqs[i].rows
        gaps[b, :lengths[b]] = seqs[i].gaps
    return torch.from_numpy(rows), torch.from_numpy(gaps), torch.tensor(lengths)


def time_gaps(timestamps: Sequence[float], previous: float | None = None) -> list[float]:
    """Seconds since the previous event for each timestamp (0 for the very first one; never negative)."""
    out = []
    for ts in timestamps:
        out.append(0.0 if previous is None else max(0.0, float(ts) - float(previous)))
        previous = ts
    return out


def run_steps(model, hiddens: list[np.ndarray], sequences: list[list[tuple[int, float]]]) -> list[np.ndarray]:
    """Advance each hidden state [H] through its own sequence of (item row, gap seconds), batching across
    sequences: round r steps every sequence that has an r-th element, in one model call."""
    hiddens = list(hiddens)
    longest = max((len(s) for s in sequences), default=0)
    for r in range(longest):
        active = [i for i, s in enumerate(sequences) if len(s) > r]
        states = np.stack([hiddens[i] for i in active])
        rows = [sequences[i][r][0] for i in active]
        gaps = [sequences[i][r][1] for i in active]
        out = model.step(states, rows, gaps)
        for j, i in enumerate(active):
            hiddens[i] = out[j]
    return hiddens


def rewarm(model, histories: Sequence[Sequence[tuple[str, float]]]) -> list[np.ndarray]:
    """Hidden states [H] rebuilt by replaying each ``[(item_id, ts), ...]`` history (oldest first)
    through ``model`` from its initial state: what a state written by another model version, or with
    another hidden size, is replaced with. Items the model does not know are skipped."""
    seqs = []
    for history in histories:
        known = [(row, ts) for row, (_, ts) in zip(model.rows_for([i for i, _ in history]), history) if row]
        seqs.append(list(zip([r for r, _ in known], time_gaps([ts for _, ts in known]))))
    init = list(model.init_state(len(histories))) if len(histories) else []
    return run_steps(model, init, seqs)
