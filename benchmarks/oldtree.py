"""A source tree of an earlier commit, for side-by-side runs: ``extract("853c4a9")`` -> a temp directory."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract(commit: str) -> Path:
    """``git archive`` of ``commit`` (this repository) unpacked into a new temp directory."""
    out = Path(tempfile.mkdtemp(prefix=f"llmaz-serverless-{commit[:7]}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out
