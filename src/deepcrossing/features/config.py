"""FeatureConfig: what the Feature layer computes and how it splits, frozen and validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from deepcrossing.errors import InputError

SPLITS = ("time", "random")


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of :func:`deepcrossing.features.build_samples`.

    Args:
        label_threshold: a rating ``>=`` this is a positive (label 1); ignored for rows whose source gave an
            explicit 0/1 label.
        recent_n: length N of ``userRecentPositives`` (the last N positively rated movies), >= 5 so that
            ``userRatedMovie1..5`` can be filled.
        split: ``"time"`` (global timestamp quantiles; rows tied with a boundary go to the later split) or
            ``"random"`` (seeded hash per rating).
        fractions: (train, valid, test) shares, each >= 0, train > 0, summing to 1.
        seed: seed of the random split (unused by the time split).
        threads: DuckDB worker threads (does not change results).
        memory_limit: DuckDB memory limit, e.g. ``"4GB"``; beyond it DuckDB spills to a temp folder.

    Example:
        >>> FeatureConfig(split="random", fractions=(0.7, 0.15, 0.15), seed=7).recent_n
        10
    """

    label_threshold: float = 3.5
    recent_n: int = 10
    split: str = "time"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    threads: int = 2
    memory_limit: str = "4GB"

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> InputError:
            return InputError(f"FeatureConfig.{key}: {why}", field=key)

        if isinstance(self.label_threshold, bool) or not isinstance(self.label_threshold, (int, float)):
            raise bad("label_threshold", f"must be a number, not {self.label_threshold!r}")
        if not math.isfinite(self.label_threshold):
            raise bad("label_threshold", "must be finite")
        for key in ("recent_n", "seed", "threads"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(key, f"must be an integer, not {value!r}")
        if not 5 <= self.recent_n <= 1000:
            raise bad("recent_n", f"must be between 5 and 1000, not {self.recent_n}")
        if self.threads < 1:
            raise bad("threads", f"must be >= 1, not {self.threads}")
        if self.split not in SPLITS:
            raise bad("split", f"must be one of {', '.join(SPLITS)}, not {self.split!r}")
        fractions = tuple(self.fractions)
        if len(fractions) != 3 or any(
            isinstance(f, bool) or not isinstance(f, (int, float)) for f in fractions
        ):
            raise bad("fractions", f"must be three numbers (train, valid, test), not {self.fractions!r}")
        if any(f < 0 for f in fractions) or fractions[0] <= 0 or abs(sum(fractions) - 1.0) > 1e-9:
            raise bad("fractions", f"must be >= 0 with train > 0 and sum to 1, not {self.fractions!r}")
        object.__setattr__(self, "fractions", tuple(float(f) for f in fractions))
        object.__setattr__(self, "label_threshold", float(self.label_threshold))
        if not isinstance(self.memory_limit, str) or not self.memory_limit.strip():
            raise bad("memory_limit", f"must be a size such as '4GB', not {self.memory_limit!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (fractions as a list)."""
        out = dataclasses.asdict(self)
        out["fractions"] = list(self.fractions)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        """Strict inverse of :meth:`to_dict`: unknown keys are an error naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise InputError(f"unknown FeatureConfig key {key!r} (known: {', '.join(sorted(known))})",
                                 field=key)
        values = dict(data)
        if "fractions" in values and isinstance(values["fractions"], list):
            values["fractions"] = tuple(values["fractions"])
        return cls(**values)
