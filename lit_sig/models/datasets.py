"""Data sets for LIT: sentiment (GLUE-style TSV, a built-in set) and prompts for LMs (JSON Lines, a built-in set)."""

import csv
import json
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import types as lit_types

LABELS = ("0", "1")  # GLUE SST-2 order: negative, positive.
DEFAULT_SST2_DIR = pathlib.Path(
    os.environ.get("LIT_SIG_SST2_DIR", pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2")
)

# Written for this project: plain, negated, contrasted and mixed sentiment, each labelled.
BUILTIN_SENTENCES: tuple[tuple[str, str], ...] = (
    ("A warm, funny and beautifully acted film.", "1"),
    ("The plot is a mess and the jokes never land.", "0"),
    ("This is not a bad movie at all.", "1"),
    ("It is not a good movie, no matter what the trailer says.", "0"),
    ("The first hour drags, but the ending is worth the wait.", "1"),
    ("Great cast, but the script wastes every one of them.", "0"),
    ("I laughed more than I expected to.", "1"),
    ("I wanted to like it, yet I was bored from start to finish.", "0"),
    ("A quiet, moving story told with real care.", "1"),
    ("Two hours of noise that add up to nothing.", "0"),
    ("Never dull, never cheap, never less than honest.", "1"),
    ("The effects are impressive; the characters are not.", "0"),
    ("Hardly a masterpiece, but a perfectly charming evening out.", "1"),
    ("It tries so hard to be clever that it forgets to be fun.", "0"),
    ("The music alone makes it worth seeing.", "1"),
    ("Not one scene rings true.", "0"),
    ("Despite a slow start, the film wins you over.", "1"),
    ("For all its ambition, the movie is strangely lifeless.", "0"),
    ("An unexpected delight from beginning to end.", "1"),
    ("A tired sequel that nobody asked for.", "0"),
    ("I can't remember the last time a comedy made me this happy.", "1"),
    ("I can't recommend it, even to fans of the book.", "0"),
    ("The lead gives the best performance of her career.", "1"),
    ("The dialogue is wooden and the pacing is worse.", "0"),
    ("Smart, tender and surprisingly funny.", "1"),
    ("Neither scary nor funny, just tedious.", "0"),
    ("It isn't perfect, but it is never boring.", "1"),
    ("It looks beautiful, but there is nothing underneath.", "0"),
    ("A film that respects its audience.", "1"),
    ("The twist is obvious from the first scene.", "0"),
    ("Fans and newcomers alike will have a great time.", "1"),
    ("Even the talented cast cannot save this dreary script.", "0"),
    ("A gripping thriller that never lets go.", "1"),
    ("The movie is too long and not nearly as funny as it thinks.", "0"),
    ("Nothing about it is predictable, and that is a compliment.", "1"),
    ("What should have been a romp feels like homework.", "0"),
    ("A small film with a very big heart.", "1"),
    ("Charmless, joyless and loud.", "0"),
    ("The director takes a familiar story and makes it feel new.", "1"),
    ("I have seen better acting in a car commercial.", "0"),
    ("Its flaws are easy to forgive when the ending is this good.", "1"),
    ("The good ideas are buried under a pile of bad ones.", "0"),
    ("Sweet without being sentimental.", "1"),
    ("A promising premise, badly wasted.", "0"),
)


class SentimentData(lit_dataset.Dataset):
    """Labelled sentences with a `sentence` text field and a `label` in {"0", "1"}."""

    def __init__(self, examples: list[dict[str, str]], description: str = ""):
        spec = {"sentence": lit_types.TextSegment(), "label": lit_types.CategoryLabel(vocab=list(LABELS))}
        super().__init__(spec=spec, examples=examples, description=description)


def builtin(max_examples: int | None = None) -> SentimentData:
    examples = [{"sentence": s, "label": label} for s, label in BUILTIN_SENTENCES][:max_examples]
    return SentimentData(examples, f"{len(examples)} sentences written for lit_sig (negation, contrast)")


def read_glue_tsv(
    path: str | os.PathLike, max_examples: int | None = None, labels: Sequence[str] | None = LABELS
) -> list[dict[str, str]]:
    """Reads a GLUE-style TSV: a header with `sentence` and `label` columns.

    Args:
      labels: the accepted labels (SST-2's "0" and "1" by default); None accepts any.

    Raises:
      ValueError: the file lacks those columns, or a label is not one of `labels`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file (expected a GLUE-style TSV with sentence and label columns)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"sentence", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: the header must name columns 'sentence' and 'label'; missing {sorted(missing)}")
        examples = []
        for line, row in enumerate(reader, start=2):
            if max_examples is not None and len(examples) >= max_examples:
                break
            label = (row["label"] or "").strip()
            if labels is not None and label not in labels:
                raise ValueError(f"{path}:{line}: label {label!r} is not one of {list(labels)}")
            examples.append({"sentence": (row["sentence"] or "").strip(), "label": label})
    return examples


def glue_tsv(path: str | os.PathLike, max_examples: int | None = None) -> SentimentData:
    examples = read_glue_tsv(path, max_examples)
    return SentimentData(examples, f"{len(examples)} examples from {pathlib.Path(path).name}")


# Written for this project: prompts for a small instruction-tuned LM, in four kinds, each with the answer a
# careful reader would give (the data set's `target`; the Sequence Salience module also offers the model's
# own response).
PROMPT_KINDS = ("sentiment", "facts", "arithmetic", "instructions")
BUILTIN_PROMPTS: tuple[tuple[str, str, str], ...] = (
    (
        "sentiment",
        "Review: The acting was wooden and the plot made no sense, but the soundtrack was lovely."
        " Is this review positive or negative? Answer in one word.",
        "Negative",
    ),
    (
        "sentiment",
        "Review: I expected to hate it, yet it turned out to be the best film I saw all year."
        " Is this review positive or negative? Answer in one word.",
        "Positive",
    ),
    (
        "sentiment",
        'Is the sentence "The service was slow and the food arrived cold." positive or negative? Answer in one word.',
        "Negative",
    ),
    ("facts", "What is the capital of France?", "The capital of France is Paris."),
    ("facts", "Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("facts", "Who wrote the play Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("arithmetic", "What is 7 plus 5? Answer with a number only.", "12"),
    ("arithmetic", "Tom has 3 apples and buys 4 more. How many apples does Tom have now?", "Tom has 7 apples."),
    ("arithmetic", "What is 10 minus 4? Answer with a number only.", "6"),
    ("instructions", "Translate into French: Good morning, my friend.", "Bonjour, mon ami."),
    ("instructions", "List three colours of the rainbow, separated by commas.", "Red, orange, yellow"),
    ("instructions", "Write the word 'cat' backwards.", "tac"),
)


class PromptData(lit_dataset.Dataset):
    """Prompts for a causal LM: `prompt`, an optional reference `target`, and their `source` (kind)."""

    def __init__(self, examples: list[dict[str, str]], description: str = ""):
        spec = {
            "prompt": lit_types.TextSegment(),
            "target": lit_types.TextSegment(required=False),
            "source": lit_types.CategoryLabel(),
        }
        super().__init__(spec=spec, examples=examples, description=description)


def builtin_prompts(max_examples: int | None = None) -> PromptData:
    examples = [{"prompt": p, "target": t, "source": kind} for kind, p, t in BUILTIN_PROMPTS][:max_examples]
    return PromptData(examples, f"{len(examples)} prompts written for lit_sig ({', '.join(PROMPT_KINDS)})")


def read_prompts_jsonl(path: str | os.PathLike, max_examples: int | None = None) -> list[dict[str, str]]:
    """Reads JSON Lines of objects with a `prompt` string and optional `target` and `source` strings.

    Raises:
      ValueError: the file is missing, a line is not such an object, or it has no prompt.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file (expected JSON Lines with a 'prompt' and an optional 'target')")
    examples = []
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if max_examples is not None and len(examples) >= max_examples:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}:{line_number}: not JSON ({error})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
                raise ValueError(f"{path}:{line_number}: expected an object with a non-empty 'prompt' string")
            fields = {key: row.get(key) or "" for key in ("target", "source")}
            bad = sorted(key for key, value in fields.items() if not isinstance(value, str))
            if bad:
                raise ValueError(f"{path}:{line_number}: {', '.join(map(repr, bad))} must be strings")
            examples.append({"prompt": row["prompt"], **fields})
    return examples


def prompts_jsonl(path: str | os.PathLike, max_examples: int | None = None) -> PromptData:
    examples = read_prompts_jsonl(path, max_examples)
    return PromptData(examples, f"{len(examples)} prompts from {pathlib.Path(path).name}")


def json_lines(path: pathlib.Path, limit: int | None = None) -> Iterator[tuple[int, Any]]:
    """`(line number, record)` of each non-blank line of a JSON Lines file, at most `limit` of them."""
    count = 0
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not JSON ({error}).") from None
            count += 1
            yield line_number, record
