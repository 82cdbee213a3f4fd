"""The table of raw layouts the readers understand, and the detection of which one a path holds.

==================  =========================================================================================
CSV releases        ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m: ``ratings.csv`` (userId, movieId,
                    rating, timestamp), ``movies.csv`` (movieId, title, genres ``|``-separated), optional
                    ``links.csv`` (movieId, imdbId, tmdbId: read into the items table as text, leading zeros
                    kept) and ``tags.csv`` (checksummed, not read). Ratings 0.5..5.0.
``::`` releases     ml-1m, ml-10m: ``ratings.dat``, ``movies.dat`` (latin-1 in ml-1m), ``users.dat`` (ml-1m).
                    Ratings 1..5 in ml-1m (it has users.dat), 0.5..5.0 in ml-10m.
ml-100k             ``u.data`` (tab: user item rating timestamp), ``u.item`` (``|``, latin-1, 19 genre flags),
                    ``u.user``. Ratings 1..5.
your own logs       a CSV or Parquet file (or a folder holding exactly one) and a :class:`ColumnMapping`;
                    optionally an items file (CSV/Parquet: item id, optional title, genres, year).
==================  =========================================================================================

The three MovieLens rows are data (:data:`RELEASES`, one :class:`Release` each); adding a release layout is
adding a row. :func:`detect` turns a path into a :class:`Layout`: the files to scan and how to read them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from deepcrossing.data._duck import RawFile, excerpt, read_header
from deepcrossing.errors import InputError

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western")
MOVIELENS_SCALE = (0.5, 5.0)
STAR_SCALE = (1.0, 5.0)
USER_ID_NAMES = ("user_id", "userId")
USER_ATTRIBUTE_NAMES = ("gender", "age", "occupation", "zip")
"""The attribute columns a users file given with ``--users`` may have (any of them; missing ones are NULL)."""
ITEM_ID_NAMES = ("item_id", "movieId", "itemId", "movie_id", "item", "id")
RATING_NAMES = ("userId", "movieId", "rating", "timestamp")


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns of a person's own log file hold user, item, rating or label, and time.

    Args:
        user_col: user id column (integers).
        item_col: item id column (integers).
        time_col: unix seconds (integers) or ISO dates / datetimes (``2020-01-31``, ``2020-01-31T12:00:00Z``).
            Milliseconds (values of 1e11 and more) are refused with a message saying so.
        rating_col: numeric rating column; give this or ``label_col`` (or both).
        label_col: explicit 0/1 label column (label-only logs have rating NULL and rating_scale ``None``).
        rating_scale: (min, max) of valid ratings; ``None`` accepts any finite rating up to
            :data:`~deepcrossing.data.readers.MAX_ABS_RATING` and records the observed range.

    Example:
        >>> ColumnMapping(user_col="uid", item_col="sku", time_col="ts", label_col="clicked").columns
        ('uid', 'sku', 'clicked', 'ts')
    """

    user_col: str
    item_col: str
    time_col: str
    rating_col: str | None = None
    label_col: str | None = None
    rating_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for key in ("user_col", "item_col", "time_col"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{key} must be a non-empty column name, not {value!r}", field=key)
        for key in ("rating_col", "label_col"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InputError(f"{key} must be a column name or None, not {value!r}", field=key)
        if self.rating_col is None and self.label_col is None:
            raise InputError("give rating_col or label_col (or both)", field="rating_col")
        used = [c for c in (self.user_col, self.item_col, self.time_col, self.rating_col, self.label_col) if c]
        if len(set(used)) != len(used):
            raise InputError(f"the mapped columns must be distinct, got {used}", field="columns")
        if self.rating_scale is not None:
            lo, hi = self.rating_scale
            if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
                raise InputError(f"rating_scale must be (min, max) with min < max, not {self.rating_scale!r}",
                                 field="rating_scale")

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.user_col, self.item_col, self.rating_col, self.label_col, self.time_col)
                     if c)


MOVIELENS_CSV_MAPPING = ColumnMapping(user_col="userId", item_col="movieId", time_col="timestamp",
                                      rating_col="rating", rating_scale=MOVIELENS_SCALE)


@dataclass(frozen=True)
class FileLayout:
    """One file of a release: its name, and its column names when it has no header (else read from line 1).

    Args:
        name: file name inside the release folder.
        names: fixed column names of a headerless file; ``None``: the header gives them.
        delim: field separator.
        quote: quote character, ``""`` for none.
    """

    name: str
    names: tuple[str, ...] | None = None
    delim: str = ","
    quote: str = '"'

    def raw(self, root: Path, required: tuple[str, ...] = ()) -> RawFile:
        """How to scan ``root / name``; a headered file must hold the ``required`` columns."""
        if self.names is None:
            return read_columns(root / self.name, required, delim=self.delim)
        return RawFile(root / self.name, self.names, header=False, delim=self.delim, quote=self.quote)


@dataclass(frozen=True)
class Release:
    """A MovieLens release layout: a row of :data:`RELEASES`.

    Args:
        ratings: the ratings file (its name is the marker the layout is recognised by).
        items: the movies file; ``items_kind`` says how to read its columns (``csv``, ``dat``, ``100k``).
        users: the users file when the release may have one; ``users_kind``: ``dat`` or ``100k``.
        scale: the rating scale; ``scale_with_users`` overrides it when the users file exists (ml-1m).
        name: dataset name when the folder is not called ``ml-*``; ``name_with_users`` when it has users.
        links: the optional links file (movieId, imdbId, tmdbId), read when present beside the movies file.
        extra: files only checksummed (tags).
    """

    ratings: FileLayout
    items: FileLayout
    items_kind: str
    users: FileLayout | None = None
    users_kind: str = "dat"
    scale: tuple[float, float] = MOVIELENS_SCALE
    scale_with_users: tuple[float, float] | None = None
    name: str = "movielens"
    name_with_users: str | None = None
    extra: tuple[str, ...] = ()
    links: FileLayout | None = None
    folder_name: bool = True       # a folder called ml-* names the dataset


_DAT = {"delim": "::", "quote": ""}
_PIPE = {"delim": "|", "quote": ""}
RELEASES: tuple[Release, ...] = (
    Release(ratings=FileLayout("ratings.csv"), items=FileLayout("movies.csv"), items_kind="csv",
            extra=("tags.csv",), links=FileLayout("links.csv")),
    Release(ratings=FileLayout("ratings.dat", RATING_NAMES, **_DAT),
            items=FileLayout("movies.dat", ("movieId", "title", "genres"), **_DAT), items_kind="dat",
            users=FileLayout("users.dat", ("userId", "gender", "age", "occupation", "zip"), **_DAT),
            users_kind="dat", scale_with_users=STAR_SCALE, name="ml-10m", name_with_users="ml-1m",
            extra=("tags.dat",)),
    Release(ratings=FileLayout("u.data", RATING_NAMES, delim="\t", quote=""),
            items=FileLayout("u.item", ("movieId", "title", "release", "video", "url")
                             + tuple(f"g{i}" for i in range(19)), **_PIPE), items_kind="100k",
            users=FileLayout("u.user", ("userId", "age", "gender", "occupation", "zip"), **_PIPE),
            users_kind="100k", scale=STAR_SCALE, name="ml-100k", folder_name=False),
)


@dataclass
class Layout:
    """What :func:`detect` found: the files to scan, how, and what their columns mean."""

    name: str
    ratings: RawFile
    mapping: ColumnMapping
    time_iso: bool = False
    items: RawFile | None = None
    items_kind: str = "csv"          # csv | dat | 100k | custom:<id column>
    users: RawFile | None = None
    users_kind: str = "dat"          # dat | 100k | custom:<id column>
    links: RawFile | None = None     # movieId, imdbId, tmdbId (MovieLens CSV releases that have links.csv)
    checksum_only: list[Path] = field(default_factory=list)


# parsed by the CSV scan itself (fast); DOUBLE, not BIGINT, for the integers too: DuckDB's BIGINT parse rounds
# "3.5" to 4, while a DOUBLE keeps it, and the readers refuse a value that is not a whole number
_ML_TYPES = {"userId": "DOUBLE", "movieId": "DOUBLE", "rating": "DOUBLE", "timestamp": "DOUBLE"}


def read_columns(path: Path, required: tuple[str, ...] | list[str], *, delim: str | None = None) -> RawFile:
    """How to scan a headered CSV or a Parquet file, after checking that it has the ``required`` columns."""
    if not path.exists():
        raise InputError("file not found", path=path)
    if not path.is_file():
        raise InputError("is a folder, not a file" if path.is_dir() else "is not a regular file (a device, pipe or "
                         "socket); give a CSV or Parquet file", path=path)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise InputError(f"not a readable Parquet file ({excerpt(str(exc))})", path=path) from None
        raw = RawFile(path=path, names=tuple(names))
    else:
        header, delim = read_header(path, delim)
        raw = RawFile(path=path, names=tuple(header), delim=delim)
    for col in required:
        if col not in raw.names:
            shown = excerpt(", ".join(raw.names), 200)
            raise InputError(f"missing column {excerpt(col)} (columns are: {shown})", path=path, line=1,
                             field=col)
    return raw


def _single_data_file(folder: Path) -> Path | None:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in (".csv", ".parquet", ".pq", ".tsv"))
    return files[0] if len(files) == 1 else None


def _find_root(folder: Path) -> Path:
    """The folder itself, or its single sub-folder when it only wraps one (an unzipped release)."""
    markers = [r.ratings.name for r in RELEASES]
    if any((folder / m).exists() for m in markers):
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subs) == 1 and any((subs[0] / m).exists() for m in markers):
        return subs[0]
    return folder


def _release_layout(release: Release, root: Path) -> Layout:
    has_users = release.users is not None and (root / release.users.name).exists()
    name = release.name_with_users if has_users and release.name_with_users else release.name
    if release.folder_name and root.name.startswith("ml-"):
        name = root.name
    if (root / "synth.json").exists():
        name = "synthetic"
    scale = release.scale_with_users if has_users and release.scale_with_users else release.scale
    ratings = release.ratings.raw(root, RATING_NAMES)
    ratings = dataclasses.replace(ratings, types=tuple(_ML_TYPES.get(n, "VARCHAR") for n in ratings.names))
    return Layout(
        name=name, ratings=ratings,
        mapping=dataclasses.replace(MOVIELENS_CSV_MAPPING, rating_scale=scale),
        items=release.items.raw(root, ("movieId", "title", "genres")), items_kind=release.items_kind,
        users=release.users.raw(root) if has_users and release.users is not None else None,
        users_kind=release.users_kind,
        links=release.links.raw(root, ("movieId", "imdbId", "tmdbId"))
        if release.links is not None and (root / release.links.name).exists() else None,
        checksum_only=[root / n for n in release.extra if (root / n).exists()])


def _with_users(layout: Layout, users_path: Path | None) -> Layout:
    """``layout`` with a person's users file (``prepare --users``): a user id column (the log's user column,
    ``user_id`` or ``userId``) and some of :data:`USER_ATTRIBUTE_NAMES`; any other column is refused."""
    if users_path is None:
        return layout
    if layout.users is not None:
        raise InputError(f"--users is for logs without a users table; this release has its own "
                         f"{layout.users.path.name}", path=users_path, field="users")
    names = read_columns(users_path, ()).names
    id_col = next((c for c in (layout.mapping.user_col, *USER_ID_NAMES) if c in names), None)
    if id_col is None:
        raise InputError(f"the users file needs a user id column ({layout.mapping.user_col} or user_id or userId)",
                         path=users_path, line=1, field=layout.mapping.user_col)
    other = [c for c in names if c != id_col and c not in USER_ATTRIBUTE_NAMES]
    if other:
        raise InputError(f"column {excerpt(other[0])} is not a user attribute: a users file holds the user id and "
                         f"some of {', '.join(USER_ATTRIBUTE_NAMES)} (static, as of the export; drop the others)",
                         path=users_path, line=1, field=other[0])
    if len(names) < 2:
        raise InputError(f"the users file has no attribute column (any of {', '.join(USER_ATTRIBUTE_NAMES)})",
                         path=users_path, line=1)
    layout.users = read_columns(users_path, [id_col])
    layout.users_kind = "custom:" + id_col
    return layout


def detect(path: Path, columns: ColumnMapping | None, items_path: Path | None,
           users_path: Path | None = None) -> Layout:
    """The layout of ``path``: a MovieLens release folder (a row of :data:`RELEASES`), or a person's log file.

    Raises:
        InputError: the path is missing, no layout fits, a needed file or column is missing, ``items_path``
            is given for a release (which has its own movies file) or does not exist, or ``users_path`` is given
            for a release with its own users file or has other columns than a user id and the attributes.
    """
    if users_path is not None and not users_path.is_file():
        raise InputError("no such users file" if not users_path.exists() else "the users file is a folder",
                         path=users_path, field="users")
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if items_path is not None and not items_path.is_file():
        raise InputError("no such items file" if not items_path.exists() else "the items file is a folder",
                         path=items_path, field="items")
    if path.is_dir():
        root = _find_root(path)
        if columns is None:
            for release in RELEASES:
                if (root / release.ratings.name).exists():
                    if items_path is not None:
                        raise InputError(f"--items is for your own logs; this release has its own "
                                         f"{release.items.name}", path=items_path, field="items")
                    return _with_users(_release_layout(release, root), users_path)
        single = _single_data_file(root)
        if single is None:
            raise InputError("cannot tell the layout: expected ratings.csv + movies.csv, ratings.dat + movies.dat, "
                             "u.data + u.item, or exactly one CSV/Parquet log file with a column mapping",
                             path=path)
        path = single
    mapping = columns or MOVIELENS_CSV_MAPPING
    layout = Layout(name="custom", ratings=read_columns(path, mapping.columns), mapping=mapping, time_iso=True)
    if items_path is not None:
        names = read_columns(items_path, ()).names
        id_col = next((c for c in (mapping.item_col,) + ITEM_ID_NAMES if c in names), None)
        if id_col is None:
            raise InputError(f"the items file needs an item id column ({mapping.item_col} or item_id or movieId)",
                             path=items_path, line=1, field=mapping.item_col)
        layout.items = read_columns(items_path, [id_col])
        layout.items_kind = "custom:" + id_col
    return _with_users(layout, users_path)
