"""ServingSettings: everything ``create_app`` needs, frozen and validated on construction."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated

from pydantic import Field

from deepcrossing.errors import InputError
from deepcrossing.strict import AS_PATH, StrictConfig, one_of, strict_config

Positive = Annotated[int, Field(ge=1)]


@strict_config
class ServingSettings(StrictConfig):
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
        user_cache: how many users' request-side partials each worker keeps per (model, store version): the
            scorer's user part, the recall's user vectors and, for the default merged recall, the merged
            candidate list; ~20 KB per user in all (ml-latest-small), so 100,000 users can take ~2 GB per
            worker. A version's records never change, so what is kept is exact. 0 turns the cache off (every
            request computes its recall and user part).
        workers: how many server processes (``uvicorn --workers``); each loads the model and the store
            snapshot. With more than one, ``control_dir`` coordinates them.
        control_dir: folder shared by the worker processes: ``/admin/reload`` writes the model folder to serve
            there and every worker adopts it (a restarted worker too), and the Prometheus counters of all
            workers are summed from files there. ``None`` for a single process.
        webroot: a folder of static pages served at ``/`` beside the API (e.g. a copy of SparrowRecSys's
            webroot, whose pages call the compat routes); ``None``: ``/`` leads to the service's own page.
        recall_dir: a recall folder (``deepcrossing train-recall``) whose channels the store versions were
            published with (``publish --recall``); a version built from another folder is not served.

    Example:
        >>> ServingSettings(Path("model"), "sqlite:///f.db").max_k
        100
    """

    model_dir: Annotated[Path, AS_PATH]
    store_url: str
    host: str = "127.0.0.1"
    admin_token: str | None = None
    max_k: Positive = 100
    max_candidates: Positive = 5000
    max_score_ids: Positive = 5000
    max_body_bytes: Positive = 256 * 1024
    poll_interval_s: Annotated[float, Field(gt=0.0)] = 0.5
    store_timeout_s: Annotated[float, Field(gt=0.0)] = 1.0
    backend: Annotated[str, one_of("torch", "onnx")] = "torch"
    threads: Positive = 1
    score_in_threads: bool = False
    user_cache: Annotated[int, Field(ge=0)] = 100_000
    workers: Positive = 1
    control_dir: Annotated[Path | None, AS_PATH] = None
    webroot: Annotated[Path | None, AS_PATH] = None
    recall_dir: Annotated[Path | None, AS_PATH] = None

    def to_json(self) -> str:
        """The settings as JSON (how ``deepcrossing serve --workers N`` hands them to each worker)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ServingSettings:
        """Inverse of :meth:`to_json`; unknown keys and wrong types are an error naming the key."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"the serving settings are not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @property
    def loopback(self) -> bool:
        """True when the service binds a loopback address only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
