"""The records a run skipped (`config.data.on_bad_record="skip"`): `WORKDIR/skipped.csv`.

One row per skipped record and step, `step,ID,problem` (the problem names the shard and byte
offset), in the order training met them; every process's rows, written by process 0 as one
atomic file whenever the trainer logs. A resumed run first drops the rows after the checkpoint
it restored (`SkippedRecords(..., resume_step=)`), then meets the same records at the same
steps again, so the file ends as an uninterrupted run's. The trainer logs the number met since
the previous log line as `train/skipped_records`.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np

from hpa_jax import fileio
from hpa_jax.train.gather import gather_strings

SKIPPED_FILE = "skipped.csv"
COLUMNS = ("step", "ID", "problem")


class SkippedRecords:
    def __init__(self, workdir, *, enabled: bool, resume_step: int = 0):
        self.path = fileio.as_path(workdir) / SKIPPED_FILE
        self.enabled = enabled
        self.pending: list[str] = []  # this process's rows (JSON) since the last flush
        self.rows: list[list[str]] = []
        if enabled and self.path.exists():
            kept = [row for row in read_skipped(self.path) if int(row["step"]) <= resume_step]
            self.rows = [[row[c] for c in COLUMNS] for row in kept]
            self._write()

    def add(self, step: int, batch: dict) -> None:
        """Note the rows of this process's `batch` that the pipeline skipped."""
        for index in np.flatnonzero(np.asarray(batch["skipped"], bool)):
            row = [str(step), str(batch["id"][index]), str(batch["problem"][index])]
            self.pending.append(json.dumps(row))

    def flush(self) -> int:
        """Every process's rows since the last flush into skipped.csv (collective: every process
        calls it at the same steps); returns how many there were."""
        every = gather_strings(self.pending)
        self.pending = []
        if every and self.enabled:
            self.rows.extend(json.loads(row) for row in every)
            self._write()
        return len(every)

    def _write(self) -> None:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(self.rows)
        fileio.write_text(self.path, out.getvalue())


def read_skipped(path) -> list[dict]:
    """The rows of a skipped.csv as dicts (step, ID, problem)."""
    text = fileio.as_path(path).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))
