"""How well an embedder tells the right agent card for a task text: the lexical default against a model.

Sixteen one-line agent descriptions and fourteen task texts that paraphrase
one or two of them (a person's wording, not the card's). For each embedder:
the similarity of every text to its right cards and to the others, and how
many right cards reach a threshold. The README's "Routing text" quotes it.

    python -m benchmarks.text_routing [--model DIR] [--threshold 0.5]

``--model`` takes a directory as ``--router-embedder model:DIR`` does (an
ONNX sentence embedder and its tokenizer.json; the embed-model extra).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

CARDS = (
    "reviews and summarises legal contracts and NDAs",
    "summarises contracts",
    "writes and reviews Python code",
    "translate documents between languages",
    "summarise short notes and emails into a few lines",
    "answers customer support tickets about billing",
    "books flights and hotels for business travel",
    "generates SQL queries from questions about a database",
    "writes marketing copy for product launches",
    "transcribes audio recordings into text",
    "classifies images of animals",
    "extracts tables from PDF invoices",
    "plans a weekly meal menu with recipes",
    "debugs JavaScript front-end errors",
    "drafts replies to emails",
    "researches academic papers and writes literature reviews",
)
# Each task text, and the cards (indexes into CARDS) that should take it.
TASKS: dict[str, tuple[int, ...]] = {
    "summarise a legal contract": (0, 1),
    "fix a bug in my python code": (2,),
    "translate this manual into french": (3,),
    "summarise my inbox emails": (4, 14),
    "reply to a customer's billing question": (5,),
    "book a flight to Paris": (6,),
    "write a SQL query for monthly revenue": (7,),
    "write an ad for our new product": (8,),
    "transcribe this podcast episode": (9,),
    "what animal is in this photo": (10,),
    "pull the totals out of these invoices": (11,),
    "what should I cook this week": (12,),
    "my react app throws an error in the console": (13,),
    "find papers on graph neural networks": (15,),
}


def separation(spec: str) -> tuple[list[float], list[float]]:
    """The similarities of each task text to its right cards, and to the others, with embedder ``spec``."""
    from are_core.embed import load_embedder  # noqa: PLC0415 - the sidecar's own package

    embedder = load_embedder(spec)
    assert embedder is not None
    cards = embedder.embed(list(CARDS))
    right: list[float] = []
    others: list[float] = []
    for text, good in TASKS.items():
        similarities = cards @ embedder.embed([text])[0]
        for i, similarity in enumerate(similarities.tolist()):
            (right if i in good else others).append(similarity)
    return sorted(right), sorted(others)


def report(spec: str, threshold: float) -> list[str]:
    right, others = separation(spec)
    reached = sum(s >= threshold for s in right)
    wrong = sum(s >= threshold for s in others)
    right_line = (
        f"  right cards: {min(right):.2f} to {max(right):.2f} (median {float(np.median(right)):.2f}); "
        f"{reached} of {len(right)} at {threshold:g} or more"
    )
    other_line = (
        f"  other cards: at most {max(others):.2f} (p95 {float(np.percentile(others, 95)):.2f}); "
        f"{wrong} of {len(others)} at {threshold:g} or more"
    )
    return [spec, right_line, other_line]


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.text_routing", description=description)
    parser.add_argument("--model", help="a model directory, also measured (as --router-embedder model:DIR)")
    parser.add_argument("--threshold", type=float, default=0.5, help="the router's threshold (default 0.5)")
    settings = parser.parse_args(argv)
    specs = ["lexical"] + ([f"model:{settings.model}"] if settings.model else [])
    print(f"{len(TASKS)} task texts against {len(CARDS)} agent cards")
    for spec in specs:
        print("\n".join(report(spec, settings.threshold)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
