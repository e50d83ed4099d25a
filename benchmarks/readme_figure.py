"""Draws the README figure: four salience methods on one sentence, with the embedded SST-2 model.

    python -m benchmarks.readme_figure [--sentence "..."] [--steps 50] [--out docs/sig_example.png]

Each method explains the predicted class with raw (unnormalized) attributions;
`lit_sig.plot` scales each row by its own max |salience|.
"""

import argparse
import pathlib
from collections.abc import Sequence

import lit_sig
from lit_sig import models
from lit_sig.lit import interpreters, registry

REPO = pathlib.Path(__file__).resolve().parents[1]
SENTENCE = "This is not a bad movie at all."
# Plot labels and the registry names of their methods.
METHODS = {"SIG": "sig", "IG": "ig", "Gradient · input": "grad_dot_input", "Gradient norm": "grad_norm"}
CLASS_NAMES = {"0": "negative", "1": "positive"}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentence", default=SENTENCE)
    parser.add_argument("--steps", type=int, default=interpreters.DEFAULT_STEPS, help="IG and SIG interpolation steps.")
    parser.add_argument("--out", default=str(REPO / "docs" / "sig_example.png"))
    args = parser.parse_args(argv)

    model = models.minilm_sst2(device="cpu")
    output = model.predict([{"sentence": args.sentence}])[0]
    predicted = output["label"]
    example = {"sentence": args.sentence, "label": predicted}
    saliences = {}
    for name, method in METHODS.items():
        interpreter, config = registry.interpreter_and_config(method, args.steps, interpreters.DEFAULT_BASELINE, False)
        result = interpreter.run([example], model, config=config)[0]
        tokens = result[models.gradients_field("sentence")].tokens
        saliences[name] = result[models.gradients_field("sentence")].salience
        if interpreters.COMPLETENESS_KEY in result:
            print(f"{name}: completeness delta {result[interpreters.COMPLETENESS_KEY]:+.2e}")
    probability = float(output["probas"][model.labels.index(predicted)])
    title = f"“{args.sentence}” → {CLASS_NAMES[predicted]} (p = {probability:.2f})"
    fig = lit_sig.plot(tokens, saliences, title=title)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
