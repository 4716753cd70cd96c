"""SASRec (Kang and McAuley, ICDM 2018) through cornac: a conventional reference, not a fine-tuning
loss; `bearrec run` trains it on the run's training rows (`bearrec.conventional`)."""

from bearrec.methods import Method


def _not_a_loss(batch):
    raise ValueError("sasrec is not a fine-tuning loss: `bearrec run` trains it (bearrec.conventional)")


def _train(cfg) -> None:
    from bearrec.conventional import train_sasrec

    train_sasrec(cfg)


def _describe(loss: dict) -> str:
    s = loss["sasrec"]
    return (f"`sasrec` (cornac; d={s['embedding_dim']}, {s['num_blocks']} blocks, {s['epochs']} epochs, "
            f"lr {s['learning_rate']}, max_len {s['max_len']})")


METHODS = (Method("sasrec", _not_a_loss, "SASRec through cornac on the same training rows: a conventional reference",
                  sections=("sasrec",), train=_train, describe=_describe),)
