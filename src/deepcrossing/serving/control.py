"""Coordination of several server processes (``deepcrossing serve --workers N``) through one shared folder.

uvicorn runs the worker processes; they share nothing but this folder:

- ``model.json``: the model folder every worker should serve and a generation number. ``/admin/reload``
  (answered by whichever worker got the request) loads the model, swaps it in, then writes this file
  atomically; every other worker's poller sees the new generation and swaps too. A worker that uvicorn
  restarts reads it at start, so it serves the model the others serve, not the one on the command line.
- ``prometheus/``: prometheus_client's multiprocess files, so ``/metrics`` sums the counters of all workers
  whichever one answers the scrape.

Example:
    >>> import tempfile
    >>> control = Control(Path(tempfile.mkdtemp()))
    >>> control.read() is None
    True
    >>> generation = control.write_model(Path("/models/b"))
    >>> control.read() == (generation, Path("/models/b"))
    True
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from deepcrossing.atomic import write_text_atomic
from deepcrossing.errors import InputError

MODEL_FILE = "model.json"
PROMETHEUS_DIR = "prometheus"


class Control:
    """The shared folder of one multi-process service.

    Args:
        folder: created if missing; must not be shared by two services.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model_file = self.folder / MODEL_FILE

    @property
    def prometheus_dir(self) -> Path:
        """Where prometheus_client keeps each worker's metric files."""
        return self.folder / PROMETHEUS_DIR

    def write_model(self, model_dir: Path) -> int:
        """Ask every worker to serve ``model_dir``; returns the new generation (nanoseconds, increasing)."""
        previous = self.read()
        generation = max(time.time_ns(), (previous[0] + 1) if previous else 0)
        write_text_atomic(self.model_file, json.dumps({"model_dir": str(model_dir), "generation": generation}))
        return generation

    def read(self) -> tuple[int, Path] | None:
        """``(generation, model_dir)`` last written, or ``None`` when nothing was."""
        try:
            data = json.loads(self.model_file.read_text())
            return int(data["generation"]), Path(data["model_dir"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"unreadable control file ({exc}); delete it to serve the --model folder",
                             path=self.model_file) from exc
