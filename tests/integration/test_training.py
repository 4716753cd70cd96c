"""Training on a tiny from-scratch model and a hand-written dataset: response-only logits, the
loss going down, epoch selection on validation, resume, and bad configs."""

import json
import math
from pathlib import Path

import pytest
import torch

from bearrec.cli import main
from bearrec.config import load_config
from bearrec.data.authors import load_authors_dir
from bearrec.losses import Allowed
from bearrec.methods import loss as method_loss
from bearrec.selection import choose_epoch, user_scores
from bearrec.training import Collator, TrainingSet, attention_backends, build_encoder_and_model, train
from tests.conftest import write_authors

TINY = ["model.name_or_path=tiny", "model.lora.enabled=false", "prompt.template=compact",
        "model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.intermediate_size=64", "train.batch_size=4", "train.grad_accum=1",
        "train.learning_rate=1e-2", "train.warmup_steps=0", "train.logging_steps=1", "decode.num_beams=3",
        "train.report_to=[]"]


@pytest.fixture
def data_dir(tmp_path):
    return write_authors(tmp_path / "Shop")


def _cfg(data_dir, out, *extra):
    return load_config(None, [f"data.name={data_dir}", "data.valid_fraction=0.25", f"output_dir={out}", *TINY, *extra])


def test_response_logits_equal_unpadded_teacher_forcing(data_dir, tmp_path):
    cfg = _cfg(data_dir, tmp_path / "run")
    ds = load_authors_dir(data_dir, valid_fraction=0.25)
    encoder, model = build_encoder_and_model(cfg, ds)
    model.eval()
    encoded = encoder.encode_all(ds.train)
    batch = Collator(encoder.tokenizer.pad_token_id)([TrainingSet(encoded, encoder)[i] for i in range(len(encoded))])
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], logits_to_keep=batch["logits_to_keep"])
        got = out.logits[batch["resp_rows"], batch["resp_cols"]]
        expected, targets, nodes = [], [], []
        for e in encoded:  # each example alone, no padding, full logits
            full = model(torch.tensor([e.input_ids])).logits[0]
            n = len(e.target_ids)
            expected.append(full[len(e.prompt_ids) - 1: len(e.prompt_ids) - 1 + n])
            targets += e.target_ids
            nodes += encoder.trie.walk(e.target_ids)
    assert torch.allclose(got, torch.cat(expected), atol=1e-4)
    assert batch["targets"].tolist() == targets and batch["nodes"].tolist() == nodes
    # the allowed sets contain each target; forced positions have one token
    allowed = Allowed.from_trie(encoder.trie, batch["nodes"])
    for t, (count, target) in enumerate(zip(allowed.counts.tolist(), targets)):
        start = int(allowed.counts[:t].sum())
        assert target in allowed.tokens[start:start + count].tolist()
    cfg.loss.name = "msl"
    loss = method_loss(got, batch["targets"], allowed, cfg.loss)
    assert torch.isfinite(loss)


def test_train_selects_on_validation_and_decodes_test(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", f"data.name={data_dir}", "data.valid_fraction=0.25", f"output_dir={out}", *TINY,
            "train.epochs=4", "loss.name=bear", "loss.bear.num_beams=2", "train.report_to=[tensorboard]"]
    assert main(argv) == 0
    assert "run directory" in capsys.readouterr().out
    record = json.loads((out / "selection.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3, 4]
    # the choice follows the default rule over the recorded per-user validation decodes
    scores = {e: user_scores([json.loads(x) for x in (out / f"eval-valid-epoch-{e}" / "predictions.jsonl")
                              .read_text().splitlines()], 3) for e in (1, 2, 3, 4)}
    assert record["choice"]["epoch"] == record["best"]["epoch"] == choose_epoch(scores)["epoch"]
    assert record["best"]["users"] == 2 and record["best"]["hits"] == round(2 * record["best"]["valid_hr@3"])
    assert record["choice"]["few_valid_hits"]  # 2 users cannot give 50 hits
    # what selection did: the last epoch on the same test users, decoded only when it was not chosen
    assert (out / "eval-test-last").exists() == (record["best"]["epoch"] != 4)
    if record["best"]["epoch"] != 4:
        assert json.loads((out / "eval-test-last" / "metrics.json").read_text())["epoch"] == 4
    assert (out / "model" / "config.json").exists() and (out / "model" / "bearrec_tokenizer").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    assert list((out / "checkpoints" / "runs").rglob("events.out.tfevents.*"))  # TensorBoard logs
    test = json.loads((out / "eval-test" / "metrics.json").read_text())
    assert test["num_users"] == 2 and test["selected"] == record["best"]
    assert load_config(out / "config.yaml").loss.bear.num_beams == 2  # resolved config in the run
    # the exported model is what `bearrec evaluate` uses for a run directory
    assert main(["evaluate", "--model", str(out), "--split", "test"]) == 0
    again = json.loads((out / "eval-test" / "metrics.json").read_text())
    assert again["item"] == test["item"]


@pytest.mark.parametrize("decode_autocast", ["bfloat16", "none"])
def test_prepare_for_training_changes_no_loss_gradient_or_decode(data_dir, tmp_path, decode_autocast):
    """LoRA with dropout, bf16 autocast: the model after prepare_for_training gives the same loss,
    gradients and validation decode, bit for bit; frozen weights go to bf16 only when decoding
    also runs under bf16 autocast."""
    from bearrec.evaluation import Recommender, evaluate
    from bearrec.training import batch_loss, prepare_for_training

    cfg = _cfg(data_dir, tmp_path / "run", "model.lora.enabled=true", "model.lora.dropout=0.2", "train.bf16=true",
               f"decode.autocast={decode_autocast}")
    ds = load_authors_dir(data_dir, valid_fraction=0.25)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        encoder, model = build_encoder_and_model(cfg, ds)
        models.append(model)
    changed = prepare_for_training(models[1], cfg)
    assert set(changed) == {"lora_dropout", "swiglu", *(["bf16_linears"] if decode_autocast == "bfloat16" else [])}
    assert changed["lora_dropout"] > 0 and changed["swiglu"] > 0
    train_set = TrainingSet(encoder.encode_all(ds.train), encoder)
    batch = Collator(encoder.tokenizer.pad_token_id)([train_set[i] for i in range(len(train_set))])
    results = []
    for model in models:
        model.train()
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = batch_loss(model, dict(batch), encoder.trie, cfg.loss, encoder.tokenizer.pad_token_id)
            loss = out.num / out.den
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        preds, _ = evaluate(Recommender(model.eval(), encoder, cfg.decode), ds.valid, list(range(len(ds.valid))),
                            progress=False)
        results.append((loss.detach(), grads, preds))
    (l0, g0, p0), (l1, g1, p1) = results
    assert torch.equal(l0, l1) and g0.keys() == g1.keys() and len(g0) > 0
    assert all(torch.equal(g0[k], g1[k]) for k in g0)
    assert p0 == p1 and len(p0) == len(ds.valid)


def test_loss_goes_down(tmp_path):
    """A learnable rule (the target follows the last history item): the msl loss halves."""
    import random

    follow = {1: 2, 2: 3, 3: 5, 4: 5, 5: 6, 6: 1}
    rng = random.Random(0)
    rows = []
    for i in range(24):
        last = rng.randint(1, 6)
        rows.append((f"u{i}", [rng.randint(1, 6), last, follow[last]], i))
    data = write_authors(tmp_path / "Rule", train=rows)
    cfg = _cfg(data, tmp_path / "run", "loss.name=msl", "train.epochs=10", "train.eval_test=false",
               "data.valid_fraction=0.0", "train.batch_size=8")
    run = train(cfg)
    last = max((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    losses = [h["loss"] for h in json.loads((last / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(losses) == 30
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
    assert not (run / "selection.json").exists() and (run / "model" / "config.json").exists()


def _first_losses(run) -> list[float]:
    last = max((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return [h["loss"] for h in json.loads((last / "trainer_state.json").read_text())["log_history"] if "loss" in h]


def test_beam_sim_trains_and_reduces_to_its_base_at_lambda_zero(tmp_path):
    """beam_sim decodes every batch (no gradient) for its thresholds: with lam=0 it is exactly the
    msl run; with lam>0 the regulariser changes the loss from the first step and training still works."""
    data = write_authors(tmp_path / "Shop")
    common = ["train.epochs=2", "train.eval_test=false", "data.valid_fraction=0.0", "loss.bear.num_beams=2"]
    msl = _first_losses(train(_cfg(data, tmp_path / "msl", "loss.name=msl", *common)))
    zero = _first_losses(train(_cfg(data, tmp_path / "zero", "loss.name=beam_sim", "loss.bear.lam=0", *common)))
    reg = _first_losses(train(_cfg(data, tmp_path / "reg", "loss.name=beam_sim", "loss.bear.lam=2", *common)))
    assert zero == pytest.approx(msl, abs=1e-6)
    assert reg[0] != pytest.approx(msl[0], abs=1e-4) and all(map(math.isfinite, reg))


def _crash_at_step(monkeypatch, cfg, step: int) -> None:
    """Train `cfg` until a KeyboardInterrupt at the end of optimiser step `step` (before Trainer saves)."""
    from transformers import TrainerCallback

    import bearrec.training as training

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt

    original = training.BearTrainer.__init__

    def with_crash(self, *a, **kw):
        original(self, *a, **kw)
        self.add_callback(Crash())

    monkeypatch.setattr(training.BearTrainer, "__init__", with_crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(training.BearTrainer, "__init__", original)


def _same_weights(a: Path, b: Path) -> bool:
    from transformers import AutoModelForCausalLM

    x = AutoModelForCausalLM.from_pretrained(a / "model").state_dict()
    y = AutoModelForCausalLM.from_pretrained(b / "model").state_dict()
    return all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)


def test_resume_after_a_crash_gives_the_same_weights(data_dir, tmp_path, monkeypatch):
    full = train(_cfg(data_dir, tmp_path / "full", "train.epochs=3", "train.eval_test=false", "data.valid_fraction=0"))
    cfg = _cfg(data_dir, tmp_path / "resumed", "train.epochs=3", "train.eval_test=false", "data.valid_fraction=0")
    _crash_at_step(monkeypatch, cfg, 5)  # mid-epoch 3 (2 steps per epoch)
    train(cfg, resume=True)
    assert _same_weights(full, tmp_path / "resumed")


def test_save_steps_resumes_inside_an_epoch_with_the_same_weights(data_dir, tmp_path, monkeypatch):
    """train.save_steps=2 (3 steps per epoch): a run killed at step 5 has checkpoint-2 (inside epoch 1),
    checkpoint-3 (its end) and checkpoint-4 (inside epoch 2), resumes at step 4, trains the last two
    steps and ends with the uninterrupted run's weights."""
    common = ["train.epochs=2", "train.eval_test=false", "data.valid_fraction=0"]
    full = train(_cfg(data_dir, tmp_path / "full", *common))
    cfg = _cfg(data_dir, tmp_path / "resumed", *common, "train.save_steps=2")
    _crash_at_step(monkeypatch, cfg, 5)  # before step 5's callbacks could ask for a save
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    train(cfg, resume=True)
    timing = json.loads((tmp_path / "resumed" / "train_metrics.json").read_text())
    assert timing["resumed"] and timing["epochs_this_process"] == pytest.approx(2 / 3)
    assert _same_weights(full, tmp_path / "resumed")


@pytest.mark.parametrize("at", ["epoch_end", "inside"])
def test_a_run_killed_in_an_epochs_validation_still_chooses_among_every_epoch(data_dir, tmp_path, monkeypatch, at):
    """train.save_steps with validation: killed while epoch 1 is being validated, the run resumes before
    that epoch's end (from the start, or from the step checkpoint inside it), validates epoch 1 and
    epoch 2, and chooses as the uninterrupted run did, with the same weights. A step checkpoint on
    the epoch's last step (save_steps = steps per epoch) would have resumed past epoch 1 unvalidated."""
    import bearrec.training as training

    common = ["train.epochs=2", "train.eval_test=false"]
    full = train(_cfg(data_dir, tmp_path / "full", *common))
    steps = json.loads((full / "train_metrics.json").read_text())["global_steps"] // 2
    assert steps >= 2
    every = steps if at == "epoch_end" else steps - 1
    original = training.EpochSelection.on_epoch_end

    def killed(self, *a, **kw):
        raise KeyboardInterrupt

    cfg = _cfg(data_dir, tmp_path / "resumed", *common, f"train.save_steps={every}")
    monkeypatch.setattr(training.EpochSelection, "on_epoch_end", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(training.EpochSelection, "on_epoch_end", original)
    saved = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("checkpoint-*"))
    assert saved == ([] if at == "epoch_end" else [f"checkpoint-{every}"])
    train(cfg, resume=True)
    record = json.loads((tmp_path / "resumed" / "selection.json").read_text())
    expected = json.loads((full / "selection.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    assert record["best"] == expected["best"]
    assert _same_weights(full, tmp_path / "resumed")


@pytest.mark.parametrize("override, fragment", [
    ("loss.name=ppo", "loss.name 'ppo' unknown"), ("loss.bear.num_beams=0", "loss.bear.num_beams must be >= 1"),
    ("loss.pref.beta=0", "loss.pref.beta must be > 0"), ("loss.pref.num_negatives=0", "num_negatives must be >= 1"),
    ("loss.bear.xi=0", "xi must be > 0"), ("train.epochs=0", "train.epochs must be >= 1"),
    ("loss.cft.beta=1.5", "loss.cft.beta must be in [0, 1]"), ("loss.d2lr.beta=-0.1", "loss.d2lr.beta must be >= 0"),
    ("loss.igd.beta=-1", "loss.igd.beta must be >= 0"),
    ("model.lora.enabled=true", "trained from scratch"),
])
def test_bad_config_fails_before_loading_anything(data_dir, tmp_path, capsys, override, fragment):
    argv = ["train", f"data.name={data_dir}", f"output_dir={tmp_path / 'run'}", *TINY, override]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_diverging_training_stops_with_a_clear_error(data_dir, tmp_path, capsys):
    """Trainer alone trains on after a NaN (and logs its loss as 0); the run must stop at once."""
    argv = ["train", f"data.name={data_dir}", "data.valid_fraction=0.25", f"output_dir={tmp_path / 'run'}", *TINY,
            "train.epochs=2", "train.learning_rate=1e10"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training diverged at step" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "eval-test").exists()


def test_divergence_is_caught_at_the_first_bad_step_not_the_next_logged_one(data_dir, tmp_path, capsys):
    import re

    argv = ["train", f"data.name={data_dir}", "data.valid_fraction=0.25", f"output_dir={tmp_path / 'run'}", *TINY,
            "train.epochs=2", "train.learning_rate=1e10", "train.logging_steps=1000"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    step = int(re.search(r"diverged at step (\d+)", err).group(1))
    assert step <= 2 and "Traceback" not in err  # step 1's update (lr 1e10) ruins the weights


def test_training_attention_leaves_out_the_cudnn_backend():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_backends():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_missing_data_fails_before_the_model(tmp_path, capsys):
    assert main(["train", f"data.name={tmp_path / 'nothing'}", f"output_dir={tmp_path / 'run'}", *TINY]) == 2
    assert "not a dataset name" in capsys.readouterr().err


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """torchrun, 2 CPU processes (gloo) x batch 2 against 1 process x batch 4: the losses are
    normalised over the whole global batch, so the weights agree to rounding."""
    import os
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    rows = [("u1", [1, 2, 3], 100), ("u2", [2, 3, 5], 300), ("u3", [5, 6, 1], 200), ("u4", [3, 5, 6, 2], 500),
            ("u1", [2, 3, 4], 400), ("u5", [6, 1, 2], 250), ("u6", [1, 5, 3], 600), ("u8", [2, 6, 5], 350)]
    data = write_authors(tmp_path / "Eight", train=rows)
    common = [f"data.name={data}", "data.valid_fraction=0", *TINY, "train.epochs=2", "train.eval_test=false",
              "loss.name=bear", "loss.bear.num_beams=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "bearrec", "train", *common, "train.batch_size=4",
                          f"output_dir={tmp_path / 'one'}"], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "bearrec", "train", *common, "train.batch_size=2", f"output_dir={tmp_path / 'two'}"]
    two = subprocess.run(launch, env=env, capture_output=True, text=True)
    if two.returncode != 0:  # one retry: a launcher failure (e.g. a rendezvous port race) is not ours;
        two = subprocess.run(launch, env=env, capture_output=True, text=True)  # a real bug fails twice
    assert two.returncode == 0, two.stderr[-3000:]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model").state_dict()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"weights differ by up to {worst}"


@pytest.mark.parametrize("name, negatives", [("dpo", 1), ("sdpo", 3), ("sdpo_bear", 3)])
def test_preference_losses_start_from_sft_with_cached_reference(tmp_path, name, negatives):
    """Started from an SFT checkpoint, the policy equals the reference at the first step, so the
    first loss is log(1 + N) for dpo/sdpo (r = 0); the reference log-probs are cached on disk and
    equal the starting model's sequence log-probs computed one sequence at a time."""
    from transformers import AutoModelForCausalLM

    from bearrec.modeling import load_tokenizer

    data = write_authors(tmp_path / "Shop")
    sft = train(_cfg(data, tmp_path / "sft", "loss.name=sft", "train.epochs=1", "train.eval_test=false",
                     "data.valid_fraction=0.0"))
    run = train(_cfg(data, tmp_path / name, f"loss.name={name}", f"model.name_or_path={sft / 'model'}",
                     "loss.pref.num_negatives=3", "loss.bear.num_beams=2", "loss.bear.lam=1", "train.epochs=1",
                     "train.eval_test=false", "data.valid_fraction=0.0", "train.learning_rate=1e-3"))
    first = _first_losses(run)[0]
    if name != "sdpo_bear":
        assert first == pytest.approx(math.log(1 + negatives), abs=1e-3)
    else:
        assert first != pytest.approx(math.log(1 + negatives), abs=1e-3)  # the BEAR term is on
    cached = torch.load(run / "reference_logps.pt")["values"]
    ds = load_authors_dir(data, valid_fraction=0.0)
    assert cached.shape == (len(ds.train), 1 + negatives)
    # independent check of one group: teacher forcing each sequence alone with the SFT weights
    from bearrec.data.encode import Encoder
    from bearrec.data.prompts import PromptTemplate
    from bearrec.config import PromptConfig
    from bearrec.preference import sample_negatives

    tok = load_tokenizer(sft / "model")
    model = AutoModelForCausalLM.from_pretrained(sft / "model").eval()
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(template="compact"), "Shop"), ds.catalogue)
    negs = sample_negatives([e.target for e in ds.train], enc, negatives, 0)
    example = ds.train[2]
    prompt = enc.prompt_ids(example.history)
    with torch.no_grad():
        for j, item in enumerate([example.target, *negs[2]]):
            target = enc.target_ids(item)
            lp = model(torch.tensor([prompt + target])).logits[0, len(prompt) - 1:-1].log_softmax(-1)
            assert float(cached[2, j]) == pytest.approx(float(lp[range(len(target)), target].sum()), abs=1e-4)
    assert all(ds.catalogue.title(n) != ds.catalogue.title(e.target) for e, group in zip(ds.train, negs) for n in group)


def test_rosepo_negatives_and_first_loss(tmp_path):
    """rosepo from an SFT start: the policy equals the reference at the first step, so every margin
    is 0 and the first loss is log 2 whatever eps; its negatives are, per example, the SFT model's
    best-scoring title other than the target's (B = 2 constrained beam search) and a trained-on title
    other than the target's."""
    from transformers import AutoModelForCausalLM

    from bearrec.config import PromptConfig
    from bearrec.data.encode import Encoder
    from bearrec.data.prompts import PromptTemplate
    from bearrec.decoding import beam_search
    from bearrec.modeling import load_tokenizer
    from bearrec.preference import rosepo_negatives

    data = write_authors(tmp_path / "Shop")
    sft = train(_cfg(data, tmp_path / "sft", "loss.name=sft", "train.epochs=1", "train.eval_test=false",
                     "data.valid_fraction=0.0"))
    run = train(_cfg(data, tmp_path / "rosepo", "loss.name=rosepo", f"model.name_or_path={sft / 'model'}",
                     "loss.rosepo.smoothing=0.2", "train.epochs=1", "train.eval_test=false", "data.valid_fraction=0.0"))
    assert _first_losses(run)[0] == pytest.approx(math.log(2), abs=1e-3)
    ds = load_authors_dir(data, valid_fraction=0.0)
    assert torch.load(run / "reference_logps.pt")["values"].shape == (len(ds.train), 3)
    tok = load_tokenizer(sft / "model")
    model = AutoModelForCausalLM.from_pretrained(sft / "model").eval()
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(template="compact"), "Shop"), ds.catalogue)
    negs = rosepo_negatives(model, enc, ds.train, ["self", "popular"], 0)
    title = ds.catalogue.title
    trained = {title(e.target) for e in ds.train}
    for e, (own, popular) in zip(ds.train, negs):
        (ranked,) = beam_search(model, enc.trie, [enc.prompt_ids(e.history)], 2, pad_token_id=tok.pad_token_id)
        best_wrong = next(n for n in ranked.nodes if title(enc.trie.items_at(n)[0]) != title(e.target))
        assert title(own) == title(enc.trie.items_at(best_wrong)[0])
        assert title(popular) not in (title(e.target), title(own)) and title(popular) in trained
    assert rosepo_negatives(model, enc, ds.train, ["self", "popular"], 0) == negs  # seeded


@pytest.mark.parametrize("override, message", [
    ("loss.rosepo.smoothing=0.6", "loss.rosepo.smoothing must be"),
    ("loss.rosepo.negatives=[self,random]", "loss.rosepo.negatives must be distinct strategies"),
    ("loss.rosepo.negatives=[]", "loss.rosepo.negatives must be distinct strategies")])
def test_bad_rosepo_settings(override, message):
    from bearrec.config import load_config
    from bearrec.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, ["loss.name=rosepo", override])


def test_too_many_negatives_is_a_clear_error(tmp_path, capsys):
    data = write_authors(tmp_path / "Shop")  # 5 distinct titles
    argv = ["train", f"data.name={data}", f"output_dir={tmp_path / 'run'}", *TINY, "loss.name=sdpo",
            "loss.pref.num_negatives=5", "data.valid_fraction=0.0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "num_negatives (5) must be below the number of distinct titles (5)" in err and "Traceback" not in err


def test_history_free_prompt_logits_equal_unpadded_teacher_forcing(data_dir, tmp_path):
    """cft's second pass: the plain batch has the same response positions and targets, and its logits
    there are those of each target after the history-free prompt alone."""
    from bearrec.needs import PlainPromptCollator

    cfg = _cfg(data_dir, tmp_path / "run")
    ds = load_authors_dir(data_dir, valid_fraction=0.25)
    encoder, model = build_encoder_and_model(cfg, ds)
    model.eval()
    encoded = encoder.encode_all(ds.train)
    plain_ids = encoder.plain_prompt_ids()
    assert plain_ids == encoder.tokenizer("Next:\n")["input_ids"]
    collate = PlainPromptCollator(Collator(encoder.tokenizer.pad_token_id), plain_ids)
    batch = collate([TrainingSet(encoded, encoder)[i] for i in range(len(encoded))])
    with torch.no_grad():
        got = model(**batch["plain"]).logits[batch["resp_rows"], batch["resp_cols"]]
        expected = []
        for e in encoded:
            full = model(torch.tensor([plain_ids + e.target_ids])).logits[0]
            expected.append(full[len(plain_ids) - 1: len(plain_ids) - 1 + len(e.target_ids)])
    assert torch.allclose(got, torch.cat(expected), atol=1e-4)
    assert batch["targets"].tolist() == [t for e in encoded for t in e.target_ids]


@pytest.mark.parametrize("name, neutral, active", [
    ("cft", ["loss.cft.alpha=0", "loss.cft.beta=1"], ["loss.cft.alpha=0.5"]),
    ("d2lr", ["loss.d2lr.beta=0"], ["loss.d2lr.beta=0.4", "loss.d2lr.alpha=0.5"]),
    ("igd", ["loss.igd.beta=1"], ["loss.igd.beta=0.1"]),
])
def test_baselines_train_and_reduce_to_sft(tmp_path, name, neutral, active):
    """With their neutral settings cft, d2lr and igd are exactly the sft run; with others they change
    the loss from the first step and train with finite losses."""
    data = write_authors(tmp_path / "Shop")
    common = ["train.epochs=2", "train.eval_test=false", "data.valid_fraction=0.0"]
    sft = _first_losses(train(_cfg(data, tmp_path / "sft", "loss.name=sft", *common)))
    same = _first_losses(train(_cfg(data, tmp_path / "same", f"loss.name={name}", *neutral, *common)))
    other = _first_losses(train(_cfg(data, tmp_path / "other", f"loss.name={name}", *active, *common)))
    assert same == pytest.approx(sft, abs=1e-6)
    assert other[0] != pytest.approx(sft[0], abs=1e-4) and all(map(math.isfinite, other))


@pytest.mark.parametrize("name, label", [("cft", "cft"), ("d2lr", "d2lr-reconstructed"), ("igd", "igd-tuning")])
def test_bearrec_run_of_a_baseline_reports_its_label(tmp_path, capsys, name, label):
    from bearrec.report import load_run

    data = write_authors(tmp_path / "Shop")
    out = tmp_path / name
    argv = ["run", f"data.name={data}", "data.valid_fraction=0.25", f"output_dir={out}", *TINY, "train.epochs=1",
            f"loss.name={name}", "decode.constrained_softmax=false", "analysis.pruning_users=0", "decode.ks=[1,3]"]
    assert main(argv) == 0
    capsys.readouterr()
    assert f"- loss: `{name}` (" in (out / "report.md").read_text()
    assert load_run(out)["method"] == label
