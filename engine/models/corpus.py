"""The text the tiny zoo's tokenizers are trained on.

Real checkpoints bring their own tokenizers; the tiny zoo trains small ones locally, on
the sentences the engine actually sends and receives, so that prompts, candidate names
and box answers tokenise into a handful of tokens rather than into raw bytes.
"""

from __future__ import annotations

import random

TASKS = ["camouflaged animal", "polyp", "skin lesion"]
OBJECTS = [
    "frog",
    "snake",
    "lizard",
    "chameleon",
    "gecko",
    "toad",
    "fish",
    "crab",
    "owl",
    "moth",
    "butterfly",
    "spider",
    "insect",
    "caterpillar",
    "leopard",
    "deer",
    "bird",
    "octopus",
    "seahorse",
    "cat",
    "dog",
    "animal",
    "polyp",
    "lesion",
    "mole",
    "tumor",
    "object",
]
ENVIRONMENTS = [
    "tree",
    "branch",
    "leaf",
    "leaves",
    "grass",
    "sand",
    "rock",
    "water",
    "forest",
    "bark",
    "soil",
    "snow",
    "coral",
    "reef",
    "mud",
    "colon",
    "mucosa",
    "tissue",
    "skin",
    "wall",
    "background",
    "sky",
    "field",
    "desert",
    "river",
    "moss",
]
TEMPLATES = [
    "This image pertains to the {task} detection task, output the bounding box of the {task}.",
    "Output the name of the {task} and its environment in one word.",
    "{back}, high quality, detailed, and well-integrated with the original image.",
    "{fore} is not a {task}.",
    "The {task} is a {fore} in the {back}.",
    "{fore}, {back}",
    "Name: {fore}. Environment: {back}.",
    "a photo of a {fore}.",
    "[{x0:.2f}, {y0:.2f}, {x1:.2f}, {y1:.2f}]",
    "The bounding box is [{x0:.2f}, {y0:.2f}, {x1:.2f}, {y1:.2f}].",
]


def tokenizer_corpus(n_sentences: int = 2000, seed: int = 0) -> list[str]:
    """Sentences built from the engine's prompt templates, names and box answers."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        x0, y0 = rng.random() * 0.5, rng.random() * 0.5
        lines.append(
            rng.choice(TEMPLATES).format(
                task=rng.choice(TASKS),
                fore=rng.choice(OBJECTS),
                back=rng.choice(ENVIRONMENTS),
                x0=x0,
                y0=y0,
                x1=x0 + rng.random() * 0.5,
                y1=y0 + rng.random() * 0.5,
            )
        )
    lines += OBJECTS + ENVIRONMENTS + TASKS
    return lines
