"""`bearrec <command>`: the command-line interface.

Errors in user input (data, config) print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bearrec.errors import BearrecError, ConfigError
from bearrec.data.commands import add_data_commands
from bearrec.flags import decoding_suffix, inference_flags, inference_setup, note_tested_users, overrides_of


def cmd_evaluate(args) -> int:
    from bearrec.evaluation import (distributed_state, evaluate_each, format_table, other_softmax_folder,
                                    seeded_subset, softmaxes_for, write_outputs)

    def check(cfg, dataset):  # before the model loads
        softmaxes_for(cfg.decode, args.other_softmax, "--other-softmax")

    cfg, dataset, recommender = inference_setup(args, check)
    note_tested_users(args, cfg)
    examples = dataset.split(args.split)
    indices = seeded_subset(len(examples), args.limit)
    suffix = decoding_suffix(args)
    out = Path(args.out or (Path(args.model) / f"eval-{args.split}{suffix}"
                            if (Path(args.model) / "config.yaml").exists()
                            else Path("runs") / f"eval-{dataset.name}-{args.split}{suffix}"))
    both = softmaxes_for(recommender.decode, args.other_softmax, "--other-softmax")
    outs = [out, *[out.with_name(other_softmax_folder(recommender.decode, out.name)) for _ in both[1:]]]
    # beside the output folders: a decode cut off resumes with the users it had (same command)
    partials = [o.with_name(o.name + ".partial.jsonl") for o in outs] if out.parent.is_dir() else None
    results = evaluate_each(recommender, examples, indices, both, partials=partials,
                            model=json.dumps([str(args.model), args.split, args.config, overrides_of(args)]))
    state = distributed_state()
    for i, (folder, (preds, metrics)) in enumerate(zip(outs, results)):
        metrics.update(split=args.split, dataset=dataset.name, model=str(args.model), limit=args.limit)
        if state.is_main_process:
            write_outputs(folder, preds, metrics)
            if partials is not None:
                partials[i].unlink(missing_ok=True)
            print(format_table(metrics))
            print(f"{len(preds)} users decoded by {state.num_processes} process(es); predictions and metrics in "
                  f"{folder}")
    return 0


def cmd_recommend(args) -> int:
    try:
        history = tuple(int(x) for x in args.history.split(",") if x.strip())
    except ValueError:
        raise BearrecError(f"--history: expected comma-separated item ids, got {args.history!r}") from None
    if not history:
        raise BearrecError("--history is empty: give at least one item id")
    if args.k < 1:
        raise BearrecError(f"--k must be >= 1, got {args.k}")

    def check(cfg, dataset):
        unknown = [i for i in history if i not in dataset.catalogue]
        if unknown:
            raise BearrecError(f"--history: unknown item id {unknown[0]} (not in the {dataset.name} catalogue)")
        if args.k > cfg.decode.num_beams:
            raise BearrecError(f"--k {args.k} exceeds num_beams {cfg.decode.num_beams}; raise --num-beams")

    cfg, dataset, recommender = inference_setup(args, check)
    (rec,) = recommender.recommend([history])
    rows = [{"rank": r, "items": list(rec.items[r]), "title": rec.titles[r], "score": rec.scores[r]}
            for r in range(min(args.k, len(rec.titles)))]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        for row in rows:
            print(f"{row['rank'] + 1:>3}  {row['score']:9.4f}  {','.join(map(str, row['items'])):>10}  {row['title']}")
    return 0


def cmd_serve(args) -> int:
    from bearrec.serve.settings import settings_from_args

    settings = settings_from_args(args)  # bad flags: one line, before anything is loaded
    if args.batch_size is None:
        args.batch_size = settings.max_batch_size  # a server batch is one decoder call
    try:
        from bearrec.serve.model import served_model
        from bearrec.serve.server import run_server
    except ImportError as exc:
        raise BearrecError(f"bearrec serve needs fastapi, uvicorn and prometheus-client "
                           f"(pip install -r requirements.txt): {exc}") from None

    def check(cfg, dataset):
        if cfg.decode.num_beams < 1 or cfg.decode.batch_size < 1:
            raise ConfigError(f"--num-beams and --batch-size must be >= 1, got {cfg.decode.num_beams} and "
                              f"{cfg.decode.batch_size}")

    def load(checked):
        cfg, dataset, recommender = inference_setup(args, lambda cfg, dataset: (check(cfg, dataset), checked()))
        return served_model(args.model, cfg, dataset, recommender)

    return run_server(settings, load)


def cmd_train(args) -> int:
    from bearrec.config import load_config
    from bearrec.training import train

    cfg = load_config(args.config, args.overrides)
    run_dir = train(cfg, resume=args.resume, force=args.force)
    test = run_dir / "eval-test" / "metrics.json"
    if test.exists():
        from bearrec.evaluation import format_table

        print(format_table(json.loads(test.read_text())))
    print(f"run directory: {run_dir}")
    return 0


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def run_labels(models: list[str]) -> list[str]:
    """Shortest path suffixes that tell the runs apart (`msl/seed=0`, `bear/seed=0`); a model given
    twice gets `#2`."""
    parts = [Path(m).parts or (m,) for m in models]
    depth = 1
    while depth < max(map(len, parts)) and len({p[-depth:] for p in parts}) < len(set(parts)):
        depth += 1
    labels, seen = [], {}
    for p in parts:
        label = "/".join(p[-depth:])
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return labels


def cmd_analyze_pruning(args) -> int:
    from bearrec.analysis import analyze, plot_pruning, write_pruning
    from bearrec.evaluation import seeded_subset

    results, ks = {}, None
    for model, label in zip(args.model, run_labels(args.model)):
        args_one = argparse.Namespace(**{**vars(args), "model": model})
        cfg, dataset, recommender = inference_setup(args_one)
        note_tested_users(args_one, cfg)
        ks = ks or tuple(cfg.analysis.ks)  # the first run's analysis.ks (or the config's) for every run
        examples = dataset.split(args.split)
        indices = seeded_subset(len(examples), args.limit)
        result = analyze(recommender, examples, indices, ks=ks, exact_ranks=args.exact_ranks)
        result.update(split=args.split, dataset=dataset.name, model=model)
        run = Path(model)
        if args.out:
            out = Path(args.out) / label
        else:
            out = run / f"pruning-{args.split}" if (run / "config.yaml").exists() else Path("runs") / run.name
        write_pruning(out, result)
        results[label] = result
        rows = [f"PR@{k} {_share(r['rate'])} ({r['pruned']}/{r['eligible']}), violating {_share(r['violation_share'])}"
                for k, r in ((k, result[f"PR@{k}"]) for k in ks)]
        print(f"{model}: " + "; ".join(rows) + f"  -> {out / 'pruning.json'}")
    png = Path(args.out or (Path(args.model[0]) / f"pruning-{args.split}")) / "pruning.png"
    plot_pruning(results, png, ks=ks)
    print(f"plot: {png}")
    return 0


def cmd_run(args) -> int:
    from bearrec.config import load_config
    from bearrec.driver import run

    run_dir = run(load_config(args.config, args.overrides), force=args.force)
    test = run_dir / "eval-test" / "metrics.json"
    if test.exists():
        from bearrec.evaluation import format_table

        print(format_table(json.loads(test.read_text())))
    summary = json.loads((run_dir / "metrics.json").read_text())
    if summary.get("references"):
        from bearrec.references import markdown, sentence

        print("\n".join(["", *markdown(summary["references"]), "", sentence(summary["references"], summary["loss"]["name"])]))
    print(f"report: {run_dir / 'report.md'}")
    return 0


def cmd_compare(args) -> int:
    from bearrec.atomic import atomic_write_text
    from bearrec.report import compare, to_csv, to_markdown

    pairs = []
    for pair in args.pair or []:
        a, sep, b = pair.partition(" - ")
        if not sep:
            raise BearrecError(f"--pair {pair!r}: expected 'ROW A - ROW B', e.g. --pair 'bear - msl'")
        pairs.append((a.strip(), b.strip()))
    result = compare(args.runs, bootstrap_samples=args.bootstrap, evaluations=tuple(args.eval or ["eval-test"]),
                     pairs=pairs, references=args.references)
    table = to_markdown(result)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        atomic_write_text(out.with_suffix(".md"), table)
        atomic_write_text(out.with_suffix(".csv"), to_csv(result))
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")
    return 0


def cmd_archive(args) -> int:
    from bearrec.archive import archive_tree

    done, skipped = archive_tree(args.source, args.dest)
    for run in skipped:
        print(f"skipped {run}: not finished", file=sys.stderr)
    print(f"archived {len(done)} run(s) from {args.source} into {args.dest}")
    return 0


def cmd_sweep(args) -> int:
    from bearrec.sweep import sweep

    result = sweep(args.config, args.grid, args.overrides, jobs=args.jobs)
    for row in result["settings"]:
        seeds = f" (mean of {row['seeds']} seeds)" if row["seeds"] > 1 else ""
        print(f"{row['params']}: valid NDCG@{row['k']} {row['valid_ndcg']}, test {row['test_ndcg']}{seeds}")
    chosen = result["chosen_on_validation"]
    if chosen:
        print(f"chosen on validation: {chosen['params']} (test NDCG@{chosen['k']} {chosen['test_ndcg']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bearrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    add_data_commands(sub)

    p = sub.add_parser("evaluate", help="decode a split and compute HR@K / NDCG@K")
    inference_flags(p)
    p.add_argument("--split", choices=["train", "valid", "test"], default="test")
    p.add_argument("--limit", type=int, help="a fixed, seeded subset of N users")
    p.add_argument("--out", help="output folder (default: RUN/eval-SPLIT or runs/eval-DATA-SPLIT)")
    p.add_argument("--other-softmax", action="store_true",
                   help="also decode with the other softmax (over the vocabulary when this decode's is over the valid "
                        "tokens, and the reverse), each batch prefilled once for both, into OUT-vocab-softmax or "
                        "OUT-valid-softmax")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("run", help="train, select, evaluate, analyse pruning and report; resumable")
    p.add_argument("--config", help="a YAML config (configs/*.yaml)")
    p.add_argument("--force", action="store_true",
                   help="delete what bearrec wrote in output_dir (another config's run, or this one's) and start over")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="a grid of runs, chosen on validation, one plot per parameter")
    p.add_argument("--config", help="a YAML config")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                   help="a swept setting, e.g. bear.lam=0.1,0.25,0.5 (repeat for a grid); seed=0,1,2 repeats "
                        "every setting and averages over the seeds")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("compare", help="one table across runs (mean +- std over seeds, paired bootstrap)")
    p.add_argument("runs", nargs="+", help="run directories (bearrec run / train)")
    p.add_argument("--out", help="write OUT.md and OUT.csv")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--eval", action="append", metavar="FOLDER",
                   help="evaluation folder(s) of each run (default eval-test); e.g. --eval eval-test --eval "
                        "eval-test-d3 puts each decoding on its own row")
    p.add_argument("--pair", action="append", metavar="'A - B'",
                   help="also report the NDCG@10 difference of these two rows (labels as printed), e.g. "
                        "--pair 'bear - msl'; the best row - the best other is always reported")
    p.add_argument("--references", action="store_true",
                   help="add rows for the runs' reference points (ref-popularity/, ref-zero_shot/: bearrec run's "
                        "analysis.references) on the same test users")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("archive", help="a finished run's results without its weights (config, metrics, per-user "
                                       "ranks), for compare and reproduce --report-only")
    p.add_argument("source", help="a run directory, or a folder: every finished run below it")
    p.add_argument("dest", help="the archive (for a folder: the same relative paths below it)")
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("train", help="fine-tune with sft / msl / bear; selects the epoch on validation")
    p.add_argument("--config", help="a YAML config (configs/*.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")
    p.add_argument("--force", action="store_true",
                   help="delete what bearrec wrote in output_dir (another config's run, or this one's) and start over")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. loss.bear.lam=0.5")
    p.set_defaults(func=cmd_train)

    analyze = sub.add_parser("analyze", help="pruning analysis").add_subparsers(dest="analyze_command", required=True)
    p = analyze.add_parser("pruning", help="PR@K and necessary-condition violations (paper Figs. 3, 4, 6)")
    inference_flags(p, several=True)
    p.add_argument("--split", choices=["train", "valid", "test"], default="test")
    p.add_argument("--limit", type=int, help="a fixed, seeded subset of N users (default: the whole split)")
    p.add_argument("--exact-ranks", action="store_true", help="score every title for every user, so that "
                   "overall_rank is exact beyond K too (many times slower; PR@K is the same)")
    p.add_argument("--out", help="OUT/<run label>/pruning.json for each run and OUT/pruning.png (default: each "
                   "run's pruning-SPLIT/, the plot in the first run's); K from the config's analysis.ks")
    p.set_defaults(func=cmd_analyze_pruning)

    p = sub.add_parser("recommend", help="top-K items for one history")
    inference_flags(p)
    p.add_argument("--history", required=True, help="comma-separated item ids, oldest first")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("serve", help="an HTTP server (FastAPI) for recommendations, requests decoded in batches")
    inference_flags(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch-size", type=int, help="users decoded together at most (default 8); also the "
                   "decoder's --batch-size unless given")
    p.add_argument("--max-batch-delay-ms", type=float, help="longest wait for a batch to fill (default 5 ms)")
    p.add_argument("--max-queue", type=int, help="users waiting at most; beyond it 503 + Retry-After (default 256)")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 65536; 413 above)")
    p.add_argument("--max-history", type=int, help="longest history accepted (default 200 items)")
    p.add_argument("--max-request-users", type=int, help="users in one batch request at most (default 64)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning)")
    p.set_defaults(func=cmd_serve)
    return parser


def _close_process_group() -> None:
    """Leave a torchrun / accelerate process group cleanly; exiting with it open can abort a rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        _close_process_group()
        return code
    except BearrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        if os.environ.get("BEARREC_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
