"""Draws the README's faithfulness figure from the committed benchmark summaries.

    python -m benchmarks.faithfulness_figure

One row per protocol, one column per metric: each method's mean on SST-2 dev with its paired
bootstrap 95% interval; the dashed line is the random ranking's mean.
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from lit_sig.lit import registry  # pylint: disable=wrong-import-position

RESULTS = pathlib.Path(__file__).parent / "results"
SUMMARIES = {"ours": RESULTS / "faithfulness_sst2_dev_ours.json", "paper": RESULTS / "faithfulness_sst2_dev_paper.json"}
OUT = pathlib.Path(__file__).parents[1] / "docs" / "faithfulness.png"
TITLES = {
    "log_odds": "log-odds (lower is better)",
    "comprehensiveness": "comprehensiveness (higher is better)",
    "sufficiency": "sufficiency (lower is better)",
}
SHORT = {
    "grad_norm": "Gradient norm",
    "grad_dot_input": "Gradient x input",
    "ig": "IG",
    "sig": "SIG (50 steps)",
    "exact_sig": "SIG exact",
    "adaptive_sig": "SIG adaptive",
    "lit_ig": "LIT's IG",
    "random": "random",
}


def draw(summaries: dict[str, dict]) -> plt.Figure:
    """The figure: protocols x metrics, methods on the y axis."""
    fig, axes = plt.subplots(
        len(summaries), len(TITLES), figsize=(13, 2.2 + 1.6 * len(summaries) + 0.25 * 8), squeeze=False, sharey="row"
    )
    for row, (protocol, summary) in enumerate(summaries.items()):
        methods = list(summary["methods"])
        for col, metric in enumerate(TITLES):
            ax = axes[row][col]
            for y, name in enumerate(methods):
                m = summary["methods"][name][metric]
                color = "tab:gray" if name == "random" else ("tab:red" if name.endswith("sig") else "tab:blue")
                ax.errorbar(
                    m["mean"],
                    y,
                    xerr=[[m["mean"] - m["low"]], [m["high"] - m["mean"]]],
                    fmt="o",
                    color=color,
                    capsize=3,
                )
            ax.axvline(summary["methods"]["random"][metric]["mean"], color="tab:gray", ls="--", lw=0.8)
            ax.set_yticks(range(len(methods)), [SHORT.get(m, m) for m in methods])
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{protocol} protocol: {TITLES[metric]}", fontsize=9)
    fig.suptitle(
        f"Faithfulness on SST-2 dev (n = {summaries['ours']['n_examples']}), mean and 95% bootstrap interval",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    summaries = {name: json.loads(path.read_text()) for name, path in SUMMARIES.items()}
    for summary in summaries.values():  # Summaries written before the registry named the methods.
        summary["methods"] = {registry.canonical(m): v for m, v in summary["methods"].items()}
    draw(summaries).savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
