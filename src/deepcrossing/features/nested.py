"""The columns built from the flat query result with vectorized Arrow/numpy code, the same for every engine.

:func:`assemble` turns the flat state columns of :func:`~deepcrossing.features.sql.feature_sql` into the
nested user-history columns (:data:`~deepcrossing.features.sql.NESTED_COLUMNS`) and the user x movie genre
cosine (:func:`genre_cosine`, from the same genre counts): DuckDB's and Spark's rows go through it alike.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from deepcrossing.features.columns import SAMPLE_COLUMNS
from deepcrossing.features.pair import cosine_of, genre_occurrences
from deepcrossing.features.history import counter_packs


def genre_cosine(counts: np.ndarray, movie_genres: pa.Array, names: pa.Array) -> pa.Array:
    """Cosine of each row's genre counts with its movie's 0/1 genre vector: ``dot / (sqrt(sum c^2) * sqrt(k))``.

    Args:
        counts: (B, G) int64 genre counts in vocabulary order (``names``).
        movie_genres: (B,) ``list<string>``: each row's movie genres (duplicates count once; a genre
            outside ``names`` is ignored).
        names: (G,) the genre vocabulary.

    Returns:
        (B,) float64, NULL where the counts or the movie's genres are all zero.

    Example:
        >>> import numpy as np, pyarrow as pa
        >>> genre_cosine(np.array([[3, 4], [0, 0]]), pa.array([["B"], ["A"]]), pa.array(["A", "B"])).to_pylist()
        [0.8, None]
    """
    onehot = (genre_occurrences(movie_genres, names) > 0).astype(np.int64)
    return cosine_of((counts * onehot).sum(axis=1), (counts * counts).sum(axis=1), onehot.sum(axis=1))


def assemble(batch: pa.RecordBatch | pa.Table, genres: list[str], recent_n: int,
             genre_bits: int = 31) -> pa.RecordBatch | pa.Table:
    """Build :data:`NESTED_COLUMNS` from the flat state columns of :func:`feature_sql`; vectorized, no row loop.

    Args:
        batch: a record batch or table from :func:`feature_sql` (B rows; any extra columns such as ``split``
            or ``is_probe`` are kept after the sample columns).
        genres: the sorted genre vocabulary given to :func:`feature_sql` (G names).
        recent_n: the N given to :func:`feature_sql`.
        genre_bits: the ``genre_bits`` given to :func:`feature_sql`.

    Returns:
        The rows with the :data:`SAMPLE_COLUMNS` (those in ``batch`` and the built ones) in order
        (``userRecentPositives`` ``list<int64>`` of ``min(_npos, N)`` items, ``userGenre1..5`` the top genres
        by count desc then name, ``NULL`` past the genres seen, ``userGenreCounts`` ``map<string, int64>`` of
        the genres seen, sorted by name), then the extra columns; the ``_npos``/``_rp*``/``_gp*`` helpers are dropped.

    Example:
        >>> import pyarrow as pa
        >>> t = pa.table({"_npos": [2], **{f"_rp{j}": pa.array([[7, 3, None][j]], pa.int64()) for j in range(3)},
        ...               "_gp0": [1 + (2 << 31)]})
        >>> out = assemble(t, ["Action", "Drama"], 3)
        >>> out.column("userRecentPositives").to_pylist(), out.column("userGenre1").to_pylist()
        ([[7, 3]], ['Drama'])
        >>> out.column("userGenreCounts").to_pylist()
        [[('Action', 1), ('Drama', 2)]]
    """
    is_table = isinstance(batch, pa.Table)
    if is_table:
        batch = batch.combine_chunks()

    def col(name: str) -> pa.Array:
        c = batch.column(name)
        return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

    rows = batch.num_rows

    def raw(name: str) -> np.ndarray:
        # the int64 values as a zero-copy view, ignoring validity: _npos and _gp* are never NULL, and of the
        # lags only the first k (never NULL) are read
        c = col(name)
        if c.type != pa.int64():
            c = c.cast(pa.int64())
        if rows == 0 or c.buffers()[1] is None:
            return np.zeros(rows, np.int64)
        return np.frombuffer(c.buffers()[1], dtype=np.int64)[c.offset:c.offset + rows]

    n_genres = len(genres)
    k = np.minimum(raw("_npos"), recent_n)
    # userRecentPositives: the first k of the N lags (row-major order keeps each row's items together)
    lags = np.stack([raw(f"_rp{j}") for j in range(recent_n)], axis=1)
    keep = np.arange(recent_n)[None, :] < k[:, None]
    offsets = np.zeros(rows + 1, np.int32)
    np.cumsum(k, out=offsets[1:])
    recent = pa.ListArray.from_arrays(pa.array(offsets), pa.array(lags[keep], pa.int64()))
    # genre counts (B, G) in vocabulary order (sorted names)
    counts = np.zeros((rows, n_genres), np.int64)
    mask = (1 << genre_bits) - 1
    for p, pack in enumerate(counter_packs(n_genres, genre_bits)):
        # a pack holds the consecutive genres pack[0].. at bit offsets genre_bits * slot: one block write
        shifts = genre_bits * np.arange(len(pack), dtype=np.int64)
        counts[:, pack[0]:pack[-1] + 1] = (raw(f"_gp{p}")[:, None] >> shifts[None, :]) & mask
    names = pa.array(genres, pa.string())
    seen = counts > 0
    map_offsets = np.zeros(rows + 1, np.int32)
    np.cumsum(seen.sum(axis=1), out=map_offsets[1:])
    cells = np.flatnonzero(seen)  # row-major (row, genre) cells: 1-D is cheaper than np.nonzero's two arrays
    genre_map = pa.MapArray.from_arrays(pa.array(map_offsets), names.take(pa.array(cells % max(n_genres, 1))),
                                        pa.array(counts.ravel()[cells], pa.int64()))
    # top genres: encode count * G + (G - 1 - index) so that one descending integer sort gives count desc,
    # then name asc; decode the index back with %
    width = max(n_genres, 1)
    encoded = counts * width + (width - 1 - np.arange(n_genres))[None, :]
    top = np.sort(encoded, axis=1)[:, :-6:-1] if n_genres else np.zeros((rows, 0), np.int64)
    tops = []
    for i in range(5):
        if i < top.shape[1]:
            valid = top[:, i] >= width
            index = pa.array(width - 1 - top[:, i] % width, pa.int64(), mask=~valid)
            tops.append(names.take(index))
        else:
            tops.append(pa.nulls(rows, pa.string()))
    built = {"userRecentPositives": recent, "userGenreCounts": genre_map,
             **{f"userGenre{i + 1}": tops[i] for i in range(5)}}
    if "movieGenres" in batch.schema.names:
        built["userGenreCosine"] = genre_cosine(counts, col("movieGenres"), names)
    helpers = {"_npos", *(f"_rp{j}" for j in range(recent_n)),
               *(f"_gp{p}" for p in range(len(counter_packs(n_genres, genre_bits))))}
    extra = [c for c in batch.schema.names if c not in SAMPLE_COLUMNS and c not in helpers]
    arrays, fields = [], []
    for name in list(SAMPLE_COLUMNS) + extra:
        if name in built:
            arrays.append(built[name])
            fields.append(pa.field(name, built[name].type))
        elif name in batch.schema.names:
            arrays.append(col(name))
            fields.append(batch.schema.field(name))
    if is_table:
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
