"""`bearrec data <inspect | prepare | download>`: datasets from the command line."""

from __future__ import annotations

import json
import sys

from bearrec.flags import data_flags, overrides_of


def _data_config(args):
    from bearrec.config import load_config

    return load_config(args.config, overrides_of(args))


VALID_TEST_GAP = 0.2  # `data inspect` notes a validation split this much more "seen" than the test split


def _print_statistics(stats: dict) -> None:
    hist = stats["history_length"]
    rows = [("dataset", stats["name"]), ("items", stats["num_items"]), ("users", stats["num_users"]),
            ("train rows", stats["num_train"]), ("valid rows", stats["num_valid"]), ("test rows", stats["num_test"]),
            ("history length", f"min {hist['min']}, mean {hist['mean']:.2f}, max {hist['max']}"),
            ("duplicate titles", stats["num_duplicate_titles"]),
            ("test targets seen in train", f"{stats['test_targets_seen_in_train']:.1%}"),
            ("valid targets seen in train", f"{stats['valid_targets_seen_in_train']:.1%}")]
    for key in ("path", "train_file", "valid_source", "dropped_empty_title_items", "dropped_rows"):
        if key in stats:
            rows.append((key.replace("_", " "), stats[key]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for title, ids in stats["duplicate_titles"].items():
        print(f"  duplicate title (items {', '.join(map(str, ids))}): {title}")
    valid, test = stats["valid_targets_seen_in_train"], stats["test_targets_seen_in_train"]
    if stats["num_valid"] and stats["num_test"] and valid - test > VALID_TEST_GAP:
        print(f"note: validation targets were trained on as targets far more often than test targets ({valid:.1%} vs "
              f"{test:.1%}): choices made on validation favour ranking popular training targets "
              f"(docs/results.md, section 21)")


def cmd_data_inspect(args) -> int:
    from bearrec.data import load_dataset

    cfg = _data_config(args)
    stats = load_dataset(cfg.data).statistics()
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
    else:
        _print_statistics(stats)
    return 0


def cmd_data_prepare(args) -> int:
    from bearrec.data.prepare import prepare_to_dir
    from bearrec.data.raw import read_raw

    cfg = _data_config(args)
    stats = prepare_to_dir(read_raw(args.source), cfg.data.prepare, args.out)
    print(json.dumps(stats, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_data_download(args) -> int:
    from bearrec.data.registry import download

    dest = download(args.name, args.data_dir)
    print(f"downloaded and verified {args.name} into {dest}")
    return 0


def add_data_commands(sub) -> None:
    """The `data` command group, on the top-level parser's subparsers `sub`."""
    data = sub.add_parser("data", help="inspect, prepare and download datasets").add_subparsers(
        dest="data_command", required=True)

    p = data.add_parser("inspect", help="statistics of a dataset")
    data_flags(p, "name")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_data_inspect)

    p = data.add_parser("prepare", help="raw interactions -> the authors' format with the paper's protocol")
    p.add_argument("source", help="movielens-1m, movielens-100k, or a folder of raw Amazon / generic files")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    data_flags(p, None)
    p.set_defaults(func=cmd_data_prepare, name=None)

    p = data.add_parser("download", help="fetch the authors' released files and verify their checksums")
    p.add_argument("name", choices=["office", "book", "toy", "clothing"])
    p.add_argument("--data-dir", help="destination root (else $BEARREC_DATA_DIR, else the user cache)")
    p.set_defaults(func=cmd_data_download)
