"""Append-only JSONL record files: what a resumable job has done so far.

A job appends one JSON object per line as it goes (``append_records``, flushed and synced) and reads
them back when it starts again (``read_records``). A kill can leave only the last line cut short: it
is cut off the file, so the job goes on from a clean end. A bad line anywhere else is not a stop
mid-write, and the file is left alone with an error naming the line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class RecordsError(ValueError):
    pass


def read_records(path: str | os.PathLike, required: tuple[str, ...] = ()) -> list[dict]:
    """The records of ``path`` in order ([] if there is none yet); each must have the ``required`` keys."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines(keepends=True)
    records, good_bytes = [], 0
    for n, raw in enumerate(lines):
        try:
            rec = json.loads(raw)
            if not all(k in rec for k in required):
                raise KeyError(required)
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            if n != len(lines) - 1:
                raise RecordsError(f"{path}, line {n + 1}: not a record of this file; left as it is") from None
            with path.open("r+b") as f:
                f.truncate(good_bytes)  # a line cut short by a stop
            break
        records.append(rec)
        good_bytes += len(raw)
    return records


def append_records(path: str | os.PathLike, records: list[dict]) -> None:
    with Path(path).open("a") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
