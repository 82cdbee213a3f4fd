"""ServingSettings: everything ``create_app`` needs, frozen and validated on construction."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from deepcrossing.errors import InputError


@dataclass(frozen=True)
class ServingSettings:
    """Settings of the ranking service.

    Args:
        model_dir: the model folder (``model.safetensors`` + ``manifest.json``).
        store_url: ``sqlite:///path.db`` or ``redis://host:port/db``.
        host: the address the server binds (only used to decide whether /admin needs a token).
        admin_token: bearer token for ``/admin/*``; when ``None`` admin calls are allowed only on a loopback
            host.
        max_k: largest ``k`` a request may ask for.
        max_candidates: largest candidate count a request may ask for.
        max_score_ids: largest number of movie ids in one ``POST /score``.
        max_body_bytes: largest request body accepted (413 beyond).
        poll_interval_s: how often the service checks the store for a newly published version.
        backend: ``torch`` or ``onnx`` (ONNX Runtime for the per-candidate part of the fast path).
        threads: torch intra-op threads for scoring.
        score_in_threads: run the ranking call in the thread pool (torch releases the GIL in its kernels, so
            concurrent requests use more than one core) instead of inline on the event loop.

    Example:
        >>> ServingSettings(Path("model"), "sqlite:///f.db").max_k
        100
    """

    model_dir: Path
    store_url: str
    host: str = "127.0.0.1"
    admin_token: str | None = None
    max_k: int = 100
    max_candidates: int = 5000
    max_score_ids: int = 5000
    max_body_bytes: int = 256 * 1024
    poll_interval_s: float = 0.5
    backend: str = "torch"
    threads: int = 1
    score_in_threads: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        for key in ("max_k", "max_candidates", "max_score_ids", "max_body_bytes", "threads"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"ServingSettings.{key} must be a positive integer, not {value!r}", field=key)
        if self.backend not in ("torch", "onnx"):
            raise InputError(f"ServingSettings.backend must be torch or onnx, not {self.backend!r}",
                             field="backend")
        if not self.poll_interval_s > 0:
            raise InputError("ServingSettings.poll_interval_s must be > 0", field="poll_interval_s")

    @property
    def loopback(self) -> bool:
        """True when the service binds a loopback address only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
