"""The authors' released format (BEAR / MSL repositories), read and written.

A folder holds `id2name4Rec.json` (item id -> title), `train.csv` (and the paper's 10,000-row
sample `train_10000.csv`), optionally `valid.csv`, and `test.csv`. CSV columns are
`user_id,item_ids,timestamp`; `item_ids` is a list literal whose last element is the target.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
from pathlib import Path

from bearrec.atomic import atomic_directory
from bearrec.data.catalogue import Catalogue, Dataset, Example
from bearrec.errors import DataError

TITLES_FILE = "id2name4Rec.json"
COLUMNS = ("user_id", "item_ids", "timestamp")


def read_text(path: Path) -> str:
    """Read a UTF-8 file; undecodable bytes are an error naming the row."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        row = raw[: exc.start].count(b"\n") + 1
        raise DataError(path, f"not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})", row=row) from None


def read_titles(path: Path) -> dict[int, str]:
    """`id2name4Rec.json`: a JSON object of item id -> title. Duplicate ids are an error."""
    text = read_text(path)
    if not text.strip():
        raise DataError(path, "empty file")

    def no_duplicates(pairs):
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                row = _line_of_key(text, key, occurrence=2)
                raise DataError(path, f"duplicate item id {key!r}", row=row, field="item_id")
            seen[key] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc.msg}", row=exc.lineno) from None
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object mapping item id to title")
    titles: dict[int, str] = {}
    for key, title in data.items():
        row = _line_of_key(text, key)
        try:
            item_id = int(key)
        except ValueError:
            raise DataError(path, f"item id {key!r} is not an integer", row=row, field="item_id") from None
        if item_id in titles:
            raise DataError(path, f"duplicate item id {key!r} (same as {item_id})", row=row, field="item_id")
        if not isinstance(title, str):
            raise DataError(path, f"title of item {key} is {type(title).__name__}, not a string", row=row, field="title")
        titles[item_id] = title
    return titles


def _line_of_key(text: str, key: str, occurrence: int = 1) -> int | None:
    needle, start = json.dumps(key) + ":", 0
    for _ in range(occurrence):
        pos = text.find(needle, start)
        if pos < 0:
            needle = json.dumps(key)
            pos = text.find(needle, start)
            if pos < 0:
                return None
        start = pos + 1
    return text.count("\n", 0, start - 1) + 1


def csv_rows(text: str, path: Path):
    """(header, iterator of (line, row)) of a CSV text; a malformed line (e.g. a field over the csv
    module's size limit) is an error naming the file and row, not a csv.Error traceback."""
    reader = csv.reader(io.StringIO(text, newline=""))

    def rows():
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(path, f"malformed CSV: {exc}", row=reader.line_num) from None
            yield reader.line_num, row

    it = rows()
    _, header = next(it)
    return [h.strip() for h in header], it


def _parse_ids(text: str):
    try:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return ast.literal_eval(text)
    except (RecursionError, MemoryError):
        raise ValueError("nested too deeply") from None


def read_examples(path: Path, known_items: set[int] | dict, allow_empty: bool = False) -> list[Example]:
    """Read one split CSV. Every malformed row is an error naming the file, row and field."""
    text = read_text(path)
    if not text.strip():
        raise DataError(path, "empty file (expected a header user_id,item_ids,timestamp)")
    header, rows = csv_rows(text, path)
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; header is {','.join(header)}", row=1)
    col = {c: header.index(c) for c in COLUMNS}
    known = set(known_items)
    examples = []
    for line, row in rows:
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(path, f"expected {len(header)} fields, got {len(row)} (truncated row?)", row=line)
        user_id = row[col["user_id"]].strip()
        if not user_id:
            raise DataError(path, "empty user id", row=line, field="user_id")
        try:
            ids = _parse_ids(row[col["item_ids"]])
        except (ValueError, SyntaxError):
            raise DataError(path, f"cannot parse {row[col['item_ids']][:80]!r} as a list of item ids", row=line,
                            field="item_ids") from None
        if not isinstance(ids, list) or not set(map(type, ids)) <= {int}:  # bool is not int here
            raise DataError(path, f"expected a list of integer item ids, got {row[col['item_ids']]!r}", row=line, field="item_ids")
        if len(ids) < 2:
            raise DataError(path, f"needs at least one history item and a target, got {ids}", row=line, field="item_ids")
        if not known.issuperset(ids):
            unknown = next(i for i in ids if i not in known)
            raise DataError(path, f"unknown item id {unknown} (not in {TITLES_FILE})", row=line, field="item_ids")
        try:
            ts = float(row[col["timestamp"]])
            if not math.isfinite(ts):
                raise ValueError
        except ValueError:
            raise DataError(path, f"timestamp {row[col['timestamp']]!r} is not a number", row=line, field="timestamp") from None
        examples.append(Example(user_id, tuple(ids[:-1]), ids[-1], int(ts)))
    if not examples and not allow_empty:
        raise DataError(path, "no rows after the header")
    return examples


def carve_validation(train: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """Split off the chronologically latest `fraction` of rows (ties keep file order)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {fraction}")
    order = sorted(range(len(train)), key=lambda i: train[i].timestamp)
    n_valid = round(len(train) * fraction)
    keep = sorted(order[: len(order) - n_valid])
    held = sorted(order[len(order) - n_valid:])
    return [train[i] for i in keep], [train[i] for i in held]


def _drop_empty_titles(titles: dict[int, str], splits: dict[str, list[Example]], path: Path, policy: str):
    empty = sorted(i for i, t in titles.items() if not t.strip())
    if not empty:
        return {}
    uses = sum(e.target in empty or any(h in empty for h in e.history) for rows in splits.values() for e in rows)
    if policy == "error":
        raise DataError(
            path, f"item {empty[0]} has an empty title ({len(empty)} such item(s), used by {uses} row(s)); "
            "set data.on_empty_title=drop (CLI: --on-empty-title drop) to drop them", field="title")
    gone = set(empty)
    dropped_rows = dropped_mentions = 0
    for name, rows in splits.items():
        kept = []
        for e in rows:
            history = tuple(h for h in e.history if h not in gone)
            dropped_mentions += len(e.history) - len(history)
            if e.target in gone or not history:
                dropped_rows += 1
                continue
            kept.append(Example(e.user_id, history, e.target, e.timestamp))
        splits[name] = kept
    for i in empty:
        del titles[i]
    return {"dropped_empty_title_items": empty, "dropped_rows": dropped_rows,
            "dropped_history_mentions": dropped_mentions}


def held_out_validation(full: list[Example], sample: list[Example], fraction: float) -> list[Example]:
    """The chronologically latest round(fraction * len(sample)) rows of `full` that are not in the
    training `sample` (ties keep file order): validation without taking rows from the sample."""
    if not 0 <= fraction < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {fraction}")
    in_sample = set(sample)
    rest = [e for e in full if e not in in_sample]
    n_valid = min(round(len(sample) * fraction), len(rest))
    order = sorted(range(len(rest)), key=lambda i: rest[i].timestamp)
    return [rest[i] for i in sorted(order[len(order) - n_valid:])] if n_valid else []


def load_authors_dir(folder: str | Path, *, name: str | None = None, train_file: str = "auto",
                     valid_fraction: float = 1 / 9, on_empty_title: str = "error",
                     validation: str = "auto") -> Dataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "dataset folder not found")
    titles_path = folder / TITLES_FILE
    titles = read_titles(titles_path)
    if train_file == "auto":
        train_file = "train_10000.csv" if (folder / "train_10000.csv").exists() else "train.csv"
    splits = {"train": read_examples(folder / train_file, titles)}
    if validation not in ("auto", "held_out", "carve"):
        raise ValueError(f"data.validation must be auto, held_out or carve, got {validation!r}")
    has_valid = (folder / "valid.csv").exists()
    if has_valid:
        splits["valid"] = read_examples(folder / "valid.csv", titles, allow_empty=True)
    elif validation != "carve" and train_file != "train.csv" and (folder / "train.csv").exists():
        full = read_examples(folder / "train.csv", titles)
        splits["valid"] = held_out_validation(full, splits["train"], valid_fraction)
        info_valid = (f"held out: the chronologically latest {len(splits['valid'])} rows of train.csv that are not "
                      f"in {train_file} (all of {train_file} is trained on)")
    elif validation == "held_out":
        raise DataError(folder / "train.csv", f"data.validation=held_out needs train.csv beside a training sample "
                        f"(training on {train_file}); use validation=carve")
    splits["test"] = read_examples(folder / "test.csv", titles)
    info: dict = {"path": str(folder), "train_file": train_file}
    info.update(_drop_empty_titles(titles, splits, titles_path, on_empty_title))
    if has_valid:
        info["valid_source"] = "valid.csv"
    elif "valid" in splits:
        info["valid_source"] = info_valid
    else:
        splits["train"], splits["valid"] = carve_validation(splits["train"], valid_fraction)
        info["valid_source"] = (f"carved: the chronologically latest {valid_fraction:.4g} of {train_file} "
                                "(no valid.csv in the folder)")
    return Dataset(name or folder.name, Catalogue(titles), splits["train"], splits["valid"], splits["test"], info)


def write_examples(path: Path, examples: list[Example]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for e in examples:
            writer.writerow([e.user_id, json.dumps([*e.history, e.target]), e.timestamp])


def write_authors_dir(out_dir: str | Path, catalogue: Catalogue, splits: dict[str, list[Example]],
                      extra_files: dict[str, str] = {}) -> Path:
    """Write a dataset folder atomically: everything goes to a temporary sibling, then one rename.
    An existing folder is replaced only when it holds nothing but files this function writes."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(out, "is a file, not a folder; give a new or empty --out folder")
    if out.exists():
        ours = {TITLES_FILE, *(f"{split}.csv" for split in ("train", "valid", "test")), *extra_files}
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if foreign:
            raise DataError(out, f"holds {foreign[0]!r}, which bearrec did not write; nothing was changed. "
                                 f"Give a new or empty --out folder")
    with atomic_directory(out_dir) as tmp:
        (tmp / TITLES_FILE).write_text(
            json.dumps({str(k): v for k, v in sorted(catalogue.titles.items())}, ensure_ascii=False, indent=1),
            encoding="utf-8")
        for split, rows in splits.items():
            write_examples(tmp / f"{split}.csv", rows)
        for fname, text in extra_files.items():
            (tmp / fname).write_text(text, encoding="utf-8")
    return Path(out_dir)
