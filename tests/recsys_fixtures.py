"""Small deterministic inputs for the tests/test_recsys_*.py files (no encoder, no training)."""

from __future__ import annotations

import numpy as np

from stream_rec_devtools.synthetic import make_catalog


def theme_world(items_per_theme: int = 8, noise: float = 0.3, seed: int = 0):
    """Synthetic catalog with item vectors by row: one axis per theme plus noise, so items of one theme
    are near neighbours (cos ~0.9) and other themes far (cos ~0.1). Row 0 is padding (zeros).
    Returns (catalog, vectors [N+1, d], row_of {item_id: row}, theme_of_row [N+1])."""
    rng = np.random.default_rng(seed)
    catalog = make_catalog(items_per_theme)
    themes = sorted({it["attributes"]["genre"] for it in catalog})
    d = len(themes) + 8
    vecs = np.zeros((len(catalog) + 1, d), dtype=np.float32)
    theme_of_row = [""]
    for row, it in enumerate(catalog, start=1):
        t = it["attributes"]["genre"]
        vecs[row, themes.index(t)] = 1.0
        vecs[row] += noise * rng.standard_normal(d) / np.sqrt(d)
        theme_of_row.append(t)
    row_of = {it["item_id"]: row for row, it in enumerate(catalog, start=1)}
    return catalog, vecs, row_of, theme_of_row
