"""The run log, one home: the metrics rows a training run writes to ``metrics.csv`` and ``metrics.jsonl``
in its run folder (and to TensorBoard when installed), and the way to read them back
(:func:`read_log`: evaluation's learning curves, tests).

A row is ``{"step", "epoch", "split", "loss", ...}``; the JSON lines hold every key of a row, the CSV
the columns :data:`LOG_COLUMNS`. A resumed run drops the rows after its checkpoint's step
(:meth:`RunLog.truncate_after`); a fresh run removes an earlier run's files (:meth:`RunLog.clear`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from corticalrnn.atomic import write_text_atomic

CSV_NAME = "metrics.csv"
JSONL_NAME = "metrics.jsonl"
LOG_COLUMNS = ("step", "epoch", "split", "loss", "loss_hidden", "lr", "grad_norm", "windows_per_s",
               "elapsed_s")


class RunLog:
    """Metrics rows to ``metrics.csv`` and ``metrics.jsonl`` (and TensorBoard when installed)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.csv_path = run_dir / CSV_NAME
        self.jsonl_path = run_dir / JSONL_NAME
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def clear(self) -> None:
        """Remove the files of an earlier run in the same folder (a fresh start, not a resume)."""
        if not self.enabled:
            return
        self.csv_path.unlink(missing_ok=True)
        self.jsonl_path.unlink(missing_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run repeats those steps)."""
        if not self.enabled:
            return
        if self.jsonl_path.exists():
            keep = [r for r in _read_jsonl(self.jsonl_path) if r.get("step", 0) <= step]
            write_text_atomic(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in keep))
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            keep = [r for r in rows if int(r["step"]) <= step]
            write_text_atomic(self.csv_path, _csv_text(keep))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "split") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{row['split']}/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (empty when absent)."""
    path = Path(run_dir) / JSONL_NAME
    return _read_jsonl(path) if path.exists() else []


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
