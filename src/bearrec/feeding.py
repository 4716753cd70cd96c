"""The model side of the beam search: prefill the prompts, feed beams their tokens, score the trie
children of the beams that need scores.

With the shared-prefix cache (`bearrec.prefix_attention`, where the architecture allows) the prompts'
common prefix (the template's instruction: 76 tokens of ~250 on Office) is computed once for the
batch, the rest of each prompt is packed without padding, and a beam is fed only when the decoder
asks for its state: it may then take several tokens at once (those of a forced chain it walked
without being scored, see `bearrec.chains`). Without it, Hugging Face's cache: padded prefill, every
beam fed its last token at every step.

Host synchronisation: all layouts are computed on the host; index tensors reach the device in one
pinned non-blocking copy per forward (`prefix_attention.to_device`); the one device -> host copy is
the child log-probabilities that `child_log_probs` returns (the beam bookkeeping is on the host).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from bearrec import prefix_attention, ragged
from bearrec.modeling import unwrap_peft
from bearrec.prefix_attention import to_device


def _split_model(model):
    """(backbone, lm_head, full_logits_only) for a causal LM, a peft wrapper included."""
    base = unwrap_peft(model)
    cfg = base.config
    backbone = getattr(base, base.base_model_prefix, None)
    head = base.get_output_embeddings()
    special = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)
    if backbone is None or head is None or special or not isinstance(head, torch.nn.Linear):
        return base, None, True
    return backbone, head, False


class _Scorer:
    """Hidden states at chosen positions -> log-probabilities of the trie children of each row."""

    def __init__(self, model, constrained_softmax: bool):
        self.model = model
        self.device = next(model.parameters()).device
        self.backbone, self.head, self.full_only = _split_model(model)
        self.constrained = constrained_softmax

    def forward(self, input_ids, attention_mask, position_ids, cache, keep: torch.Tensor | None = None):
        """States at the last position of each row, or (`keep`: device indices) at the positions
        `keep` of the one packed row. Inputs on the device already."""
        if self.full_only:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                cache=cache, use_cache=True, logits_to_keep=1 if keep is None else keep)
            return (out.logits[:, -1] if keep is None else out.logits[0]).float(), out.cache
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, use_cache=True)
        hidden = out.last_hidden_state
        return (hidden[:, -1] if keep is None else hidden[0, keep]), out.cache

    def child_log_probs(self, state: torch.Tensor, rows: torch.Tensor, toks: torch.Tensor,
                        counts: torch.Tensor, host: bool = True) -> torch.Tensor:
        """`state`: hidden states (or full logits) of the rows; children flat (row, token), host
        tensors. Returns float32 log-probs on the host, where the beam bookkeeping lives (`host`
        False: on the device, for a caller that copies several at once)."""
        if len(toks) == 0:
            return torch.zeros(0)
        out = self._child_log_probs(state, rows, toks, counts)
        return out.cpu() if host else out

    def _child_log_probs(self, state, rows, toks, counts):
        width = ragged.padded_width(counts)
        offsets = ragged.segment_offsets(counts, rows)
        if self.full_only or not self.constrained:
            rows_d, toks_d, offsets_d = to_device(self.device, rows, toks, offsets)
            logits = state.float() if self.full_only else self.head(state).float()
            if self.constrained:
                return _segment_log_softmax(logits[rows_d, toks_d], rows_d, offsets_d, len(counts), width)
            return logits.log_softmax(-1)[rows_d, toks_d]
        uniq, inverse = torch.unique(toks, return_inverse=True)  # on the host
        rows_d, uniq_d, inverse_d, offsets_d = to_device(self.device, rows, uniq, inverse, offsets)
        sub = state @ self.head.weight[uniq_d].T
        if self.head.bias is not None:
            sub = sub + self.head.bias[uniq_d]
        return _segment_log_softmax(sub.float()[rows_d, inverse_d], rows_d, offsets_d, len(counts), width)


def _segment_log_softmax(values, ids, offsets, num_segments: int, width: int) -> torch.Tensor:
    """`ragged.segment_log_softmax` with the layout given (no device -> host reads)."""
    table = ragged.scatter_padded(values, ids, offsets, num_segments, width, float("-inf"))
    return values - torch.logsumexp(table, dim=1)[ids]


def _common_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one of its own."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return n


class Prefilled:
    """The prefill stage and the cache the beams extend. `state` holds the last-position states of
    the current rows (one per prompt after the prefill)."""

    def __init__(self, model, prompts: list[list[int]], constrained_softmax: bool, pad_token_id: int,
                 shared_prefix: bool | None):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.model, self.scorer = model, _Scorer(model, constrained_softmax)
        self.device = self.scorer.device
        self.shared = prefix_attention.supports(model) if shared_prefix is None else shared_prefix
        if self.shared:
            self._prefill_shared(prompts)
            return
        input_ids, self.prompt_mask = ragged.pad_sequences(prompts, pad_token_id)
        self.prompt_len = self.prompt_mask.sum(1)
        positions = ragged.position_ids(self.prompt_mask)
        self.state, self.cache = self.scorer.forward(*to_device(self.device, input_ids, self.prompt_mask, positions),
                                                     None)

    def fork(self, constrained_softmax: bool) -> "Prefilled":
        """This prefill, scored under `constrained_softmax`, for another search: the prompts' K/V and
        last states are shared, not computed again (shared-prefix cache, before anything is generated)."""
        if not self.shared or self.cache.gen_k[0] is not None or bool(self.cache.length.any()):
            raise ValueError("fork needs the shared-prefix cache with nothing generated yet")
        twin = copy.copy(self)
        twin.scorer = copy.copy(self.scorer)
        twin.scorer.constrained = constrained_softmax
        twin.cache = self.cache.fresh()
        return twin

    def _prefill_shared(self, prompts: list[list[int]]) -> None:
        """The common prefix once (the model's own attention), then every prompt's rest packed."""
        n, common = len(prompts), _common_prefix(prompts)
        layers = unwrap_peft(self.model).config.num_hidden_layers
        pk = pv = mask = None
        if common:
            ids = torch.tensor([prompts[0][:common]])
            _, prefix_cache = self.scorer.forward(*to_device(self.device, ids, torch.ones_like(ids),
                                                             torch.arange(common)[None]), None)
            pk, pv = [la.keys for la in prefix_cache.layers], [la.values for la in prefix_cache.layers]
            mask = torch.ones((1, common), dtype=torch.long)
        cache = prefix_attention.SharedPrefixCache(pk, pv, mask, layers, torch.zeros(n, dtype=torch.long))
        rest = torch.tensor([len(p) - common for p in prompts])
        tokens = torch.tensor([t for p in prompts for t in p[common:]])
        self.cache = cache
        states = self._feed_packed(torch.arange(n), rest, tokens, common + cache.plan(torch.arange(n), rest, self.device))
        # each user's prompt = the common prefix + its own part, padded on the right
        width = int(rest.max())
        own_mask = (torch.arange(width)[None] < rest[:, None]).long()
        own_k = [k[:, :, :width] for k in cache.gen_k]
        own_v = [v[:, :, :width] for v in cache.gen_v]
        if common:
            own_k = [torch.cat([p.expand(n, -1, -1, -1), k], dim=2) for p, k in zip(pk, own_k)]
            own_v = [torch.cat([p.expand(n, -1, -1, -1), v], dim=2) for p, v in zip(pv, own_v)]
            own_mask = torch.cat([torch.ones((n, common), dtype=torch.long), own_mask], dim=1)
        self.cache = prefix_attention.SharedPrefixCache(own_k, own_v, own_mask, layers, torch.arange(n))
        self.prompt_len = common + rest
        self.state = states

    def _feed_packed(self, rows, counts, tokens, positions, keep: int | None = 1) -> torch.Tensor:
        """Forward the planned feed; the states of each fed row's last `keep` tokens (row-major;
        None: of every token fed)."""
        if keep is None:
            last = torch.arange(len(tokens))
        else:
            last = ((ragged.segment_starts(counts) + counts - keep)[:, None] + torch.arange(keep)).reshape(-1)
        ids, pos, keep = to_device(self.device, tokens[None], positions[None], last)
        attn = torch.zeros((1, 1, 1, 1), device=self.device)  # 4-D: the model skips mask building; unused
        with prefix_attention.active(self.model, self.cache):
            state, _ = self.scorer.forward(ids, attn, pos, self.cache, keep=keep)
        return state

    def feed_sequences(self, sequences: list[list[int]], prompt_of: list[int] | None = None) -> None:
        """Score whole token sequences after the prompts in one forward (shared-prefix cache only):
        sequence i follows prompt `prompt_of[i]` (None: every sequence the one prompt) and becomes a
        row fed all its tokens but the last; `state` then holds, row-major, the state before each
        token of each sequence (its prompt's last state, then the state after each fed token), so
        `child_log_probs` can score every token of every sequence at once."""
        prompts = len(self.prompt_len)
        if not self.shared or len(self.cache.length) != prompts or (
                len(sequences) != len(prompt_of) if prompt_of is not None else prompts > 1):
            raise ValueError("feed_sequences needs the shared-prefix cache, nothing generated, and the prompt of "
                             "every sequence")
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ValueError("every sequence needs at least one token")
        prompt_of = [0] * len(sequences) if prompt_of is None else list(prompt_of)
        if any(not 0 <= p < prompts for p in prompt_of):
            raise ValueError(f"prompt_of names a prompt outside 0..{prompts - 1}")
        owner = torch.tensor(prompt_of, dtype=torch.long)
        fed = torch.tensor([len(s) - 1 for s in sequences])
        prompt_state = self.state[:prompts]
        self.cache.reorder(owner)
        need = torch.nonzero(fed > 0).flatten()
        states = prompt_state[:0]
        if len(need):
            counts = fed[need]
            tokens = torch.tensor([t for i in need.tolist() for t in sequences[i][:-1]])
            cols = self.cache.plan(need, counts, self.device)
            slot = ragged.segment_ids(counts)
            states = self._feed_packed(need, counts, tokens, self.prompt_len[owner[need][slot]] + cols, keep=None)
        starts = torch.zeros(len(sequences), dtype=torch.long)
        starts[need] = ragged.segment_starts(fed[need])
        own = [[len(states) + p] + list(range(int(b), int(b) + int(n))) for p, b, n in zip(prompt_of, starts, fed)]
        index = torch.tensor([i for row in own for i in row])
        self.state = torch.cat([states, prompt_state])[to_device(self.device, index)[0]]

    def attention(self):
        """Context in which `advance` must run (routes attention to the shared-prefix kernel)."""
        return prefix_attention.active(self.model, self.cache) if self.shared else nullcontext()

    def child_log_probs(self, rows: torch.Tensor, toks: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (float32, host) of the children `toks` of the current rows: ragged, row
        `rows[i]` for child i, `counts` children per row."""
        return self.scorer.child_log_probs(self.state, rows, toks, counts)

    def advance(self, parent: torch.Tensor, row_prompt: torch.Tensor, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Every row: rows `parent` (of the previous rows) each take `tokens`; `step` tokens
        generated so far, this one included. Returns the new last-position states."""
        all_rows = torch.arange(len(parent))
        return self.feed(parent, row_prompt, tokens[:, None], torch.full((len(parent),), step - 1), all_rows, step)

    def feed(self, row: torch.Tensor, row_prompt: torch.Tensor, tokens: torch.Tensor, fed: torch.Tensor,
             need: torch.Tensor, steps: int, keep: int = 1) -> torch.Tensor:
        """Beams in cache rows `row` (host, of the current rows; the cache follows them, they become
        rows 0..M-1); beam i has `fed[i]` of its first `steps` tokens in the cache (`tokens` holds
        the last columns of those). The beams `need` (ascending) are fed the rest; returns their
        states (device), with `keep` > 1 (shared cache only) those of their last `keep` tokens."""
        if steps == 0:
            self.state = self.state[to_device(self.device, row[need])[0]]
            return self.state
        if not self.shared:  # Hugging Face's cache: every beam, one token, every step
            self.cache.reorder_cache(to_device(self.device, row)[0])
            attn = torch.cat([self.prompt_mask[row_prompt], torch.ones((len(row), steps), dtype=torch.long)], dim=1)
            pos = (self.prompt_len[row_prompt] + steps - 1)[:, None]
            self.state, self.cache = self.scorer.forward(*to_device(self.device, tokens[:, -1:], attn, pos), self.cache)
            return self.state
        if not (len(row) == len(self.cache.length) and bool((row == torch.arange(len(row))).all())):
            self.cache.reorder(row)
        counts = steps - fed[need]
        cols = self.cache.plan(need, counts, self.device)
        slot = ragged.segment_ids(counts)
        flat = tokens[need[slot], tokens.shape[1] - steps + cols]
        self.state = self._feed_packed(need, counts, flat, self.prompt_len[row_prompt[need][slot]] + cols, keep)
        return self.state
