"""Committing a report: report.json and index.html written into the staging directory beside figures/, every
figure the page names checked, then the directory committed to the output with index.html last."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from bertclf import storage

PAGE = "index.html"
NUMBERS = "report.json"


def _jsonable(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def commit_report(staging: Path, output: str, report: dict, page: str) -> None:
    """Write the page and its numbers next to figures/ and commit them to `output` (index.html last)."""
    staging.mkdir(parents=True, exist_ok=True)
    named = re.findall(r'<img src="figures/([^"]+)"', page)
    missing = [src for src in named if not (staging / "figures" / src).is_file()]
    if missing:
        raise RuntimeError(f"report figures were not written: {missing}")
    (staging / NUMBERS).write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    (staging / PAGE).write_text(page)
    storage.replace_dir(staging, output, marker=PAGE)
