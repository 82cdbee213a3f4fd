"""A short, human-readable summary of a normalized :class:`~deepcrossing.data.schema.Dataset`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb

from deepcrossing.data._duck import sql_str
from deepcrossing.data.schema import Dataset


def summary(ds: Dataset) -> dict[str, Any]:
    """Counts, time range and rating distribution of ``ds`` (one DuckDB pass over ratings.parquet).

    Example:
        >>> summary(ds)["ratings"]   # doctest: +SKIP
        100836
    """
    con = duckdb.connect(config={"threads": 2})
    con.execute("SET enable_progress_bar = false")
    try:
        r = sql_str(ds.ratings)
        n, users, items_rated, t0, t1, mean = con.execute(
            f"SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id), min(timestamp), max(timestamp), "
            f"avg(rating) FROM read_parquet({r})").fetchall()[0]
        n_items = con.execute(f"SELECT count(*) FROM read_parquet({sql_str(ds.items)})").fetchall()[0][0]
        dist = con.execute(f"SELECT rating, count(*) FROM read_parquet({r}) WHERE rating IS NOT NULL "
                           "GROUP BY rating ORDER BY rating").fetchall()
        labels = con.execute(f"SELECT label, count(*) FROM read_parquet({r}) WHERE label IS NOT NULL "
                             "GROUP BY label ORDER BY label").fetchall()
    finally:
        con.close()
    return {"name": ds.name, "ratings": int(n), "users": int(users), "items": int(n_items),
            "items_rated": int(items_rated), "time_min": t0, "time_max": t1, "rating_mean": mean,
            "rating_scale": ds.rating_scale, "ratings_by_value": {float(k): int(v) for k, v in dist},
            "labels": {int(k): int(v) for k, v in labels}, "skipped_rows": dict(ds.skipped_rows)}


def describe(ds: Dataset) -> str:
    """Multi-line text for ``deepcrossing data info``."""
    s = summary(ds)

    def day(t: int | None) -> str:
        if t is None:
            return "-"
        try:
            return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d")
        except (OverflowError, OSError, ValueError):  # readers keep times within +-1e11 s; a hand-made file may not
            return f"{t} (unix s)"

    lines = [f"dataset      {s['name']}",
             f"ratings      {s['ratings']:,}",
             f"users        {s['users']:,}",
             f"items        {s['items']:,} ({s['items_rated']:,} rated)",
             f"time         {day(s['time_min'])} .. {day(s['time_max'])}",
             f"rating scale {s['rating_scale']}"]
    if s["ratings_by_value"]:
        lines.append(f"rating mean  {s['rating_mean']:.3f}")
        peak = max(s["ratings_by_value"].values())
        for value, count in s["ratings_by_value"].items():
            lines.append(f"  {value:>4.1f} {count:>11,} {'#' * max(1, round(30 * count / peak))}")
    for label, count in s["labels"].items():
        lines.append(f"label {label}      {count:,}")
    for name, count in s["skipped_rows"].items():
        lines.append(f"skipped      {count:,} bad rows in {name}")
    return "\n".join(lines)
