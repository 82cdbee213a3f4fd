"""What a model folder is, without loading one: its file names, its format, and the one check that a folder
is a model folder written by ``deepcrossing train``.

Kept apart from :mod:`deepcrossing.training.artifact` (which needs PyTorch to load the weights) so that
commands that only need to *recognise* a model folder (``publish``, the CLI's flag checks) start fast.
"""

from __future__ import annotations

import json
from pathlib import Path

from deepcrossing.errors import InputError

FORMAT = "deepcrossing-model"
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


def require_model_dir(path: str | Path) -> Path:
    """``path`` if it is a model folder written by ``deepcrossing train`` (its manifest says so), else a one-line
    :class:`InputError` that says what the folder is instead (missing, a file, a samples folder, ...).

    The one "is this a model folder" check: the CLI, publishing and the service all call it.

    Example:
        >>> try:
        ...     require_model_dir("/nonexistent")
        ... except InputError as exc:
        ...     print(exc.message)
        no such folder; give a model folder written by `deepcrossing train`
    """
    path = Path(path)
    hint = "give a model folder written by `deepcrossing train`"
    if not path.exists():
        raise InputError(f"no such folder; {hint}", path=path)
    if not path.is_dir():
        raise InputError(f"is a file, not a folder; {hint}", path=path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InputError(f"not a model folder (no {MANIFEST}); {hint}", path=path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"not valid JSON ({str(exc)[:80]}); {hint}", path=manifest_path) from None
    kind = manifest.get("format") if isinstance(manifest, dict) else None
    if kind != FORMAT:
        what = "a samples folder from `deepcrossing prepare`" if isinstance(manifest, dict) and "splits" in manifest \
            else f"format {str(kind)[:40]!r}"
        raise InputError(f"not a model folder ({what}); {hint}", path=path)
    return path
