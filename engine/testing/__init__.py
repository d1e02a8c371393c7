"""int_engine.testing: scripted models for testing INT without checkpoints.

``ColourWorld`` describes what each name looks like (a colour); the scripted VLM, detector,
segmenter and CLIP implement the engine's protocols by looking at the pixels of the images
they are given, so inpainting an object away really lowers its name's score. They make the
errors real models make (``ModelErrors``: wrong and missing VLM boxes, jittered detections,
ragged SAM probabilities, CLIP similarities a few hundredths apart); ``ScriptedConceptSegmenter``
is SAM 3 for the optional concept role, honouring exemplar boxes. Users can
build their own worlds to test configurations of the engine.
"""

from .backends import ModelErrors, ScriptedClip, ScriptedDetector, ScriptedSegmenter, ScriptedVLM, scripted_models
from .concept import ScriptedConceptSegmenter
from .world import ColourWorld, Thing

__all__ = [
    "ModelErrors",
    "ColourWorld",
    "Thing",
    "ScriptedVLM",
    "ScriptedDetector",
    "ScriptedSegmenter",
    "ScriptedClip",
    "ScriptedConceptSegmenter",
    "scripted_models",
]
