"""Command-line flags made from the settings' declarations (`bearrec.sections`), and what the
inference commands (evaluate, recommend, serve, analyze) share: their flags, the model they load,
the default name of their output folder."""

from __future__ import annotations

import argparse
import sys
import typing

from bearrec.config import PRESETS, declared


def config_flag(p, flag: str, key: str, help: str | None = None) -> None:
    """`flag` sets the config setting `key`: its type, choices, default and help are the setting's
    declaration (`bearrec.sections`); a flag not given leaves the config's value."""
    tp, default, text = declared(key)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if typing.get_origin(tp) is not typing.Literal and args else tp
    dest = flag.lstrip("-").replace("-", "_")
    shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
    kwargs = {"dest": dest, "default": None, "help": f"{help or text} ({key}; default: the config's value, else {shown})"}
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(tp) is typing.Literal:
        kwargs["choices"] = typing.get_args(tp)
    else:
        kwargs["type"] = tp
    p.add_argument(flag, **kwargs)
    keys = dict(p.get_default("config_flags") or {})
    keys[dest] = key
    p.set_defaults(config_flags=keys)


def overrides_of(args) -> list[str]:
    """KEY=VALUE overrides from the positional list, then from the config flags that were given."""
    out = list(getattr(args, "overrides", None) or [])
    for dest, key in (getattr(args, "config_flags", None) or {}).items():
        value = getattr(args, dest, None)
        if value is not None:
            out.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def data_flags(p, positional: str | None):
    if positional:
        p.add_argument(positional, help="office, book, toy, clothing, movielens-1m, movielens-100k, or a folder")
        p.set_defaults(config_flags={positional: "data.name"})
    p.add_argument("--config", help="a YAML config; its data: section is used")
    for flag in ("data_dir", "train_file", "valid_fraction", "on_empty_title"):
        config_flag(p, "--" + flag.replace("_", "-"), f"data.{flag}")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.prepare.k_core=10")


def inference_flags(p, several: bool = False):
    if several:
        p.add_argument("--model", required=True, action="append",
                       help="a run directory or model; repeat it to compare runs side by side")
    else:
        p.add_argument("--model", required=True, help="a run directory, a model folder, a hub id or smollm2-135m")
    p.add_argument("--config", help="a YAML config (default: the run's config.yaml)")
    config_flag(p, "--data", "data.name", help="dataset name or folder")
    config_flag(p, "--data-dir", "data.data_dir")
    for key in ("num_beams", "length_penalty", "batch_size", "ghost_threshold", "constrained_softmax", "igd_alpha",
                "exclude_history"):
        config_flag(p, "--" + key.replace("_", "-"), f"decode.{key}")
    config_flag(p, "--decoding", "decode.preset", help="a decoding recipe the run's settings are read with; "
                "d3: no length normalisation (Bao et al. 2024); igd: IGD's rule (give --igd-alpha), full softmax, "
                "no length normalisation (Lin et al. 2025)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


# What `--decoding P` resets to its default where P does not set it and no flag gives it: a run decoded
# with d3 or igd then keeps none of that under `--decoding hf`. constrained_softmax stays the run's own
# (the method's decoding: sft's full softmax, msl's valid-token one).
PRESET_RESETS = ("length_penalty", "igd_alpha")
PRESET_KEEPS = {"igd": ("igd_alpha",)}  # the run's alpha, unless --igd-alpha gives one


def inference_setup(args, check=None):
    """(config, dataset, recommender) for --model DIR_OR_RUN (`bearrec.runs.load_run`) with the
    decoding and data flags as overrides. `check(cfg, dataset)` runs before the model is loaded."""
    from bearrec.runs import load_run

    overrides = overrides_of(args)
    decoding = getattr(args, "decoding", None)
    if decoding in PRESETS:  # a preset sets its values, and resets what another preset sets that it does not
        values = {**{k: declared(f"decode.{k}")[1] for k in PRESET_RESETS if k not in PRESET_KEEPS.get(decoding, ())},
                  **PRESETS[decoding]}
        for key, value in values.items():
            if getattr(args, key, None) is None:
                overrides.append(f"decode.{key}={'null' if value is None else value}")
    loaded = load_run(args.model, args.config, overrides, check)
    return loaded.cfg, loaded.dataset, loaded.recommender


def note_tested_users(args, cfg) -> None:
    """Warn on stderr when a run tested on a seeded subset (train.test_users) is decoded on the whole
    test split: its eval-test and this output would then cover different users."""
    from bearrec.runs import is_run_dir

    limit = cfg.train.test_users
    if args.split == "test" and args.limit is None and limit is not None and is_run_dir(args.model):
        print(f"note: {args.model} was tested on {limit} seeded test users (train.test_users); this decodes the whole "
              f"split; --limit {limit} decodes the same users as its eval-test", file=sys.stderr)


def decoding_suffix(args) -> str:
    """A default output folder never overwrites a run's own evaluation with other decode settings:
    each decode flag given adds to the name (eval-test-d3, eval-test-ghost0.99, eval-test-b20, ...)."""
    parts = [args.decoding] if args.decoding in ("d3", "igd") else []
    if getattr(args, "igd_alpha", None) is not None:
        parts.append(f"a{args.igd_alpha:g}")
    if args.length_penalty is not None and args.decoding not in ("d3", "igd"):
        parts.append(f"lp{args.length_penalty:g}")
    if args.ghost_threshold is not None:
        parts.append(f"ghost{args.ghost_threshold:g}")
    if args.num_beams is not None:
        parts.append(f"b{args.num_beams}")
    if args.constrained_softmax is not None and args.decoding != "igd":
        parts.append("cs" if args.constrained_softmax else "nocs")
    if getattr(args, "exclude_history", None):
        parts.append("nohistory")
    return "".join(f"-{p}" for p in parts)
