"""Temporary re-export while backends move to ``int_engine.protocols``."""
from ..protocols import *  # noqa: F401,F403
from ..protocols import Detections, SegmentRequest  # noqa: F401
