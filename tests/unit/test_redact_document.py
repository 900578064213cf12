"""`Redactor.document`: one scan of a whole payload's strings says "clean" only when redacting them one by
one would change nothing (webhook bodies, acks and outbox payloads skip the walk then)."""

from __future__ import annotations

import random
from typing import Any

from bot.redact import Redactor

SECRET = 'hook-"secret"\\42'  # a known value with a quote and a backslash, as JSON escapes them
PIECES = [
    "disk full on node-1",
    "xoxb-1234567890-abcdef",
    "Bearer\tabcdefgh12345678",
    "password:\nhunter2hunter2",
    'token="abc def"',
    "https://user:pa55@example.com/x",
    "AKIAABCDEFGHIJKLMNOP",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----",
    SECRET,
    "a\\nb \\u0041 \\t",  # literal backslashes
    "bell\x07 and form\x0cfeed",
    "ünïcödé ✓ \u2028",
    "paſſword: hunter2hunter2",  # IGNORECASE matches the long s for s
    "api_\u212aey=abcdefgh",  # and the Kelvin sign for k
    "see https://example.com/a@b and ghost",
    "12 passed, 1 failed; passes the token check",  # the words, no secret: only a look at each word
    "clientsecret: abcdefgh",  # a match that starts before its word
    "DB_PASSWORD=hunter2 passwd=hunter2",
    "straße token=abcdefgh",  # folding changes the length: the whole document is searched
    "",
]


def random_doc(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.random()
    if depth > 3 or kind < 0.4:
        return " ".join(rng.choice(PIECES) for _ in range(rng.randint(0, 2))) if rng.random() < 0.9 else 7
    if kind < 0.7:
        return [random_doc(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(PIECES)[:12]: random_doc(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def test_a_body_it_calls_clean_has_no_string_to_mask() -> None:
    r = Redactor([SECRET])
    rng = random.Random(5)
    clean = masked = 0
    for _ in range(3000):
        doc = random_doc(rng)
        if r.document(doc) is not doc:
            masked += 1
        else:
            clean += 1
            assert r.value(doc) == doc, doc
    assert clean > 300 and masked > 300  # both answers were exercised


def test_each_secret_shape_is_seen() -> None:
    r = Redactor([SECRET])
    for piece in PIECES:
        doc = {"alerts": [{"annotations": {"summary": piece}}]}
        if r.value(doc) != doc:
            assert r.document(doc) == r.value(doc), piece
    clean = {"labels": {"alertname": "DiskFull", "instance": "node-1:9100"}}
    assert r.document(clean) is clean


def test_a_payload_is_masked_exactly_as_the_walk_would_mask_it() -> None:
    # `document` (acks, form errors, outbox payloads) scans the strings once as one text and walks them
    # only when that text may hold a secret; what it returns is always what the walk returns.
    r = Redactor([SECRET])
    rng = random.Random(11)
    walked = 0
    for _ in range(3000):
        doc = random_doc(rng)
        assert r.document(doc) == r.value(doc), doc
        walked += r.document(doc) is not doc
    assert 300 < walked < 2700


def test_strings_inside_subclasses_and_tuples_are_seen() -> None:
    # A reply may hold a StrEnum, a tuple or a dict subclass: their strings are scanned like any other.
    import enum
    from collections import OrderedDict

    class Word(enum.StrEnum):
        LEAK = "token=abcdefgh1234"

    r = Redactor()
    for doc in (
        {"status": Word.LEAK},
        {"rows": ("fine", ("xoxb-1234567890-abcdef",))},
        OrderedDict(text="password: hunter2hunter2"),
        [OrderedDict([("auth", ["Bearer abcdefgh12345678"])])],
    ):
        assert r.document(doc) == r.value(doc) != doc, doc
    clean = {"n": 1, "x": None, "ok": True, "f": 1.5, "t": ("a", 2), Word.LEAK.name: "fine"}
    assert r.document(clean) is clean


def test_texts_masks_each_text_as_text_does() -> None:
    r = Redactor([SECRET])
    for clean in (["disk full", "disk full", "node-1 down"], []):
        assert r.texts(clean) == {t: t for t in clean}
    mixed = ["disk full", *PIECES]
    assert r.texts(mixed) == {t: r.text(t) for t in mixed}
