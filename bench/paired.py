"""Paired comparison of two methods over seeds: the mean difference, its 95% t-interval and a paired t-test.

The same seed gives every method the same data order and head initialisation, so runs with one seed are
pairs; the differences d_s = x_s - y_s over the seeds both finished carry the comparison.

  from paired import paired_difference, forest_plot
  d = paired_difference({0: 81.2, 1: 80.4, 2: 82.0}, {0: 80.1, 1: 80.9, 2: 81.5})
  d["mean"], d["low"], d["high"], d["p"], d["n"]
"""
import math
import statistics


def paired_difference(x, y, confidence=0.95):
    """{seed: value} x and y -> dict(mean, low, high, p, n, seeds) of x - y over the seeds in both.

    The interval is mean ± t_{n-1} · sd / sqrt(n) (scipy.stats.t); p is the two-sided paired t-test
    (scipy.stats.ttest_rel). With one pair there is no interval (low = high = p = nan); with zero spread
    the interval is the point and p is 0 (differences all equal and non-zero) or 1 (all zero)."""
    from scipy import stats
    seeds = sorted(set(x) & set(y))
    d = [x[s] - y[s] for s in seeds]
    n = len(d)
    if n == 0:
        return dict(mean=math.nan, low=math.nan, high=math.nan, p=math.nan, n=0, seeds=[])
    mean = statistics.mean(d)
    if n == 1:
        return dict(mean=mean, low=math.nan, high=math.nan, p=math.nan, n=1, seeds=seeds)
    sd = statistics.stdev(d)
    if sd == 0:
        return dict(mean=mean, low=mean, high=mean, p=0.0 if mean != 0 else 1.0, n=n, seeds=seeds)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    p = float(stats.ttest_rel([x[s] for s in seeds], [y[s] for s in seeds]).pvalue)
    return dict(mean=mean, low=mean - half, high=mean + half, p=p, n=n, seeds=seeds)


def forest_plot(rows, path, title, reference=None):
    """rows: [(label, dict from paired_difference)], drawn top to bottom as points with 95% intervals.
    `reference` (e.g. -1.0) draws a dashed line where a target lies; 0 is always drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rows) + 1.3))  # wide: the labels take half of it
    for i, (label, d) in enumerate(rows):
        y = len(rows) - 1 - i
        if not math.isnan(d["low"]):
            ax.plot([d["low"], d["high"]], [y, y], color="tab:blue", lw=2)
        ax.plot([d["mean"]], [y], "o", color="tab:blue")
        ax.text(1.01, y, f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] n={d['n']}",
                transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    if reference is not None:
        ax.axvline(reference, color="tab:red", lw=0.8, ls="--")
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=8)
    ax.set_xlabel("paired difference, points (mean and 95% t-interval over seeds)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.subplots_adjust(right=0.82)
    fig.savefig(path, dpi=130)
    plt.close(fig)
