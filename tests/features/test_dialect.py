"""The dialect layer: the Spark rendering has none of DuckDB's spellings, and the split hash is plain md5.

These run without Spark (the engine-equality tests are in test_spark_equality.py).
"""

from __future__ import annotations

import hashlib
import re

import duckdb
import pytest

from deepcrossing.features.dialect import DUCKDB, SPARK
from deepcrossing.features.sql import SPLIT_BUCKETS, feature_sql, random_split_sql

GENRES = ["Action", "Children's", "Comedy", "Drama"]


@pytest.mark.parametrize("recent_n", [5, 10])
def test_spark_rendering_has_no_duckdb_only_spelling(recent_n):
    spark = feature_sql(GENRES, label_threshold=3.5, recent_n=recent_n, genre_bits=15, dialect=SPARK)
    duck = feature_sql(GENRES, label_threshold=3.5, recent_n=recent_n, genre_bits=15)
    # 1-based list indexing, list literals, DuckDB type names and functions
    for pattern in (r"\w\[\d+\]", r"\[\]", r"\bVARCHAR\b", r"\bINTEGER\b", r"\bEXCLUDE\b", r"read_parquet",
                    r"\bhash\(", r"\bCOPY\b", r"read_csv", r"TEMP TABLE", r"''"):
        assert not re.search(pattern, spark), pattern
    assert "try_element_at(genres, 3)" in spark and "'Children\\'s'" in spark
    assert "genres[3]" in duck and "'Children''s'" in duck
    # everything else is the same text: one definition, rendered twice
    assert len(spark.splitlines()) == len(duck.splitlines())


def test_split_bucket_is_md5_of_the_key_in_duckdb_as_in_python():
    keys = [(1, 1, 964982703), (610, 170875, 1493846415), (7, 3, 0), (123456789012, 5, 1)]
    con = duckdb.connect()
    bucket = DUCKDB.md5_bucket(["u", "m", "t", "5"], SPLIT_BUCKETS)
    for u, m, t in keys:
        got = con.execute(f"SELECT {bucket} FROM (SELECT {u}::BIGINT AS u, {m}::BIGINT AS m, {t}::BIGINT AS t)"
                          ).fetchone()[0]
        want = int(hashlib.md5(f"{u}:{m}:{t}:5".encode()).hexdigest()[:12], 16) % SPLIT_BUCKETS
        assert got == want
    # the cuts are integers: the same comparison in every engine
    assert "< 600000 THEN 'train'" in random_split_sql(5, (0.6, 0.2, 0.2), SPARK)
    assert "< 800000 THEN 'valid'" in random_split_sql(5, (0.6, 0.2, 0.2), SPARK)


def test_types_render_for_both_and_unknown_types_are_refused():
    assert SPARK.cast("x", "TINYINT") == "CAST(x AS TINYINT)" and SPARK.type("INTEGER") == "INT"
    assert SPARK.empty_list("VARCHAR[]") == "CAST(array() AS ARRAY<STRING>)"
    assert DUCKDB.empty_list("VARCHAR[]") == "CAST([] AS VARCHAR[])"
    with pytest.raises(ValueError, match="HUGEINT"):
        SPARK.type("HUGEINT")
    with pytest.raises(ValueError, match="1-based"):
        SPARK.list_get("genres", 0)
