"""Results rows -> files (written atomically) and a console table."""

from __future__ import annotations

import csv
import io
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mia.metrics import ATTACK_METRIC_KEYS

ATTACK_COLUMNS = (
    "attack",
    "nonmember_set",
    "delta",
    *ATTACK_METRIC_KEYS,
    "calibration",
    "n_members",
    "n_nonmembers",
    "label_source",
)
MODEL_COLUMNS = (
    "role",
    "calibration",
    "calibrated",
    "train_acc",
    "test_acc",
    "ece",
    "overconfidence_error",
    "nll",
    "mean_max_score",
    "calibration_params",
)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write rows with exactly ``columns`` (missing values empty) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    write_text_atomic(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def set_label(row: dict[str, Any]) -> str:
    """``scaled`` sets carry their delta in their label: ``scaled_255``."""
    delta = row.get("delta")
    return (
        row["nonmember_set"] if delta in (None, "") else f"{row['nonmember_set']}_{float(delta):g}"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table of ``columns``."""
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def write_npz_atomic(path: Path, arrays: dict[str, Any]) -> None:
    """Save named arrays with ``np.savez`` via a temporary file and a rename (no pickles)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)
