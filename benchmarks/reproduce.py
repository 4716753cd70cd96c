"""The reproduction experiments of docs/results.md: sft, msl, bear and the "violators" variant on the
authors' datasets (office, book) and MovieLens-1M (movielens-1m), several seeds each, lambda/xi of
bear chosen on validation only.

    python benchmarks/reproduce.py --datasets office,book --seeds 0,1,2,3,4 --jobs 12 --root runs/repro
    python benchmarks/reproduce.py --root runs/repro --report-only     # tables from the finished runs
    python benchmarks/reproduce.py --root runs/repro --report-only --archive docs/results/archive/repro
    python benchmarks/reproduce.py --root docs/results/archive/repro --report-only   # the same tables, no weights
    # SmolLM2 on Office, each model decoded both ways (softmax over the valid tokens / the vocabulary):
    python benchmarks/reproduce.py --backbone smollm2 --datasets office --seeds 0,1,2 --bear-grid 1:1 \
        --methods sft,msl,bear,sft-valid-softmax,msl-vocab-softmax,bear-vocab-softmax --root runs/sm
    # the paper's Table 2 (nine fine-tuning methods and BEAR; D3 is the sft runs decoded with D3's rule):
    python benchmarks/reproduce.py --datasets movielens-1m,office --seeds 0,1,2,3,4 --choose-on-seed 0 \
        --methods sft,msl,bear,d3,cft,d2lr,igd,sdpo,rosepo,sprec --root runs/table2 --pruning-users 0

Every run is a resumable `bearrec run` (configs/<dataset>-tiny.yaml, or with --backbone smollm2 the
SmolLM2-135M + LoRA configs, plus the method's overrides), `--jobs` at a time in child processes (a
run that starts from its seed's sft run waits for that run only; other runs fill the free slots); a
run that failed or was cut off is left out of the tables and named. The pruning analysis (PR@K,
violation share) runs for the seed given by --pruning-seed only (on --pruning-users test users,
default all). Writes ROOT/summary.md, ROOT/summary.json (keeping the sections of datasets not in
this call), ROOT/<dataset>/table.{md,csv} and ROOT/<dataset>/pruning.png. Each method's row is paired
(NDCG@10, bootstrap CI) with msl and with the bear candidate chosen on validation.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import yaml

from bearrec import methods
from bearrec.archive import archive_finished, in_archive, skip_archived
from bearrec.config import load_config
from bearrec.errors import BearrecError
from bearrec.sweep import run_parallel

from reproduce_report import DECODED, report, select_candidate  # benchmarks/, beside this script

CONFIGS = {"tiny": {"office": "configs/office-tiny.yaml", "book": "configs/book-tiny.yaml",
                    "movielens-1m": "configs/movielens-tiny.yaml"},
           # the pretrained backbone (LoRA); office is the results.md setting, the other two the paper's budget
           "smollm2": {"office": "configs/office-smollm2.yaml", "book": "configs/book-smollm2.yaml",
                       "movielens-1m": "configs/movielens-1m.yaml"}}
FIXED = {"sft": ["loss.name=sft", "decode.constrained_softmax=false"],  # SFT decodes with HF's default
         "msl": ["loss.name=msl"],
         "violators": ["loss.name=bear", "loss.bear.form=violators", "loss.bear.lam=1", "loss.bear.xi=1"]}


# issue 6 baselines, run only when named in --methods; the preference ones start from the same
# seed's sft run (the paper's protocol), so they run in a second phase
# from the sft checkpoint: 1 more epoch at lr 1e-4, decoded like sft (softmax over the vocabulary,
# the same softmax as their sequence log-probs)
PREF = ["train.epochs=1", "train.learning_rate=1e-4", "decode.constrained_softmax=false"]
OPTIONAL = {"beam_sim": ["loss.name=beam_sim", "loss.bear.lam=1", "loss.bear.xi=1"],
            "dpo": ["loss.name=dpo", *PREF], "sdpo": ["loss.name=sdpo", *PREF],
            "sdpo_bear": ["loss.name=sdpo_bear", "loss.bear.lam=1", "loss.bear.xi=1", *PREF],
            "rosepo": ["loss.name=rosepo", *PREF],
            # SPRec: its own iterations of one SFT and one DPO epoch, at the preference methods' lr and decoding
            "sprec": ["loss.name=sprec", *PREF],
            # issue 16: trained like sft, decoded like sft (BASELINES.md's protocol), except IGD, which
            # brings its own decoding rule (alpha 0.2: the middle of the authors' typical 0.1-0.2..0.4, untuned)
            "cft": ["loss.name=cft", "decode.constrained_softmax=false"],
            "d2lr": ["loss.name=d2lr", "decode.constrained_softmax=false"],
            "igd": ["loss.name=igd", "decode.preset=igd", "decode.igd_alpha=0.2", "decode.constrained_softmax=false",
                    "decode.length_penalty=0"]}
FROM_SFT = tuple(name for name, m in methods.REGISTRY.items() if "preference" in m.needs or m.from_sft)


def method_overrides(bear_grid: list[tuple[str, str]], optional: bool = False) -> dict[str, list[str]]:
    methods = {**FIXED, **(OPTIONAL if optional else {})}
    for lam, xi in bear_grid:
        methods[f"bear-lam{lam}-xi{xi}"] = ["loss.name=bear", f"loss.bear.lam={lam}", f"loss.bear.xi={xi}"]
    return methods


def plan(args, phase: int = 1) -> list[tuple[list[str], Path]]:
    """(bearrec argv, run dir) for every run of a phase (2: the methods that start from sft); the
    pruning seed first (its runs take longest), then seed by seed so that a cut-off leaves whole seeds."""
    methods = {k: v for k, v in method_overrides(args.bear_grid, optional=True).items()
               if (k in args.methods if args.methods else k not in OPTIONAL)
               or (k.startswith("bear-") and (not args.methods or "bear" in args.methods))}
    methods = {k: v for k, v in methods.items() if (k in FROM_SFT) == (phase == 2)}
    seeds = sorted(args.seeds, key=lambda s: s != args.pruning_seed)
    runs = []
    for seed in seeds:
        for dataset in args.datasets:
            for name, overrides in methods.items():
                if name.startswith("bear-") and args.choose_on_seed is not None and seed != args.choose_on_seed:
                    continue  # run after the choice (`chosen_plan`)
                out = Path(args.root) / dataset / name / f"seed={seed}"
                if name in FROM_SFT:
                    start = Path(args.root) / dataset / "sft" / f"seed={seed}" / "model"
                    overrides = [*overrides, f"model.name_or_path={start}"]
                pruning = f"analysis.pruning_users={args.pruning_users if seed == args.pruning_seed else 0}"
                config = CONFIGS[args.backbone][dataset]
                both = [OTHER_SOFTMAX] if _base_name(name) in softmax_rows(args) else []
                runs.append((["run", "--config", config, *overrides, f"seed={seed}", pruning, *both,
                              f"output_dir={out}", *args.overrides], out))
    return runs


# a run whose *-softmax row is asked for decodes its test users both ways itself, from one prefill per
# batch (`analysis.other_softmax`); the row's `bearrec evaluate` is left for runs tested before that
OTHER_SOFTMAX = "analysis.other_softmax=true"


def softmax_rows(args) -> set[str]:
    """The base methods whose *-softmax rows --methods asks for."""
    return {base for name, (base, _, folder) in DECODED.items()
            if folder.endswith("-softmax") and name in (args.methods or [])}


def _base_name(method: str) -> str:
    return "bear" if method.startswith("bear-") else method


def decode_plan(args, batch=()) -> list[tuple[list[str], Path, Path | None]]:
    """(bearrec argv, output folder, run it waits for) for the DECODED rows asked for in --methods: every
    run of their base method and --seeds that has finished, or that `batch` ((argv, run dir, after)
    items of this call) will run (then it waits for that run), and has no such decode yet, nor will
    have one from its own test decode (a planned run with `OTHER_SOFTMAX` not tested yet)."""
    planned = {out: argv for argv, out, _ in batch}
    items = []
    for name, (base, flags, folder) in DECODED.items():
        if not args.methods or name not in args.methods:
            continue
        for dataset in args.datasets:
            for seed in args.seeds:
                for run in _base_runs(Path(args.root) / dataset, base, seed, planned):
                    if (run / folder / "metrics.json").exists() or not (
                            run in planned or (run / "metrics.json").exists()):
                        continue
                    if _writes_itself(planned.get(run), run, folder) and not (
                            getattr(args, "archive", None) and in_archive(args.root, args.archive, run)):
                        continue  # (an archived run is not run again: its decode is an item of its own)
                    users = _same_test_users(run, planned.get(run))
                    items.append((["evaluate", "--model", str(run), *flags, *users, "--out", str(run / folder)],
                                  run / folder, run if run in planned else None))
    return items


def _writes_itself(argv: list[str] | None, run: Path, folder: str) -> bool:
    """Whether the run `argv` (["run", "--config", CONFIG, *overrides]; None: not planned) will write
    `folder` in its own test decode: with `OTHER_SOFTMAX`, not tested yet, and `folder` the other softmax's."""
    if argv is None or OTHER_SOFTMAX not in argv or (run / "eval-test" / "metrics.json").exists():
        return False
    from bearrec.evaluation import other_softmax_folder

    return folder == other_softmax_folder(load_config(argv[2], argv[3:]).decode)


def _base_runs(folder: Path, base: str, seed: int, planned) -> list[Path]:
    """The run dirs of `base` (bear: every bear-* candidate) at `seed`, on disk or planned."""
    names = {base} if base != "bear" else {p.name for p in folder.glob("bear-*")} | {
        out.parent.name for out in planned if out.parent.parent == folder and out.parent.name.startswith("bear-")}
    return [folder / name / f"seed={seed}" for name in sorted(names)]


def _same_test_users(run: Path, argv: list[str] | None = None) -> list[str]:
    """`--limit N` when the run was tested on a seeded subset of N users (train.test_users), so that
    its other decodings are of the same users; nothing (the whole split) otherwise. `argv`: the
    `bearrec run` argv of a run this call has yet to finish (["run", "--config", CONFIG, *overrides]),
    read instead of its config.yaml."""
    limit = (load_config(argv[2], argv[3:]).train.test_users if argv else
             yaml.safe_load((run / "config.yaml").read_text())["train"].get("test_users"))
    return [] if limit is None else ["--limit", str(limit)]


def _candidates_at_seed(args, dataset: str) -> dict[str, list[Path]]:
    """The bear-* candidates finished at --choose-on-seed on `dataset`: its run, or where that is gone
    (not run again), its archive."""
    folders = ([args.archive] if getattr(args, "archive", None) else []) + [args.root]
    return {p.parent.name: [p] for folder in folders
            for p in (Path(folder) / dataset).glob(f"bear-*/seed={args.choose_on_seed}")
            if (p / "metrics.json").exists()}


def chosen_plan(args, datasets: list[str] | None = None) -> list[tuple[list[str], Path]]:
    """--choose-on-seed S: the bear candidate with the best validation NDCG@10 at seed S, on the other
    seeds (bear-* runs of plan(args) are then only for seed S, and run first); `datasets`: those of
    --datasets to plan (default: all)."""
    runs = []
    for dataset in args.datasets if datasets is None else datasets:
        at_seed = _candidates_at_seed(args, dataset)
        if not at_seed:
            print(f"warning: no finished bear candidate on {dataset} seed {args.choose_on_seed}", file=sys.stderr)
            continue
        scores = select_candidate(at_seed)
        chosen = max(scores, key=lambda k: scores[k]["valid_ndcg@10"])
        print(f"{dataset}: {chosen} chosen on validation at seed {args.choose_on_seed}", flush=True)
        others = argparse.Namespace(**{**vars(args), "datasets": [dataset], "choose_on_seed": None,
                                       "seeds": [s for s in args.seeds if s != args.choose_on_seed]})
        runs += [(argv, out) for argv, out in plan(others) if out.parent.name == chosen]
    return runs


def candidates_finished(args, dataset: str) -> bool:
    """Whether every --bear-grid candidate has finished at --choose-on-seed on `dataset` (its run under
    --root, or its archive): then the chosen one can be planned before this call runs anything."""
    grid = {name for name in method_overrides(args.bear_grid) if name.startswith("bear-")}
    return grid <= set(_candidates_at_seed(args, dataset))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="office,book", type=lambda s: s.split(","))
    p.add_argument("--backbone", default="tiny", choices=sorted(CONFIGS),
                   help="tiny: configs/<dataset>-tiny.yaml; smollm2: the SmolLM2-135M + LoRA configs")
    p.add_argument("--seeds", default="0,1,2,3,4", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--bear-grid", default="0.25:2.75,1:1,4:0.25",
                   type=lambda s: [tuple(x.split(":")) for x in s.split(",")],
                   help="lambda:xi candidates for bear (reference form), chosen on validation")
    p.add_argument("--methods", type=lambda s: s.split(","), help="sft,msl,bear,violators (the default) and/or "
                   "beam_sim,dpo,sdpo,sdpo_bear,rosepo,sprec,cft,d2lr,igd,d3 (" + ",".join(FROM_SFT) + " start from the "
                   "seed's sft run, which must be among them or finished; d3 decodes it with D3's rule); bear means "
                   "every --bear-grid candidate; sft-valid-softmax, msl-vocab-softmax, bear-vocab-softmax: those "
                   "runs decoded with the other softmax too (a row each)")
    p.add_argument("--choose-on-seed", type=int, help="run the bear candidates on this seed only, then the one "
                   "chosen on its validation NDCG@10 on the other seeds (default: every candidate on every seed)")
    p.add_argument("--pruning-seed", type=int, default=0, help="the seed whose runs get the pruning analysis")
    p.add_argument("--pruning-users", default="null", help="test users analysed (a fixed seeded subset; "
                   "default null: the whole split)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--root", default="runs/repro")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--report-only", action="store_true", help="only build the tables from finished runs")
    p.add_argument("--archive", metavar="DIR", help="archive each run into DIR as it finishes, and at the end "
                   "every finished run of --root (`bearrec archive`: results without weights; --report-only "
                   "--root DIR rebuilds the tables); runs already in DIR are not run again, unless a run "
                   "still to come starts from or decodes them")
    p.add_argument("overrides", nargs="*", help="config overrides for every run (e.g. train.epochs=1)")
    args = p.parse_args(argv)
    unknown = [d for d in args.datasets if d not in CONFIGS[args.backbone]]
    if unknown:
        p.error(f"unknown dataset(s) {unknown}; known: {sorted(CONFIGS[args.backbone])}")
    known = {*FIXED, *OPTIONAL, *DECODED, "bear"}
    unknown = [m for m in args.methods or [] if m not in known]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {', '.join(sorted(known))}")
    if not args.report_only:
        def run_batch(runs):  # (argv, output folder, the run it waits for)
            runs = skip_archived(runs, args.root, args.archive) if args.archive else runs
            if not runs:
                return
            logs = [out.with_name(out.name + ".log") if argv[0] == "evaluate" else out / "run.log" for argv, out, _ in runs]
            try:
                run_parallel([r[0] for r in runs], [r[1] for r in runs], args.jobs, [r[2] for r in runs], logs,
                             on_finished=partial(archive_finished, args.root, args.archive) if args.archive else None)
            except BearrecError as e:
                print(f"warning: {e}", file=sys.stderr)

        choosing = args.choose_on_seed is not None and (not args.methods or "bear" in args.methods)
        # the datasets whose candidates finished in an earlier call (or that this call does not run) get
        # their chosen candidate in the first batch, in its seeds' places; the others after that batch
        ready = [d for d in args.datasets if choosing and (
            args.choose_on_seed not in args.seeds or candidates_finished(args, d))]
        later = [d for d in args.datasets if choosing and d not in ready]
        # one batch: the runs from sft wait for their seed's sft run only, so no slot idles between phases
        # or between seeds; seed by seed (the pruning seed first), so that a cut-off leaves whole seeds
        first = plan(args, 1) + (chosen_plan(args, ready) if ready else [])
        from_sft = plan(args, 2)
        batch = [(*run, None) for run in first] + [(*run, run[1].parent.parent / "sft" / run[1].name) for run in from_sft]
        batch += decode_plan(args, batch)  # each after the run it decodes
        order = sorted(args.seeds, key=lambda s: s != args.pruning_seed)
        # ROOT/dataset/method/seed=N[/eval folder]
        batch.sort(key=lambda run: order.index(int(run[1].relative_to(args.root).parts[2].removeprefix("seed="))))
        run_batch(batch)
        if later:  # after this call's candidates have finished
            run_batch([(*run, None) for run in chosen_plan(args, later)])
        run_batch(decode_plan(args))  # the runs of that last batch, and any left undecoded
    report(args)
    if args.archive:
        from bearrec.archive import archive_tree

        try:
            done, skipped = archive_tree(args.root, args.archive)
        except BearrecError as e:  # every run was in the archive already: nothing new under --root
            print(f"nothing archived: {e}", flush=True)
            done, skipped = [], []
        print(f"archived {len(done)} finished run(s) of {args.root} into {args.archive}"
              + (f"; not finished: {', '.join(map(str, skipped))}" if skipped else ""), flush=True)
    if (Path(args.root) / "summary.md").exists():
        print((Path(args.root) / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
