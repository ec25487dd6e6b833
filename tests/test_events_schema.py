"""The events contract (topics/events.schema.json) and the worker's validator (stream_rec/validation.py) say
the same thing about every record: the whole fuzz corpus (stream_rec_devtools/faults.py, every kind of
malformed event among good ones) and the edge cases below go through both, and any disagreement fails.

What the schema cannot know is left out of the comparison on the validator's side: the Kafka key, the
catalog, the size limit and the worker's clock (``check_key=False``, no catalog, no size limit, ``now=inf``).
The schema sees a record as a JSON document: bytes that are not strict JSON (invalid UTF-8, NaN/Infinity
tokens, which Python's json accepts) are not documents, so the schema rejects them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest

from stream_rec_devtools.synthetic import make_catalog
from stream_rec.validation import (CONTROL_EVENT_TYPES, EVENT_TYPES, INT_ID_RANGE, MAX_ID_CHARS, MIN_TIMESTAMP, Event,
                                   validate_event)
from stream_rec_devtools.faults import FUZZ_KINDS, fuzz_corpus

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "topics" / "events.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
TS = 1_700_000_000.0


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def schema_accepts(raw: bytes) -> bool:
    try:
        doc = json.loads(raw, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return VALIDATOR.is_valid(doc)


def validator_accepts(raw: bytes) -> bool:
    return isinstance(validate_event(raw, check_key=False, max_bytes=len(raw or b"") + 1, known_item=None,
                                     now=math.inf), Event)


def event(**fields) -> bytes:
    base = {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": TS}
    return json.dumps({k: v for k, v in {**base, **fields}.items() if v is not ...}).encode()


EDGE_CASES = {
    # the cases
    "user_id 1.0": (event(user_id=1.0), True),
    "user_id blank": (event(user_id="   "), False),
    "user_id 300 digits": (b'{"user_id": ' + b"9" * 300 + b', "item_id": "i", "event_type": "view", "timestamp": 1700000000}',
                           False),
    "context.device 5": (event(context={"device": 5}), False),
    # around them
    "user_id 1.5": (event(user_id=1.5), False),
    "user_id int64 min": (event(user_id=INT_ID_RANGE[0]), True),
    "user_id uint64 max": (event(user_id=INT_ID_RANGE[1]), True),
    "user_id past uint64": (event(user_id=INT_ID_RANGE[1] + 1), False),
    "user_id true": (event(user_id=True), False),
    "user_id tab": (event(user_id="\t"), False),
    "user_id an arm's table key": (event(user_id="\x00arm:0:i1"), False),  # no user key can be an arm's
    "user_id NUL inside": (event(user_id="a\x00b"), False),
    "item_id with a NUL": (event(item_id="i\x00"), False),
    "user_id newline inside": (event(user_id="a\nb"), True),  # issue 23: such ids have states and lookups
    "item_id with a unit separator": (event(item_id="i\x1f"), True),
    "user_id no-break space": (event(user_id="\u00a0"), False),
    "user_id zero-width joiner": (event(user_id="\u200d"), True),
    "user_id 256 chars": (event(user_id="x" * MAX_ID_CHARS), True),
    "user_id 257 chars": (event(user_id="x" * (MAX_ID_CHARS + 1)), False),
    "user_id lone surrogate": (b'{"user_id": "a\\ud800", "item_id": "i", "event_type": "view", "timestamp": 1700000000}',
                               False),
    "user_id surrogate pair": (b'{"user_id": "\\ud83d\\ude00", "item_id": "i", "event_type": "view", '
                               b'"timestamp": 1700000000}', True),
    "item_id 0": (event(item_id=0), True),
    "item_id blank": (event(item_id=" "), False),
    "context.device string": (event(context={"device": "tv"}), True),
    "context.device null": (event(context={"device": None}), True),
    "context.text 5": (event(context={"text": 5}), False),
    "context.mmr_lambda 1.5": (event(context={"mmr_lambda": 1.5}), False),
    "context.mmr_lambda 0": (event(context={"mmr_lambda": 0}), True),
    "context list": (event(context=[1]), False),
    "context extra keys": (event(context={"page": {"a": [1, 2]}}), True),
    "value string": (event(value="5"), False),
    "value huge int": (event(value=10 ** 400), False),
    "value 1e400": (event(item_id="i").replace(b'"timestamp"', b'"value": 1e400, "timestamp"'), False),
    "value null": (event(value=None), True),
    "timestamp milliseconds": (event(timestamp=TS * 1000), True),
    "timestamp ms before 2000": (event(timestamp=5e11), False),
    "timestamp 1999": (event(timestamp=MIN_TIMESTAMP - 1), False),
    "timestamp string": (event(timestamp="2024-01-01"), False),
    "timestamp huge int": (event(timestamp=10 ** 400), False),
    "event_type VIEW": (event(event_type="VIEW"), False),
    "delete_user without item": (event(event_type="delete_user", item_id=...), True),
    "delete_user with any item": (event(event_type="delete_user", item_id=[1]), True),
    "view without item": (event(item_id=...), False),
    "extra fields": (event(session="s1", price=3), True),
    "not an object": (b"[1, 2]", False),
    "NaN timestamp": (b'{"user_id": "u", "item_id": "i", "event_type": "view", "timestamp": NaN}', False),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_schema_and_validator_agree_on_edge_cases(name):
    raw, expected = EDGE_CASES[name]
    assert (schema_accepts(raw), validator_accepts(raw)) == (expected, expected), name


def test_schema_and_validator_agree_on_the_whole_fuzz_corpus():
    items = [c["item_id"] for c in make_catalog(4)]
    corpus = fuzz_corpus(n_bad=len(FUZZ_KINDS) * 40, n_good=300, item_ids=items, now_s=TS, seed=11)
    disagree = [(e.kind, e.value[:120]) for e in corpus if schema_accepts(e.value) != validator_accepts(e.value)]
    assert not disagree, disagree[:10]
    accepted = sum(validator_accepts(e.value) for e in corpus)
    assert accepted >= 300  # the good ones (and the catalog-only "unknown_item" ones) pass both


def test_schema_constants_are_the_validators():
    props = SCHEMA["properties"]
    assert set(props["event_type"]["enum"]) == EVENT_TYPES | CONTROL_EVENT_TYPES
    string_id, int_id = props["user_id"]["oneOf"]
    assert string_id["maxLength"] == MAX_ID_CHARS and (int_id["minimum"], int_id["maximum"]) == INT_ID_RANGE
    assert SCHEMA["else"]["properties"]["item_id"] == props["user_id"] | {"description": SCHEMA["else"]["properties"]
                                                                           ["item_id"]["description"]}
    assert props["timestamp"]["anyOf"][0]["minimum"] == MIN_TIMESTAMP
    assert props["timestamp"]["anyOf"][1]["minimum"] == MIN_TIMESTAMP * 1000
