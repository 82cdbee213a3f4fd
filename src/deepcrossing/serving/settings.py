"""ServingSettings: everything ``create_app`` needs, frozen and validated on construction."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, fields
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
        store_timeout_s: seconds a request waits for the store (and the Redis socket timeout); a store that
            does not answer in time costs that request a JSON 503, never the event loop.
        backend: ``torch`` or ``onnx`` (ONNX Runtime for the per-candidate part of the fast path).
        threads: torch intra-op threads for scoring.
        score_in_threads: run the ranking call in the thread pool instead of inline on the event loop. Off
            by default: a ranking call is ~1 ms of CPU, and handing it to a thread costs the event loop more
            than it saves (measured 465 vs 288 req/s at concurrency 4 in one process); to use several cores,
            run several worker processes.
        user_cache: how many users' request-side partials each worker keeps per (model, store version); a
            version's records never change, so cached partials are exact. 0 turns the cache off.
        workers: how many server processes (``uvicorn --workers``); each loads the model and the store
            snapshot. With more than one, ``control_dir`` coordinates them.
        control_dir: folder shared by the worker processes: ``/admin/reload`` writes the model folder to serve
            there and every worker adopts it (a restarted worker too), and the Prometheus counters of all
            workers are summed from files there. ``None`` for a single process.

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
    store_timeout_s: float = 1.0
    backend: str = "torch"
    threads: int = 1
    score_in_threads: bool = False
    user_cache: int = 100_000
    workers: int = 1
    control_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        if self.control_dir is not None:
            object.__setattr__(self, "control_dir", Path(self.control_dir))
        for key in ("max_k", "max_candidates", "max_score_ids", "max_body_bytes", "threads", "workers"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"ServingSettings.{key} must be a positive integer, not {value!r}", field=key)
        if isinstance(self.user_cache, bool) or not isinstance(self.user_cache, int) or self.user_cache < 0:
            raise InputError(f"ServingSettings.user_cache must be an integer >= 0, not {self.user_cache!r}",
                             field="user_cache")
        if self.backend not in ("torch", "onnx"):
            raise InputError(f"ServingSettings.backend must be torch or onnx, not {self.backend!r}",
                             field="backend")
        for key in ("poll_interval_s", "store_timeout_s"):
            if not getattr(self, key) > 0:
                raise InputError(f"ServingSettings.{key} must be > 0", field=key)

    def to_json(self) -> str:
        """The settings as JSON (how ``deepcrossing serve --workers N`` hands them to each worker)."""
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> ServingSettings:
        """Inverse of :meth:`to_json`; unknown keys are an error that names them."""
        data = json.loads(text)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"unknown serving settings: {', '.join(unknown)}", field=unknown[0])
        return cls(**data)

    @property
    def loopback(self) -> bool:
        """True when the service binds a loopback address only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
