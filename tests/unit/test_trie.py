import random

import pytest
import torch

from bearrec.trie import DEAD, TitleTrie

EOS = 0


def _oracle(paths):
    """A plain dict-of-dicts trie: prefix tuple -> sorted next tokens."""
    nxt = {}
    for path in paths:
        for i in range(len(path)):
            nxt.setdefault(tuple(path[:i]), set()).add(path[i])
    return {k: sorted(v) for k, v in nxt.items()}


def _small():
    # "5 6" is a token-prefix of "5 6 7" and of "5 6 8"; titles 1 and 4 share one path (duplicate title).
    paths = [[5, 6, EOS], [5, 6, 7, EOS], [5, 6, 8, EOS], [9, EOS]]
    items = [[1, 4], [2], [3], [5]]
    return TitleTrie(paths, items, EOS), paths


def test_prefix_titles_and_terminals():
    trie, _ = _small()
    assert trie.next_tokens([]) == [5, 9]
    assert trie.next_tokens([5, 6]) == [EOS, 7, 8]  # EOS is an explicit terminal beside longer titles
    assert trie.next_tokens([5, 6, 7]) == [EOS]
    assert trie.next_tokens([5, 7]) == []
    assert trie.items_at(trie.node_of([5, 6, EOS])) == (1, 4)
    assert trie.items_at(trie.node_of([5, 6])) == ()
    assert trie.contains([5, 6, 8, EOS]) and not trie.contains([5, 6]) and not trie.contains([5, 6, 8])
    assert len(trie) == 4 and trie.num_nodes == 10  # root, 5, 56, 56$, 567, 567$, 568, 568$, 9, 9$
    assert trie.item_paths[4] == (5, 6, EOS)


def test_batched_step_children_and_mask():
    trie, _ = _small()
    n56 = trie.node_of([5, 6])
    nodes = torch.tensor([0, n56, DEAD, trie.node_of([9])])
    assert trie.step(nodes, torch.tensor([5, 8, 5, EOS])).tolist() == [
        trie.node_of([5]), trie.node_of([5, 6, 8]), DEAD, trie.node_of([9, EOS])]
    assert trie.step(torch.tensor([0, 0]), torch.tensor([6, 10_000])).tolist() == [DEAD, DEAD]
    counts, toks, children = trie.children(nodes)
    assert counts.tolist() == [2, 3, 0, 1]
    assert toks.tolist() == [5, 9, EOS, 7, 8, EOS]
    assert children.tolist() == trie.step(torch.tensor([0, 0, n56, n56, n56, nodes[3]]), toks).tolist()
    mask = trie.allowed_mask(nodes, vocab_size=12)
    assert mask.shape == (4, 12)
    assert [row.nonzero().flatten().tolist() for row in mask] == [[5, 9], [EOS, 7, 8], [], [EOS]]


def test_random_tries_match_the_dict_oracle():
    rng = random.Random(0)
    for _ in range(20):
        titles = {tuple(rng.randint(1, 12) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 40))}
        paths = [[*t, EOS] for t in titles]
        trie = TitleTrie(paths, [[i] for i in range(len(paths))], EOS)
        oracle = _oracle(paths)
        prefixes = list(oracle) + [(13,), (1, 1, 1, 1, 1, 1, 1)]
        nodes = torch.tensor([trie.node_of(p) for p in prefixes])
        counts, toks, _ = trie.children(nodes)
        got = torch.split(toks, counts.tolist())
        for prefix, allowed in zip(prefixes, got):
            assert allowed.tolist() == oracle.get(prefix, []), prefix
        assert trie.contains_all(paths).all()
        assert trie.terminals(paths).tolist() == [trie.node_of(p) for p in paths]


def test_forced_run_counts_the_one_child_steps_ahead():
    trie, _ = _small()
    run = lambda prefix: int(trie.forced_run[trie.node_of(prefix)])
    assert [run([]), run([5]), run([5, 6]), run([5, 6, 7]), run([9]), run([9, EOS])] == [0, 1, 0, 1, 1, 0]
    rng = random.Random(1)
    for _ in range(10):  # against a walk: steps until a node with several children or none
        titles = {tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 15))}
        paths = [[*t, EOS] for t in titles]
        trie = TitleTrie(paths, [[i] for i in range(len(paths))], EOS)
        for path in paths:
            for i in range(len(path) + 1):
                steps, prefix = 0, list(path[:i])
                while len(trie.next_tokens(prefix)) == 1:
                    prefix.append(trie.next_tokens(prefix)[0])
                    steps += 1
                assert int(trie.forced_run[trie.node_of(path[:i])]) == steps


def test_walk_gives_the_node_before_each_token():
    trie, _ = _small()
    assert trie.walk([5, 6, 7, EOS]) == [0, trie.node_of([5]), trie.node_of([5, 6]), trie.node_of([5, 6, 7])]
    with pytest.raises(KeyError, match="leaves the trie"):
        trie.walk([5, 7])


@pytest.mark.parametrize("paths, fragment", [
    ([[5, 6]], "must end with EOS"),
    ([[5, EOS, 6, EOS]], "must end with EOS"),
    ([[5, EOS], [5, EOS]], "share the token path"),
])
def test_bad_paths(paths, fragment):
    with pytest.raises(ValueError, match=fragment):
        TitleTrie(paths, [[i] for i in range(len(paths))], EOS)
