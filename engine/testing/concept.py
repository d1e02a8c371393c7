"""A scripted concept segmenter (SAM 3) over a ColourWorld, honouring exemplar boxes as SAM 3
documents them: a noun phrase finds every instance of it, positive exemplar boxes add instances
that look like what they show, negative ones suppress instances that look like what they show.

Not an oracle. Like the real model it takes look-alikes for the concept (``lookalikes``: a leaf
"is" a frog at some strength), scores every instance with noise, misses small ones, and its
masks have ragged edges (``ScriptedSegmenter``'s). A negative exemplar is read as what fills
most of its box, so a negative boxed on the object itself suppresses the object: the scripted
model punishes that mistake as the real one would.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..protocols import ConceptRequest
from .backends import ScriptedSegmenter
from .noise import ModelErrors, request_rng
from .world import ColourWorld

OWN_SCORE = (0.6, 0.95)  # an instance of the concept's own thing
EXEMPLAR_BOOST = 0.3  # what a positive exemplar of an instance's thing adds to its score
EXEMPLAR_PENALTY = 0.8  # what a negative exemplar of an instance's thing takes from it: more than a positive adds
SCORE_NOISE = 0.05


class ScriptedConceptSegmenter:
    """SAM 3-like. For each request, every connected region (``min_area`` pixels or more) of the
    concept's thing, and of each look-alike at ``lookalikes[concept][other]`` strength w, is an
    instance scored ``OWN_SCORE`` (own) or 0.25 + 0.5 w (look-alike), plus ``EXEMPLAR_BOOST`` when
    a positive box shows its thing, minus ``EXEMPLAR_PENALTY`` when a negative box does, plus
    N(0, ``SCORE_NOISE``); kept at ``threshold``; the answer is the maximum of the kept instances'
    ragged probabilities. ``negatives_seen`` counts the negative boxes it was given."""

    def __init__(
        self,
        world: ColourWorld,
        lookalikes: dict[str, dict[str, float]] | None = None,
        min_area: int = 6,
        errors: ModelErrors = ModelErrors(),
    ) -> None:
        self.world = world
        self.lookalikes = lookalikes or {}
        self.min_area = min_area
        self.shape = ScriptedSegmenter(world, errors)  # its ragged probability masks
        self.negatives_seen = 0

    def _thing_in(self, labels: np.ndarray, box: np.ndarray) -> int | None:
        """The thing filling most of ``box`` (a label index), or None for nothing there."""
        x0, y0 = int(max(np.floor(box[0]), 0)), int(max(np.floor(box[1]), 0))
        window = labels[y0 : int(np.ceil(box[3])), x0 : int(np.ceil(box[2]))]
        values, counts = np.unique(window[window >= 0], return_counts=True)
        return int(values[counts.argmax()]) if len(values) else None

    def _one(self, r: ConceptRequest, threshold: float) -> np.ndarray:
        labels = self.world.labels(r.image)
        concept = self.world.thing(r.text)
        if concept is None:
            return np.zeros(labels.shape, np.float32)
        # the noise depends on the view and the phrase only: exemplars change scores, not the draw
        rng = request_rng(self.world, r.image, f"concept:{r.text}")
        self.negatives_seen += len(r.negatives)
        names = [t.name for t in self.world.things]
        shown = {self._thing_in(labels, b) for b in r.positives} - {None}
        refused = {self._thing_in(labels, b) for b in r.negatives} - {None}
        strength = {concept.name: None, **self.lookalikes.get(concept.name, {})}
        kept = np.zeros(labels.shape, bool)
        for name, w in strength.items():
            index = names.index(name)
            for region in self.world.components(r.image, name, self.min_area):
                score = rng.uniform(*OWN_SCORE) if w is None else 0.25 + 0.5 * w
                score += EXEMPLAR_BOOST * (index in shown) - EXEMPLAR_PENALTY * (index in refused)
                if score + rng.normal(0.0, SCORE_NOISE) >= threshold:
                    kept |= region
        return self.shape._probability(kept) if kept.any() else np.zeros(labels.shape, np.float32)

    def segment_concepts(self, requests: Sequence[ConceptRequest], threshold: float) -> list[np.ndarray]:
        return [self._one(r, threshold) for r in requests]
