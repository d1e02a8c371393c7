"""Step 2 (eq 2) and the inpainting prompts of eq 4: prompt texts and robust answer parsing.

Parsing never raises: any text, a random model's included, yields a candidate or None.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from . import patches

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")

# Words that frame an answer rather than name a thing ("The name of the camouflaged
# animal is a frog and its environment is a tree" -> frog, tree).
_FRAME_WORDS = frozenset(
    """
    a an the this that these those it its is are was were be been being of in on at to for from with and or
    but as by into onto over under near inside within among between there here which who what where
    name names named environment environments background foreground object objects one word words output
    image picture photo patch detection task bounding box answer called looks look like appears seems
    i you we they he she not no none nothing sorry cannot can see visible any some very
    """.split()
)
_MIN_NAME, _MAX_NAME = 2, 24
_IRREGULAR = {"leaves": "leaf", "wolves": "wolf", "mice": "mouse", "geese": "goose", "octopi": "octopus", "calves": "calf"}


def box_prompt(task: str) -> str:
    """P_B of eq 2: asks for the task object's bounding box."""
    return f"This image pertains to the {task} detection task, output the bounding box of the {task}."


def name_prompt(task: str) -> str:
    """P_A of eq 2: asks for the object's name and its environment."""
    return f"Output the name of the {task} and its environment in one word."


def inpaint_prompts(foreground: str, background: str, task: str) -> tuple[str, str]:
    """(P_p, P_n) of eq 4: fill with the background; the foreground is not the task object."""
    positive = f"{background}, high quality, detailed, and well-integrated with the original image."
    negative = f"{foreground} is not a {task}."
    return positive, negative


def parse_box(text: str, width: int | None = None, height: int | None = None) -> tuple[float, float, float, float] | None:
    """The first four numbers of ``text`` as a box (x0, y0, x1, y1) in [0, 1], or None.

    The box is in the VLM's frame: normalised to the ``width`` x ``height`` view padded to a
    centred S x S square, S = max(width, height), because LLaVA-1.5 was trained on images
    padded so and the backends show it every view so (``patches.normalised_box_to_view`` maps
    it to view pixels). Numbers above 1 are read as pixels of that padded square when the
    view's size is given. Corners are reordered; a box with no area, or (size given) with no
    area inside the view, i.e. only on the padding, is None.
    """
    nums = [float(n) for n in _NUMBER.findall(text or "")]
    if len(nums) < 4:
        return None
    x0, y0, x1, y1 = nums[:4]
    if max(x0, y0, x1, y1) > 1.0:
        if not width or not height:
            return None
        side = max(width, height)
        x0, x1, y0, y1 = x0 / side, x1 / side, y0 / side, y1 / side
    x0, x1 = sorted((min(max(x0, 0.0), 1.0), min(max(x1, 0.0), 1.0)))
    y0, y1 = sorted((min(max(y0, 0.0), 1.0), min(max(y1, 0.0), 1.0)))
    if (x1 - x0) * (y1 - y0) < 1e-4:
        return None
    if width and height:
        vx0, vy0, vx1, vy1 = patches.normalised_box_to_view((x0, y0, x1, y1), patches.View("view", 0, 0, width, height))
        if (vx1 - vx0) * (vy1 - vy0) < 1e-4 * width * height:
            return None
    return (x0, y0, x1, y1)


def normalise_name(word: str) -> str | None:
    """Lower-case, singular where trivial (frogs -> frog, flies -> fly, foxes -> fox); None if
    it is not a plausible one-word name (letters and hyphens, 2-24 characters)."""
    w = (word or "").strip().lower()
    if not _WORD.fullmatch(w) or not _MIN_NAME <= len(w) <= _MAX_NAME or w in _FRAME_WORDS:
        return None
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ches", "shes", "xes", "sses")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*|[^\sa-z]")
# A word after one of these describes what comes before it ("is camouflaged"), and one of these
# between the task's noun and another name makes the noun the subject of a naming phrase ("the
# camouflaged animal is a frog").
_COPULAS = frozenset("is are was were be been being looks look appears appear seems seem very".split())
_NAMING = frozenset("a an the called named probably likely".split())
# ... except after these, where the copula names the environment ("its environment is skin")
_SETTINGS = frozenset("environment background surrounding surroundings setting habitat".split())


def task_words(task: str) -> tuple[str | None, frozenset[str]]:
    """The task prompt's head noun (its last word, singular) and its modifiers (the other words):
    "skin lesion" -> ("lesion", {"skin"}), "polyp" -> ("polyp", {})."""
    words = [normalise_name(w) or w for w in _WORD.findall(task.lower())]
    return (words[-1] if words else None), frozenset(words[:-1])


def parse_names(text: str, task: str) -> tuple[str | None, str | None]:
    """(A_fore, A_back) from the answer to P_A (SPEC "Names"): its first two distinct names, or
    None for each that is missing. A name is a content word, lower-cased and singular
    (``normalise_name``), that is not a framing word. The task's own words count as the paper's
    medical tasks need them ("Polyp, colon." -> polyp, colon; "Lesion, skin." -> lesion, skin),
    except where they only frame the answer:

    - the head noun is skipped as the subject of a naming phrase ("The camouflaged animal is a
      frog" -> frog; "Animal: frog");
    - a modifier is skipped where it modifies ("camouflaged frog", "skin lesion") or describes
      ("it is camouflaged"), and kept where it stands as a name ("Lesion, skin.").
    """
    head, modifiers = task_words(task)
    tokens = _TOKEN.findall((text or "").lower())
    names: list[str] = []
    for i, raw in enumerate(tokens):
        name = normalise_name(raw)
        if name is None:
            continue
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        later = tokens[i + 2] if i + 2 < len(tokens) else ""
        before = tokens[i - 1] if i else ""
        if name == head and (after == ":" or (after in _COPULAS and later in _NAMING)):
            continue
        describes = before in _COPULAS and (tokens[i - 2] if i > 1 else "") not in _SETTINGS
        if name in modifiers and name != head and (_WORD.fullmatch(after) or describes):
            continue
        if name not in names:
            names.append(name)
        if len(names) == 2:
            break
    return (names[0] if names else None, names[1] if len(names) > 1 else None)


@dataclass(frozen=True)
class ViewProposal:
    """What the VLM said about one view: the P_B box (normalised to the view padded to a square,
    LLaVA-1.5's frame: ``parse_box``; ``patches.normalised_box_to_view`` gives view pixels) and
    the P_A names, each possibly None, plus the raw answers for the trace."""

    box: tuple[float, float, float, float] | None
    foreground: str | None
    background: str | None
    box_text: str
    name_text: str

    def record(self, view: patches.View) -> dict:
        """What the trace keeps of this proposal on ``view`` (JSON-ready)."""
        return {
            "name": view.name,
            "box": list(view.box),
            "answer_box": self.box_text[:200],
            "answer_name": self.name_text[:200],
            "box_parsed": list(self.box) if self.box else None,  # normalised to the view padded to a square
            "box_view_px": patches.normalised_box_to_view(self.box, view).round(1).tolist() if self.box else None,
            "foreground": self.foreground,
            "background": self.background,
        }


def parse_proposal(box_text: str, name_text: str, task: str, width: int, height: int) -> ViewProposal:
    fore, back = parse_names(name_text, task)
    return ViewProposal(parse_box(box_text, width, height), fore, back, box_text, name_text)


def candidate_list(proposals: list[ViewProposal]) -> list[str]:
    """𝒜_i: the distinct foreground names, most-proposed first, ties in order of first
    appearance (SPEC step 5: so that the tie rule falls back to the most frequent name)."""
    counts = Counter(p.foreground for p in proposals if p.foreground)
    first = {}
    for i, p in enumerate(proposals):
        if p.foreground and p.foreground not in first:
            first[p.foreground] = i
    return sorted(counts, key=lambda name: (-counts[name], first[name]))
