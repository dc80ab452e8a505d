"""The log of `serve` and of its background flush: lines on stderr at the operator's level."""

from __future__ import annotations

import logging
import sys


def log_to_stderr(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if logging.getLogger().level > logging.DEBUG:  # "Defaulting to PyArrow FileIO", at every table load
        logging.getLogger("pyiceberg.io").setLevel(logging.WARNING)
