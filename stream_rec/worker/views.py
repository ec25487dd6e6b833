"""What the pages under /ui/ show, as plain JSON-able dicts (pure: no aiohttp, no Kafka; worker/ui.py
serves them). Everything in them that came from outside -- ids, titles, texts, reasons -- is data: the
pages put it into the DOM as text, never as markup.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from urllib.parse import quote

from ..recsys.explain import title_of_text
from ..state import UserState
from ..validation import MAX_ID_CHARS
from .live import ItemExposure, ItemIndex

# query flag of a redirected request (the lookup's and the pages'): it is answered or refused, never sent on again
REDIRECTED = "redirected"
EVENTS_SHOWN = 20  # the user's last events on the page (the state keeps ``history_len``)
REASONS_SHOWN = 10  # an item's most frequent reasons on its page (the others are counted together)


def id_problem(value: str) -> str | None:
    """Why ``value`` (from a URL path) cannot be a user or item id, or None. The rules of the event
    validator (stream_rec/validation.py): 1 to ``MAX_ID_CHARS`` characters, not only blanks, valid Unicode."""
    if not value.strip():
        return "an id is not empty"
    if len(value) > MAX_ID_CHARS:
        return f"an id has at most {MAX_ID_CHARS} characters; this one has {len(value):,}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "an id is valid Unicode text"
    return None


def path_segment(value: str) -> str:
    """``value`` as one URL path segment: every reserved character percent-encoded, dots too, so that no
    client turns an id ``..`` or ``.`` into a dot segment and asks for another page."""
    return quote(value, safe="").replace(".", "%2E")


def title_of(item_id: str, index: ItemIndex, model=None) -> str:
    """The item's title: its catalog record's, else the title part of the model's item text, else ''."""
    title = index.title(item_id)
    if not title and model is not None:
        row = model.row_of.get(item_id)
        if row is not None:
            title = title_of_text(model.item_texts[row - 1], "")
    return title


def history_mix(state: UserState, index: ItemIndex, top: int = 6) -> list[dict]:
    """What the user's history is made of: the most frequent catalogue attribute values of its items (an
    item's own episode or series number left out), each with its share of the history."""
    counts: Counter = Counter()
    for item_id, _ in state.history:
        info = index.items.get(item_id)
        if info is not None:
            counts.update(f"{k}: {v}" for k, v in info.attributes.items() if k not in ("episode", "series"))
    total = max(1, len(state.history))
    return [{"label": label, "share": round(n / total, 4)} for label, n in counts.most_common(top)]


def user_view(user_id: str, record: dict, state: UserState, index: ItemIndex, *, model=None, partition: int,
              source: str) -> dict:
    """The user page's data: ``record`` (a recommendation record: the lookup's ``pipeline.current_record``,
    or the list the stream just emitted, ``source`` "lookup" / "stream") and the stored ``state``."""
    events = [{"item_id": item_id, "title": title_of(item_id, index, model), "timestamp": ts}
              for item_id, ts in reversed(state.history[-EVENTS_SHOWN:])]
    return {
        "user_id": user_id,
        "partition": partition,
        "source": source,
        "model_version": record.get("model_version", ""),
        "produced_at": record.get("produced_at"),
        "event_timestamp": record.get("event_timestamp"),
        "latency_ms": record.get("latency_ms"),
        "items": [{"item_id": it["item_id"], "title": title_of(it["item_id"], index, model),
                   "score": it.get("score"), "reason": it.get("reason", "")} for it in record.get("items", ())],
        "interests": [str(label) for label in record.get("interests") or ()],  # the enricher's labels, strongest first
        "history_mix": history_mix(state, index),
        "events": events,
        "n_events": state.n_events,
        "negatives": [{"item_id": i, "title": title_of(i, index, model)} for i in reversed(state.negatives)],
    }


def item_view(item_id: str, model, index: ItemIndex, exposure: ItemExposure, *, fresh_max_age_s: float,
              fresh_slots: int, now: float | None = None) -> dict | None:
    """The item page's data; None when neither the catalogue nor the model knows ``item_id``."""
    info = index.items.get(item_id)
    row = model.row_of.get(item_id) if model is not None else None
    if info is None and row is None:
        return None
    now = time.time() if now is None else now
    added = float(model.added_at[row]) if row is not None else -math.inf
    age = now - added if math.isfinite(added) else None
    shown, reasons = exposure.of(item_id)
    sampled = max(1, sum(n for _, n in reasons))
    text = info.text if info is not None else (model.item_texts[row - 1] if row is not None else "")
    return {
        "item_id": item_id,
        "title": title_of(item_id, index, model),
        "text": text,
        "attributes": dict(info.attributes) if info is not None else {},
        "first_seen": info.first_seen if info is not None else None,
        "in_model": row is not None,
        "trained_catalogue": row is not None and not math.isfinite(added),
        "joined_at": added if math.isfinite(added) else None,
        "age_s": age,
        "fresh": age is not None and age < fresh_max_age_s,
        "fresh_max_age_s": fresh_max_age_s,
        "fresh_slots": fresh_slots,
        "shown_last_hour": shown,
        # shares of the reasons given with the item in a sample of the lists (ItemExposure.REASON_SAMPLE)
        "reasons": [{"reason": reason, "share": round(n / sampled, 4)} for reason, n in reasons[:REASONS_SHOWN]],
        "other_reasons": max(0, len(reasons) - REASONS_SHOWN),
        "other_reasons_share": round(sum(n for _, n in reasons[REASONS_SHOWN:]) / sampled, 4),
        "reasons_sampled": sum(n for _, n in reasons),
        "counts_saturated": exposure.is_saturated,
        "window_s": exposure.BUCKET_S * exposure.BUCKETS,
    }
