"""bearrec.stats: per-seed differences, the two-stage (seeds, then users) bootstrap, the old user bootstrap."""

import math

import numpy as np
import pytest

from bearrec.stats import hierarchical_bootstrap, per_seed_differences, t_quantile, user_bootstrap

# two seeds, users 1-3 in every run; user 4 and seed 2 appear in one method only and must be ignored
A = {0: {1: 0.5, 2: 0.0, 3: 1.0, 4: 1.0}, 1: {1: 0.0, 2: 0.25, 3: 1.0}, 2: {1: 1.0, 2: 1.0, 3: 1.0}}
B = {0: {1: 0.0, 2: 0.0, 3: 0.5}, 1: {1: 0.5, 2: 0.25, 3: 0.25, 4: 0.0}}


def as_runs(matrix):
    """(seeds, users) array -> seed -> {user: score}."""
    return {s: dict(enumerate(row.tolist())) for s, row in enumerate(matrix)}


def simulate(rng, seeds=5, users=300, seed_sd=0.01, noise_sd=0.05, user_sd=0.0, delta=0.0):
    """Per-user scores of two methods: user base rate shared by both, a per-run seed effect added to every
    user of that run, independent per-run noise, and optionally a per-user preference for A (user_sd)
    that persists across seeds. The true difference mean(A) - mean(B) is `delta`."""
    base = rng.uniform(0.0, 0.3, users)
    pref = rng.normal(0.0, user_sd, users) if user_sd else 0.0
    a = base + pref + delta + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, noise_sd, (seeds, users))
    b = base + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, noise_sd, (seeds, users))
    return a, b


def excludes_zero(result):
    return not result["low"] <= 0.0 <= result["high"]


def test_per_seed_differences_by_hand():
    d = per_seed_differences(A, B)
    assert sorted(d) == [0, 1]
    assert d[0] == pytest.approx((0.5 + 0.0 + 0.5) / 3)  # 1/3
    assert d[1] == pytest.approx((-0.5 + 0.0 + 0.75) / 3)  # 1/12


def test_per_seed_differences_errors():
    with pytest.raises(ValueError, match="users"):
        per_seed_differences({0: {1: 1.0}}, {0: {2: 1.0}})
    with pytest.raises(ValueError, match="seed"):
        per_seed_differences({0: {1: 1.0}}, {1: {1: 1.0}})


def test_two_seeds_give_per_seed_differences_only():
    r = hierarchical_bootstrap(A, B)
    assert r["low"] is None and r["high"] is None
    assert r["reason"] == "fewer than 3 seeds per method: per-seed differences only"
    assert r["per_seed"] == pytest.approx({0: 1 / 3, 1: 1 / 12})
    # A has seeds 0-2, B 0-1: unpaired, every seed counts: A (0.5 + 5/12 + 1) / 3 - B (1/6 + 1/3) / 2
    assert r["mean"] == pytest.approx((0.5 + 5 / 12 + 1) / 3 - 0.25)
    assert (r["seeds"], r["users"]) == ({"a": 3, "b": 2}, 3)
    paired = hierarchical_bootstrap({k: v for k, v in A.items() if k < 2}, B)
    assert paired["mean"] == pytest.approx((1 / 3 + 1 / 12) / 2) and paired["seeds"] == 2


def test_three_seeds_give_an_interval_around_the_mean():
    a, b = simulate(np.random.default_rng(0), seeds=3, users=50, delta=0.02)
    r = hierarchical_bootstrap(as_runs(a), as_runs(b), samples=500)
    assert r["seeds"] == 3 and "reason" not in r
    assert r["mean"] == pytest.approx((a - b).mean())
    assert r["low"] < r["mean"] < r["high"]
    assert r["per_seed"] == pytest.approx(dict(enumerate((a - b).mean(axis=1))))


@pytest.mark.parametrize("df, p, expected", [(4, 0.975, 2.7764), (2, 0.975, 4.3027), (9, 0.975, 2.2622),
                                               (29, 0.975, 2.0452), (4, 0.95, 2.1318), (1, 0.975, 12.7062)])
def test_t_quantile_matches_tables(df, p, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-4)


@pytest.mark.parametrize("small_sample", [True, False])
@pytest.mark.parametrize("user_draw", ["shared", "per_seed"])
def test_constant_difference_gives_a_point_interval(user_draw, small_sample):
    # dyadic scores (multiples of 1/8) and 4 seeds keep every mean exact in floating point
    base = np.random.default_rng(1).integers(0, 8, (4, 20)) / 8
    r = hierarchical_bootstrap(as_runs(base + 0.125), as_runs(base), samples=200, user_draw=user_draw,
                               small_sample=small_sample)
    assert (r["mean"], r["low"], r["high"]) == (0.125, 0.125, 0.125)


@pytest.mark.parametrize("n", [5, 10])
def test_seed_only_differences_give_the_t_interval(n):
    # every user of seed i differs by d_i: no user variance, so the corrected interval is mean +- t_{n-1} s / sqrt(n)
    rng = np.random.default_rng(5 + n)
    d, base = rng.normal(0.02, 0.01, n), rng.uniform(0, 1, (n, 30))
    runs = as_runs(base + d[:, None]), as_runs(base)
    half = t_quantile(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    r = hierarchical_bootstrap(*runs, samples=4000)
    assert r["mean"] == pytest.approx(d.mean())
    assert (r["high"] - r["low"]) / (2 * half) == pytest.approx(1.0, abs=0.06)
    assert (r["low"] + r["high"]) / 2 == pytest.approx(d.mean(), abs=0.1 * half)
    # uncorrected: normal tails and the (n-1)/n bootstrap variance, width ~ z/t sqrt((n-1)/n) of the t interval
    u = hierarchical_bootstrap(*runs, samples=4000, small_sample=False)
    shrink = 1.959964 / t_quantile(0.975, n - 1) * math.sqrt((n - 1) / n)
    assert (u["high"] - u["low"]) / (2 * half) == pytest.approx(shrink, abs=0.06)


def test_unpaired_seeds():
    base = np.random.default_rng(2).integers(0, 8, 20) / 8  # same per-user values in every run
    a = {s: dict(enumerate((base + 0.25).tolist())) for s in (0, 1, 2, 3)}  # 4 seeds: exact weights
    b = {s: dict(enumerate(base.tolist())) for s in (10, 11, 12, 13)}
    r = hierarchical_bootstrap(a, b, samples=200)
    assert "unpaired" in r["method"]
    assert (r["mean"], r["low"], r["high"]) == (0.25, 0.25, 0.25)
    del b[13], b[12]  # 2 seeds for B: too few
    assert hierarchical_bootstrap(a, b)["low"] is None


def test_unpaired_small_sample_correction_widens_the_interval():
    a, b = simulate(np.random.default_rng(4), seeds=4, users=50, seed_sd=0.01, noise_sd=0.01)
    ra, rb = as_runs(a), {s + 10: run for s, run in as_runs(b).items()}  # no shared seed: unpaired
    r = hierarchical_bootstrap(ra, rb, samples=1000)
    u = hierarchical_bootstrap(ra, rb, samples=1000, small_sample=False)
    assert "unpaired" in r["method"] and r["mean"] == u["mean"]
    assert r["low"] < u["low"] < u["high"] < r["high"]


def test_user_bootstrap_is_the_old_paired_user_bootstrap():
    r = user_bootstrap({1: 0.5, 2: 0.25, 3: 1.0}, {1: 0.25, 2: 0.0, 3: 0.75, 4: 1.0}, samples=100)
    assert r["users"] == 3 and (r["mean"], r["low"], r["high"]) == (0.25, 0.25, 0.25)
    r = user_bootstrap({1: 1.0, 2: 0.0}, {1: 0.0, 2: 0.0}, samples=1000)
    assert r["mean"] == 0.5 and r["low"] == 0.0 and r["high"] == 1.0  # resample means lie in {0, 0.5, 1}


def false_positive_rates(reps, **sim):
    """Share of repetitions whose 95% interval excludes 0, for each estimator, when the true difference is 0."""
    rng = np.random.default_rng(2024)
    hits = {"shared": 0, "shared_uncorrected": 0, "per_seed": 0, "old": 0}
    for rep in range(reps):
        a, b = simulate(rng, **sim)
        ra, rb = as_runs(a), as_runs(b)
        for draw in ("shared", "per_seed"):
            hits[draw] += excludes_zero(hierarchical_bootstrap(ra, rb, samples=400, seed=rep, user_draw=draw))
        uncorrected = hierarchical_bootstrap(ra, rb, samples=400, seed=rep, small_sample=False)
        hits["shared_uncorrected"] += excludes_zero(uncorrected)
        old = user_bootstrap(dict(enumerate(a.mean(axis=0))), dict(enumerate(b.mean(axis=0))), samples=400, seed=rep)
        hits["old"] += excludes_zero(old)
    return {k: v / reps for k, v in hits.items()}


def test_false_positive_rate_with_large_seed_variance():
    # seed effect sd 0.01 per run >> per-user noise once averaged over 300 users (0.05 / sqrt(300) = 0.003)
    rates = false_positive_rates(200, seed_sd=0.01, noise_sd=0.05)
    # measured here: shared 0.025 (uncorrected 0.12), per_seed 0.03, old 0.60; other data, 1000 reps: shared
    # 0.035 (uncorrected 0.125), per_seed 0.042 (uncorrected 0.146); exact t test on per-seed differences 0.047.
    # Uncorrected, a percentile bootstrap over 5 seeds lacks t tails. Corrected, it is a little conservative:
    # the per-user noise counts in both the per-seed means and the user stage.
    assert 0.01 <= rates["shared"] <= 0.07
    assert rates["shared_uncorrected"] >= 0.08  # the defect the small-sample correction fixes
    assert rates["old"] >= 0.4  # the defect: seed-averaged user bootstrap ignores seed variance


def test_false_positive_rate_with_persistent_per_user_differences():
    # no seed variance; each user prefers one method by the same amount in every seed (mean 0 over users)
    rates = false_positive_rates(200, seed_sd=0.0, noise_sd=0.05, user_sd=0.1)
    # measured here: shared 0.045 (uncorrected 0.06), per_seed 0.17 (uncorrected 0.24), old 0.055; other data,
    # 1000 reps: shared 0.040 (uncorrected 0.044), per_seed 0.174 (uncorrected 0.224), old 0.054
    assert rates["shared"] <= 0.06 and rates["shared_uncorrected"] <= 0.08 and rates["old"] <= 0.08
    assert rates["per_seed"] >= 0.12  # users resampled within each seed: user variance divided by #seeds


def test_large_true_difference_is_detected():
    a, b = simulate(np.random.default_rng(3), seed_sd=0.01, noise_sd=0.05, delta=0.05)
    r = hierarchical_bootstrap(as_runs(a), as_runs(b), samples=1000)  # small-sample corrected
    assert 0.0 < r["low"] < 0.05 < r["high"] < 0.1  # measured [0.033, 0.079] (uncorrected [0.042, 0.072])


def test_seed_t_interval_by_hand():
    from bearrec.stats import seed_t_interval

    # differences 1, 2, 3: mean 2, s = 1, half-width t_2(0.975) / sqrt(3) = 4.30265 / 1.73205 = 2.48414
    got = seed_t_interval([1.0, 2.0, 3.0])
    assert got["mean"] == pytest.approx(2.0) and got["high"] == pytest.approx(2 + 2.48414, abs=1e-4)
    assert got["low"] == pytest.approx(2 - 2.48414, abs=1e-4) and got["seeds"] == 3
    assert seed_t_interval([0.5, 0.1])["low"] is None


def test_partly_shared_seeds_are_not_thrown_away():
    """a has seeds 0-4, b seeds 0 and 5-7: pairing on seed 0 alone would drop seven runs."""
    users = range(20)
    a = {s: {u: 0.1 * s for u in users} for s in range(5)}  # mean 0.2
    b = {s: {u: 0.0 for u in users} for s in (0, 5, 6, 7)}  # mean 0
    got = hierarchical_bootstrap(a, b, samples=300)
    assert got["mean"] == pytest.approx(0.2) and got["seeds"] == {"a": 5, "b": 4} and "unpaired" in got["method"]
    assert got["low"] is not None and got["per_seed"] == {0: pytest.approx(0.0)}


# --- rows of one user id drawn together (clusters) ---

def test_user_bootstrap_by_user_id_equals_a_slow_cluster_bootstrap():
    # rows 10-15 of three user ids (u1: 10, 11, 12; u2: 13; u3: 14, 15); the per-row differences a - b:
    a = {10: 1.0, 11: 0.5, 12: 0.0, 13: 0.25, 14: 1.0, 15: 0.0}
    b = {10: 0.0, 11: 0.5, 12: 0.5, 13: 0.0, 14: 0.0, 15: 0.0}
    users = {10: "u1", 11: "u1", 12: "u1", 13: "u2", 14: "u3", 15: "u3"}
    got = user_bootstrap(a, b, samples=500, seed=7, clusters=users)
    # oracle: draw 3 of the ids (numbered in order of first appearance), pool all their rows, average
    rows = {0: [1.0, 0.0, -0.5], 1: [0.25], 2: [1.0, 0.0]}
    drawn = np.random.default_rng(7).integers(0, 3, size=(500, 3))
    stats = [np.mean([d for c in draw for d in rows[c]]) for draw in drawn]
    low, high = np.quantile(stats, [0.025, 0.975])
    assert got["mean"] == pytest.approx(1.75 / 6) and got["clusters"] == 3 and got["users"] == 6
    assert (got["low"], got["high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert "user ids" in got["method"]


def test_one_row_per_user_id_is_the_row_bootstrap_draw_for_draw():
    a, b = simulate(np.random.default_rng(11), seeds=3, users=40)
    ra, rb = as_runs(a), as_runs(b)
    singletons = {u: f"id{u}" for u in range(40)}
    for draw in ("shared", "per_seed"):
        plain = hierarchical_bootstrap(ra, rb, samples=300, user_draw=draw)
        by_id = hierarchical_bootstrap(ra, rb, samples=300, user_draw=draw, clusters=singletons)
        assert (by_id["low"], by_id["high"]) == (pytest.approx(plain["low"], abs=1e-12),
                                                 pytest.approx(plain["high"], abs=1e-12))
    plain = user_bootstrap(dict(enumerate(a[0])), dict(enumerate(b[0])), samples=300)
    by_id = user_bootstrap(dict(enumerate(a[0])), dict(enumerate(b[0])), samples=300, clusters=singletons)
    assert (by_id["low"], by_id["high"]) == (plain["low"], plain["high"])


@pytest.mark.parametrize("user_draw", ["shared", "per_seed"])
def test_copies_of_every_row_under_one_user_id_give_the_interval_of_the_rows_once(user_draw):
    """Each user's row repeated 4 times (the extreme of sliding windows: four rows that say the same
    thing). Drawn by user id, every bootstrap statistic is the one of the rows taken once (a drawn id
    brings 4 equal rows: the same mean), so the interval is identical; drawn row by row it claims twice
    the precision (sqrt(4))."""
    a, b = simulate(np.random.default_rng(12), seeds=3, users=50)
    once = hierarchical_bootstrap(as_runs(a), as_runs(b), samples=400, user_draw=user_draw)
    a4, b4 = np.repeat(a, 4, axis=1), np.repeat(b, 4, axis=1)
    ids = {row: row // 4 for row in range(200)}
    copies = hierarchical_bootstrap(as_runs(a4), as_runs(b4), samples=400, user_draw=user_draw, clusters=ids)
    assert copies["mean"] == pytest.approx(once["mean"]) and copies["clusters"] == 50
    assert (copies["low"], copies["high"]) == (pytest.approx(once["low"]), pytest.approx(once["high"]))
    rows = hierarchical_bootstrap(as_runs(a4), as_runs(b4), samples=400, user_draw=user_draw, small_sample=False)
    once_plain = hierarchical_bootstrap(as_runs(a), as_runs(b), samples=400, user_draw=user_draw, small_sample=False)
    assert (rows["high"] - rows["low"]) < 0.8 * (once_plain["high"] - once_plain["low"])


def test_unpaired_seeds_by_user_id_copies_too():
    a, b = simulate(np.random.default_rng(13), seeds=4, users=30)
    ra, rb = as_runs(a), {s: v for s, v in as_runs(b).items() if s != 3}
    once = hierarchical_bootstrap(ra, rb, samples=300)
    a3, b3 = np.repeat(a, 3, axis=1), np.repeat(b, 3, axis=1)
    copies = hierarchical_bootstrap(as_runs(a3), {s: v for s, v in as_runs(b3).items() if s != 3}, samples=300,
                                    clusters={row: row // 3 for row in range(90)})
    assert "unpaired" in copies["method"] and "by user id (30 ids)" in copies["method"]
    assert (copies["low"], copies["high"]) == (pytest.approx(once["low"]), pytest.approx(once["high"]))


def test_a_row_without_a_user_id_is_refused_by_name():
    with pytest.raises(ValueError, match="user 3 has no cluster"):
        user_bootstrap({1: 0.0, 2: 1.0, 3: 0.5}, {1: 0.0, 2: 0.0, 3: 0.0}, clusters={1: "a", 2: "a"})
    with pytest.raises(ValueError, match="user 3 has no cluster"):
        hierarchical_bootstrap(A, B, clusters={1: "a", 2: "b"})


def test_false_positive_rate_when_rows_of_one_user_agree():
    """60 user ids with 5 rows each; each user prefers one method by a persistent amount (sd 1, mean
    0 over the population), the same in every row and seed, plus row noise (sd 0.1): the true
    difference is 0. Rows drawn one by one count each preference five times as evidence."""
    rng = np.random.default_rng(7)
    ids = {row: row // 5 for row in range(300)}
    hits = {"rows": 0, "ids": 0, "old_rows": 0, "old_ids": 0}
    reps = 100
    for rep in range(reps):
        d = rng.normal(0, 1.0, 60).repeat(5)[None, :] + rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.1, (3, 300))
        a, b = as_runs(d), as_runs(np.zeros_like(d))
        hits["rows"] += excludes_zero(hierarchical_bootstrap(a, b, samples=300, seed=rep))
        hits["ids"] += excludes_zero(hierarchical_bootstrap(a, b, samples=300, seed=rep, clusters=ids))
        mean_a, zero = dict(enumerate(d.mean(axis=0))), dict.fromkeys(range(300), 0.0)
        hits["old_rows"] += excludes_zero(user_bootstrap(mean_a, zero, samples=300, seed=rep))
        hits["old_ids"] += excludes_zero(user_bootstrap(mean_a, zero, samples=300, seed=rep, clusters=ids))
    rates = {k: v / reps for k, v in hits.items()}
    # measured here: rows 0.32, ids 0.06, old_rows 0.46, old_ids 0.08 (noise sd 0.3: 0.30, 0.05, 0.45, 0.09)
    assert rates["rows"] >= 0.2 and rates["old_rows"] >= 0.2  # the defect
    assert rates["ids"] <= 0.12 and rates["old_ids"] <= 0.12


def test_two_stage_by_user_id_equals_a_slow_oracle_with_interleaved_rows():
    """Rows keyed out of order, one user's rows interleaved with others' (ids numbered by first
    appearance among the sorted rows): the shared two-stage draw against a loop written from the
    definition, with the same random draws (seeds first, then user ids)."""
    rows = [40, 12, 31, 7, 25, 18, 3]
    owner = {40: "p", 12: "q", 31: "p", 7: "r", 25: "q", 18: "p", 3: "r"}
    rng = np.random.default_rng(9)
    a = {s: {r: float(rng.uniform()) for r in rows} for s in range(3)}
    b = {s: {r: float(rng.uniform()) for r in rows} for s in range(3)}
    got = hierarchical_bootstrap(a, b, samples=400, seed=5, small_sample=False, clusters=owner)
    ordered = sorted(rows)  # 3 (r), 7 (r), 12 (q), 18 (p), 25 (q), 31 (p), 40 (p): ids r=0, q=1, p=2
    members = {0: [3, 7], 1: [12, 25], 2: [18, 31, 40]}
    draw = np.random.default_rng(5)
    seeds_drawn = draw.integers(0, 3, size=(400, 3))
    ids_drawn = draw.integers(0, 3, size=(400, 3))
    stats = []
    for seeds, ids in zip(seeds_drawn, ids_drawn):
        value = {r: np.mean([a[s][r] - b[s][r] for s in seeds]) for r in ordered}
        stats.append(np.mean([value[r] for c in ids for r in members[c]]))
    low, high = np.quantile(stats, [0.025, 0.975])
    assert got["clusters"] == 3 and got["users"] == 7
    assert (got["low"], got["high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
