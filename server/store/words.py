"""Words as SQLite's FTS5 `unicode61 remove_diacritics 2` tokenizer sees them, for text it has not indexed.

Current states are searched through the FTS5 index; past states (asOf, or a page pinned before a
write) are matched here, and both must agree word for word. The tokenizer decides per character:
a separator, a character dropped (a diacritic), or a character folded to another (case, accents).
Rather than copy its Unicode 6.1 tables, this module asks SQLite itself, once per character: the
Basic Multilingual Plane on first use (~0.15 s), other characters the first time they are seen."""

from __future__ import annotations

import sqlite3
import threading

TOKENIZE = "unicode61 remove_diacritics 2"
_SEPARATOR = " "
_LEFT = _RIGHT = "q"  # each probe is the word q<char>q: one word if <char> is a token character

_lock = threading.Lock()
_table: dict[int, str] = {}  # code point -> what the tokenizer makes of it: its fold, "" or a separator
_probed_bmp = False


def _probe(chars: list[str]) -> None:
    """Ask FTS5 what it makes of each character, and remember it."""
    with sqlite3.connect(":memory:") as conn:
        conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(body, tokenize = '{TOKENIZE}')")
        conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        conn.execute("INSERT INTO t (rowid, body) VALUES (1, ?)", (" ".join(_LEFT + c + _RIGHT for c in chars),))
        terms = [row[0] for row in conn.execute("SELECT term FROM v ORDER BY offset")]
    i = 0
    for c in chars:
        term = terms[i]
        if term == _LEFT and terms[i + 1 : i + 2] == [_RIGHT]:  # split in two: a separator
            _table[ord(c)] = _SEPARATOR
            i += 2
        else:
            _table[ord(c)] = term[len(_LEFT) : -len(_RIGHT)]
            i += 1
    if i != len(terms):
        raise RuntimeError(f"FTS5 probe out of step: {len(chars)} characters gave {len(terms)} words")


def _ensure(text: str) -> None:
    global _probed_bmp
    if not _probed_bmp:
        with _lock:
            if not _probed_bmp:
                _probe([chr(i) for i in range(0x10000) if not 0xD800 <= i <= 0xDFFF])
                # Lone surrogates are no text at all (a query may hold one; stored text cannot): they separate.
                _table.update(dict.fromkeys(range(0xD800, 0xE000), _SEPARATOR))
                _probed_bmp = True
    if text and max(text) > "\uffff":
        new = sorted({c for c in text if ord(c) not in _table and not 0xD800 <= ord(c) <= 0xDFFF})
        if new:
            with _lock:
                _probe(new)


def words(text: str) -> list[str]:
    """The words of `text` in order, each folded as the FTS5 index holds it."""
    _ensure(text)
    return text.translate(_table).split()


def words_match(body: object, query: str) -> bool:
    """Every word of `query` begins some word of `body`: the FTS5 query `"a"* "b"*`."""
    if not isinstance(body, str):
        return False
    found = words(body)
    return all(any(w.startswith(q) for w in found) for q in words(query))
