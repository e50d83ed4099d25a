"""Draws the README's layer sweep: each token's IG at every layer of the embedded SST-2 model.

    python -m benchmarks.layer_figure [--sentence "..."] [--steps 64] [--out docs/layer_sweep.png]

Raw attributions of the predicted class, one IG run per layer (`lit_sig.layer_sweep`);
every row sums to F(input) - F(baseline input), up to its completeness delta (printed),
so the rows share one colour scale.
"""

import argparse
import pathlib
from collections.abc import Sequence

import lit_sig
from lit_sig import models
from lit_sig.lit import interpreters

REPO = pathlib.Path(__file__).resolve().parents[1]
SENTENCE = "this movie is not bad at all ."
CLASS_NAMES = {"0": "negative", "1": "positive"}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentence", default=SENTENCE)
    parser.add_argument("--steps", type=int, default=64, help="IG interpolation steps per layer.")
    parser.add_argument("--out", default=str(REPO / "docs" / "layer_sweep.png"))
    args = parser.parse_args(argv)

    model = models.minilm_sst2(device="cpu")
    output = model.predict([{"sentence": args.sentence}])[0]
    predicted = output["label"]
    example = {"sentence": args.sentence, "label": predicted}
    config = {interpreters.INTERPOLATION_KEY: args.steps}
    sweep = lit_sig.layer_sweep(model, example, lit_sig.IntegratedGradients(), config)
    for layer, row, delta in zip(sweep.layers, sweep.salience, sweep.completeness_deltas):
        print(f"Layer {layer}: sum {row.sum():+.3f}, completeness delta {delta:+.1e}")
    probability = float(output["probas"][model.labels.index(predicted)])
    title = f"IG at each layer: “{args.sentence}” → {CLASS_NAMES[predicted]} (p = {probability:.2f})"
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep.plot(title=title).savefig(out, dpi=110)
    print(f"Wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
