"""What every benchmark script shares: the repository root, which server version a run measured, logging."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_fingerprint() -> str:
    """sha256 (first 12 hex) over server/**/*.py, paths and contents: which version of the server a figure belongs to."""
    h = hashlib.sha256()
    for f in sorted((ROOT / "server").rglob("*.py")):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


FINGERPRINT = source_fingerprint()  # as imported at start


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def warn_if_sources_changed() -> None:
    now = source_fingerprint()
    if now != FINGERPRINT:
        print(
            f"NOTE: server sources changed during the run ({FINGERPRINT} -> {now}); "
            f"this process measured the version it imported at start ({FINGERPRINT})"
        )
