"""Why is this item recommended? The history item (or the request's context text) most similar to it.

For every recommended item we take the cosine to each of the user's recent history items and to the
query of the request (when there is one) and name the best one: "because you watched X" or
"because you searched 'Q'". Similarity is measured in item *text* space, optionally averaged with the
model's own item space (``model_vectors``: ID embedding + projected text, what the GRU scores with), so
that two items the model treats as substitutes explain each other even when their titles differ.

This is a post-hoc explanation (the nearest evidence), not an attribution of the GRU's hidden state:
it is what a user can check, and it costs one batched matmul per micro-batch ([B, k, d] x [B, L, d]).
The query only competes in text space (the model has no vector for it).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .vectors import unit_rows

NO_EVIDENCE_REASON = "popular right now"


def title_of_text(text: str, fallback: str) -> str:
    """The title part of an item text (``Title. more text``), or ``fallback`` (the item id)."""
    head = (text or "").split(". ", 1)[0].strip().rstrip(".")
    return head or fallback


def best_evidence(rec_rows: np.ndarray, history_rows: np.ndarray, text_vectors: np.ndarray,
                  model_vectors: np.ndarray | None = None,
                  query_vectors: np.ndarray | None = None, unit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Index of the strongest evidence for each recommended item, and its similarity.

    rec_rows [B, k] and history_rows [B, L] are item rows (0 = padding), text_vectors [N+1, d_t],
    model_vectors [N+1, d_m] (optional), query_vectors [B, d_t] (optional; zero row = no query).
    ``unit``: the rows of ``text_vectors`` / ``model_vectors`` already have unit norm (the worker keeps
    them so), which skips normalising the gathered rows of every micro-batch.
    Returns (source [B, k], similarity [B, k]): source in 0..L-1 is a history position, L means the
    query, -1 means no evidence at all (empty history and no query)."""
    rec_rows = np.asarray(rec_rows, dtype=np.int64)
    history_rows = np.asarray(history_rows, dtype=np.int64)
    if rec_rows.ndim != 2 or history_rows.ndim != 2 or rec_rows.shape[0] != history_rows.shape[0]:
        raise ValueError(f"rec_rows {rec_rows.shape} and history_rows {history_rows.shape} must be [B, k] and [B, L]")
    B, L = history_rows.shape
    # normalise only the rows used: the whole catalog per micro-batch is costly (DEVELOPERS.md)
    norm = (lambda x: x) if unit else unit_rows
    text_rec = norm(np.asarray(text_vectors)[rec_rows])  # [B, k, d_t]
    sim = text_rec @ norm(np.asarray(text_vectors)[history_rows]).transpose(0, 2, 1)  # [B, k, L]
    if model_vectors is not None:
        model_vectors = np.asarray(model_vectors)
        sim = 0.5 * (sim + norm(model_vectors[rec_rows]) @ norm(model_vectors[history_rows]).transpose(0, 2, 1))
    sim = np.where((history_rows > 0)[:, None, :], sim, -np.inf)
    if query_vectors is not None:
        q = unit_rows(query_vectors)  # [B, d_t]
        q_sim = (text_rec @ q[:, :, None])[:, :, 0]  # [B, k]
        has_query = np.abs(q).sum(axis=1) > 0
        q_sim = np.where(has_query[:, None], q_sim, -np.inf)
        sim = np.concatenate([sim, q_sim[:, :, None]], axis=2)  # [B, k, L+1]
    source = sim.argmax(axis=2)
    best = np.take_along_axis(sim, source[:, :, None], axis=2)[:, :, 0]
    source = np.where(np.isfinite(best), source, -1)
    return source, np.where(np.isfinite(best), best, 0.0)


def render_reasons(source: np.ndarray, history_rows: np.ndarray, title_of: Callable[[int], str] | Sequence[str],
                   queries: Sequence[str | None] | None = None, verb: str = "watched") -> list[list[str]]:
    """Sentences for ``best_evidence``'s output: "because you watched X" / "because you searched 'Q'"."""
    lookup = title_of if callable(title_of) else (lambda row: title_of[row])
    history_rows = np.asarray(history_rows)
    L = history_rows.shape[1]
    out = []
    for b, srcs in enumerate(np.asarray(source).tolist()):
        line = []
        for s in srcs:
            if s < 0:
                line.append(NO_EVIDENCE_REASON)
            elif s == L:
                line.append(f"because you searched '{queries[b]}'" if queries else NO_EVIDENCE_REASON)
            else:
                line.append(f"because you {verb} {lookup(int(history_rows[b, s]))}")
        out.append(line)
    return out


def explain_batch(rec_rows: np.ndarray, history_rows: np.ndarray, text_vectors: np.ndarray,
                  title_of: Callable[[int], str] | Sequence[str], model_vectors: np.ndarray | None = None,
                  query_vectors: np.ndarray | None = None, queries: Sequence[str | None] | None = None,
                  verb: str = "watched", unit: bool = False) -> list[list[str]]:
    """One reason string per recommended item, for a whole micro-batch (the worker's entry point)."""
    source, _ = best_evidence(rec_rows, history_rows, text_vectors, model_vectors, query_vectors, unit=unit)
    return render_reasons(source, history_rows, title_of, queries, verb)
