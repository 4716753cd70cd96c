"""Extra batch inputs (`bearrec.methods.NEEDS`) that training builds only for the methods that declare
them; "thresholds" and "preference" live in `bearrec.training` and `bearrec.preference`.

- "plain_prompt" (cft): every example collated a second time after the history-free prompt
  (`PromptTemplate.render_without_history`) by the same left-padding collator. The response
  positions (`resp_rows`, `resp_cols`) depend only on the targets' lengths, so they are the same in
  both: position t is the same target token after either prompt. `batch_loss` runs the second
  forward pass (with gradients) and hands its response logits to the method as `Batch.plain_logits`.
- "target_counts" (d2lr, igd): the run's training targets counted on the trie
  (`bearrec.popularity.TargetCounts`), computed once; `batch_loss` hands it to the method with each
  response token's trie node (`Batch.counts`, `Batch.nodes`).
"""

from __future__ import annotations

from bearrec.popularity import TargetCounts

PLAIN_KEYS = ("input_ids", "attention_mask", "position_ids", "logits_to_keep")


class PlainPromptCollator:
    """Wraps the plain `Collator`: adds `plain`, the model inputs of the same targets after `plain_ids`."""

    def __init__(self, collator, plain_ids: list[int]):
        self.collator, self.plain_ids = collator, list(plain_ids)
        self.pad_token_id = collator.pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        plain = self.collator([{**f, "prompt_ids": self.plain_ids} for f in features])
        batch["plain"] = {k: plain[k] for k in PLAIN_KEYS}
        return batch


def prepare(method, encoder, train_rows, collator):
    """(collator, target counts or None) for `method`'s needs, from the rows it trains on."""
    if "plain_prompt" in method.needs:
        collator = PlainPromptCollator(collator, encoder.plain_prompt_ids())
    counts = TargetCounts(encoder.trie, [r.target for r in train_rows]) if "target_counts" in method.needs else None
    return collator, counts
