r"""The SQL dialect layer: the few spellings that differ between DuckDB and Spark SQL, and nothing else.

Every feature is written once (:mod:`deepcrossing.features.sql`, the columns in
:mod:`deepcrossing.features.columns`) against a :class:`Dialect`; :data:`DUCKDB` and :data:`SPARK` render it.
The differences it covers:

* types: ``VARCHAR`` / ``INTEGER`` / ``T[]`` / ``MAP(K, V)`` (DuckDB) are ``STRING`` / ``INT`` / ``ARRAY<T>`` /
  ``MAP<K, V>`` in Spark;
* list indexing: DuckDB's ``l[i]`` is 1-based and NULL past the end; Spark's ``l[i]`` is 0-based and, with
  ANSI mode (Spark 4's default), an error past the end, so Spark uses ``try_element_at(l, i)`` (1-based, NULL);
* empty list literals, string literals (Spark reads ``\`` as an escape), ``UNNEST`` vs ``explode``, a range
  of integers (``range(a, b)``: column ``range`` in DuckDB, ``id`` in Spark);
* hashing: DuckDB's ``hash()`` and Spark's ``hash()`` / ``xxhash64()`` differ, so the random split hashes
  with ``md5`` of a text key (the same in both engines) and reads its first 12 hex digits as an integer;
* the k-th smallest value (the time split's boundaries): ``LIMIT 1 OFFSET k`` in DuckDB, a running count in
  Spark (an OFFSET collects k rows into one task there);
* views: ``CREATE VIEW`` vs ``CREATE OR REPLACE TEMPORARY VIEW`` (DuckDB's ``COPY``, ``read_csv`` and temp
  tables are not used by the shared SQL at all).

Example:
    >>> DUCKDB.type("VARCHAR[]"), SPARK.type("VARCHAR[]"), SPARK.type("MAP(VARCHAR, BIGINT)")
    ('VARCHAR[]', 'ARRAY<STRING>', 'MAP<STRING, BIGINT>')
    >>> DUCKDB.list_get("genres", 1), SPARK.list_get("genres", 1)
    ('genres[1]', 'try_element_at(genres, 1)')
    >>> print(SPARK.str_lit("it's"), DUCKDB.str_lit("it's"))
    'it\'s' 'it''s'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DialectName = Literal["duckdb", "spark"]

_SPARK_SCALARS = {"VARCHAR": "STRING", "INTEGER": "INT", "TINYINT": "TINYINT", "BIGINT": "BIGINT",
                  "DOUBLE": "DOUBLE", "BOOLEAN": "BOOLEAN"}


@dataclass(frozen=True)
class Dialect:
    """How one engine spells the constructs the feature SQL needs.

    Attributes:
        name: ``"duckdb"`` or ``"spark"``.
    """

    name: DialectName

    def type(self, duck_type: str) -> str:
        """The engine's name of a type given in DuckDB spelling (:data:`~deepcrossing.features.columns.COLUMNS`).

        Raises:
            ValueError: for a type the layer does not know (add it here, once, for both engines).
        """
        t = duck_type.strip().upper()
        if self.name == "duckdb":
            return t
        if t.endswith("[]"):
            return f"ARRAY<{self.type(t[:-2])}>"
        if t.startswith("MAP(") and t.endswith(")"):
            key, value = (part.strip() for part in t[4:-1].split(",", 1))
            return f"MAP<{self.type(key)}, {self.type(value)}>"
        if t not in _SPARK_SCALARS:
            raise ValueError(f"the dialect layer has no Spark spelling for type {duck_type!r}")
        return _SPARK_SCALARS[t]

    def cast(self, expr: str, duck_type: str) -> str:
        """``CAST(expr AS type)`` in the engine's type spelling."""
        return f"CAST({expr} AS {self.type(duck_type)})"

    def int_div(self, a: str, b: int) -> str:
        """Integer division of a non-negative BIGINT by a positive integer (exact; ``/`` gives a DOUBLE).

        Example:
            >>> DUCKDB.int_div("x", 8), SPARK.int_div("x", 8)
            ('x // 8', 'x div 8')
        """
        return f"{a} // {int(b)}" if self.name == "duckdb" else f"{a} div {int(b)}"

    def list_get(self, expr: str, index: int) -> str:
        """Element ``index`` (1-based) of a list, NULL when the list is shorter (never an error)."""
        if index < 1:
            raise ValueError(f"list indexes are 1-based, not {index}")
        return f"{expr}[{index}]" if self.name == "duckdb" else f"try_element_at({expr}, {index})"

    def empty_list(self, duck_type: str) -> str:
        """A typed empty list, e.g. ``empty_list("VARCHAR[]")``."""
        return f"CAST([] AS {duck_type})" if self.name == "duckdb" else f"CAST(array() AS {self.type(duck_type)})"

    def str_lit(self, value: str) -> str:
        """A string literal (Spark SQL treats a backslash as an escape character, DuckDB does not)."""
        if self.name == "duckdb":
            return "'" + value.replace("'", "''") + "'"
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def unnest(self, expr: str) -> str:
        """One row per element of a list column (in a SELECT list)."""
        return f"UNNEST({expr})" if self.name == "duckdb" else f"explode({expr})"

    def integers(self, lo: int, hi: int, name: str) -> str:
        """A one-column relation (``name`` BIGINT) of the integers ``lo .. hi - 1``, in parentheses.

        Example:
            >>> print(DUCKDB.integers(0, 3, "o"), SPARK.integers(0, 3, "o"))
            (SELECT CAST(range AS BIGINT) AS o FROM range(0, 3)) (SELECT id AS o FROM range(0, 3))
        """
        if self.name == "duckdb":
            return f"(SELECT CAST(range AS BIGINT) AS {name} FROM range({int(lo)}, {int(hi)}))"
        return f"(SELECT id AS {name} FROM range({int(lo)}, {int(hi)}))"

    def md5_bucket(self, parts: list[str], buckets: int) -> str:
        """An integer in ``[0, buckets)`` from md5 of the parts joined by ``:``, identical in every engine.

        The parts are cast to text (integers print the same in both engines); the first 12 hex digits of the
        md5 (48 bits) are read as an integer and taken modulo ``buckets``.
        """
        key = "concat_ws(':', " + ", ".join(self.cast(p, "VARCHAR") for p in parts) + ")"
        head = f"substr(md5({key}), 1, 12)"
        number = (f"CAST('0x' || {head} AS BIGINT)" if self.name == "duckdb"
                  else f"CAST(conv({head}, 16, 10) AS BIGINT)")
        return f"({number} % {int(buckets)})"

    def kth_smallest(self, column: str, relation: str, ks: list[int]) -> str:
        """A query of one row: for each k of ``ks``, ``column`` of row k (0-based) of ``relation`` in ``column`` order.

        DuckDB: one ``ORDER BY ... LIMIT 1 OFFSET k`` per k (a top-k heap; the fastest there). Spark would
        gather the k rows into one task for an OFFSET, so it counts the rows per distinct value once and takes,
        for each k, the first value whose running count exceeds k.

        Example:
            >>> print(DUCKDB.kth_smallest("t", "r", [3]))
            SELECT (SELECT t FROM r ORDER BY t LIMIT 1 OFFSET 3)
        """
        if self.name == "duckdb":
            return "SELECT " + ", ".join(f"(SELECT {column} FROM {relation} ORDER BY {column} LIMIT 1 OFFSET {int(k)})"
                                         for k in ks)
        return ("SELECT " + ", ".join(f"MIN(CASE WHEN cum > {int(k)} THEN {column} END)" for k in ks)
                + f" FROM (SELECT {column}, SUM(n) OVER (ORDER BY {column} ROWS BETWEEN UNBOUNDED PRECEDING AND "
                f"CURRENT ROW) AS cum FROM (SELECT {column}, COUNT(*) AS n FROM {relation} GROUP BY {column}) g) c")

    def text_prefix(self, expr: str, n: int) -> str:
        """The first ``n`` characters of a text, surrounding blanks trimmed; NULL when NULL or blank.

        Example:
            >>> print(DUCKDB.text_prefix("zip", 3))
            NULLIF(substring(trim(zip), 1, 3), '')
        """
        if n < 1:
            raise ValueError(f"a prefix has at least 1 character, not {n}")
        # the same spelling in both engines (characters, not bytes, in both); kept here with the others
        return f"NULLIF(substring(trim({expr}), 1, {int(n)}), '')"

    def create_view(self, name: str, select: str) -> str:
        """A statement that (re)defines view ``name`` for this connection / session."""
        if self.name == "duckdb":
            return f"CREATE OR REPLACE VIEW {name} AS {select}"
        return f"CREATE OR REPLACE TEMPORARY VIEW {name} AS {select}"


DUCKDB = Dialect("duckdb")
SPARK = Dialect("spark")
