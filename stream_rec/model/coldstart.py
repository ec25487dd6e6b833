"""A better start for new users: a learned initial hidden state ``h0``.

A user with no history starts from ``init_state``; with zeros there, the GRU's first predictions are
whatever the output layer makes of a blank state (roughly its item biases). We learn ``h0`` instead --
one [H] vector, every model weight frozen -- by next-item cross-entropy on the *first* ``first_n``
events of the training users:

    loss = CE(scores(h0), item_1) + sum_{t<first_n} CE(scores(GRU(h0, item_1..t)), item_{t+1})

So ``h0`` is the state that makes the first few predictions of a typical new user best: "what people
start with" at step 0, and a starting point from which the frozen GRU adapts fastest over the next
events (a one-vector, first-order form of meta-learning an initialisation, cf. Reptile; it needs no
inner loop because the GRU update itself is the adaptation and stays as trained).

It is stored next to the model as ``init_state.safetensors`` (key ``h0``); ``Recommender.init_state``
uses it when present (``Recommender.initial_state``), so serving, evaluation and the stream pick it up.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .gru import PAD
from .sequences import pad_batch

INIT_STATE_FILE = "init_state.safetensors"

log = logging.getLogger(__name__)


def learn_initial_state(model, seqs: Sequence, first_n: int = 10, epochs: int = 30, lr: float = 0.05,
                        batch_size: int = 64, seed: int = 0, progress: bool = True) -> np.ndarray:
    """Optimise ``h0`` [H] for the first ``first_n`` events of each training sequence, weights frozen.

    ``model`` is a HybridGRU, ``seqs`` are :class:`~stream_rec.model.sequences.UserSequence` (``rows``, ``gaps``).
    Returns h0 as float32 numpy."""
    from tqdm import tqdm


    heads = [s for s in seqs if len(s.rows) >= 1]
    if not heads:
        raise ValueError("no training sequences to learn an initial state from")
    trimmed = [type(s)(s.rows[:first_n], s.gaps[:first_n]) for s in heads]
    device = model.item_bias.device
    was_training = model.training
    model.eval()  # frozen: no dropout, no weight gradients
    for p in model.parameters():
        p.requires_grad_(False)
    h0 = torch.zeros(model.config.hidden, device=device, requires_grad=True)
    opt = torch.optim.Adam([h0], lr=lr)
    rng = random.Random(seed)
    order = list(range(len(trimmed)))
    with torch.no_grad():
        table = model.item_vectors()
    try:
        bar = tqdm(range(epochs), desc="initial state", unit="epoch", disable=not progress)
        for _ in bar:
            rng.shuffle(order)
            total, count = 0.0, 0
            for s in range(0, len(order), batch_size):
                rows, gaps, _ = pad_batch(trimmed, order[s:s + batch_size])
                rows, gaps = rows.to(device), gaps.to(device)
                B = rows.shape[0]
                h_init = h0.expand(B, -1)
                states = [h_init.unsqueeze(1)]  # the state before event 1 predicts event 1
                if rows.shape[1] > 1:
                    states.append(model(rows[:, :-1], gaps[:, :-1], h0=h_init.contiguous(), table=table))
                states = torch.cat(states, dim=1)  # [B, T, H]
                mask = rows != PAD
                loss = F.cross_entropy(model.scores(states[mask], table), rows[mask])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n = int(mask.sum())
                total, count = total + float(loss.detach()) * n, count + n
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}")
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was_training)
    return h0.detach().cpu().numpy().astype(np.float32)


def save_initial_state(model_dir: str | Path, h0: np.ndarray) -> Path:
    from safetensors.numpy import save_file

    path = Path(model_dir) / INIT_STATE_FILE
    tmp = path.with_suffix(".tmp")
    save_file({"h0": np.asarray(h0, dtype=np.float32)}, str(tmp))
    tmp.replace(path)
    return path


def load_initial_state(model_dir: str | Path, hidden: int | None = None) -> np.ndarray | None:
    """h0 from ``model_dir`` (None when the file is absent); a size mismatch is an error."""
    path = Path(model_dir) / INIT_STATE_FILE
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    h0 = load_file(str(path))["h0"]
    if hidden is not None and h0.shape != (hidden,):
        raise ValueError(f"{path}: initial state of shape {h0.shape}, the model's hidden size is {hidden}")
    return h0
