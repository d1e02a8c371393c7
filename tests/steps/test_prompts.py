import random
import string

import pytest

from int_engine import prompts
from int_engine.prompts import candidate_list, parse_box, parse_names, parse_proposal


def test_prompt_texts_are_the_papers():
    assert prompts.box_prompt("polyp") == "This image pertains to the polyp detection task, output the bounding box of the polyp."
    assert (
        prompts.name_prompt("camouflaged animal") == "Output the name of the camouflaged animal and its environment in one word."
    )
    pos, neg = prompts.inpaint_prompts("frog", "tree", "camouflaged animal")
    assert pos == "tree, high quality, detailed, and well-integrated with the original image."
    assert neg == "frog is not a camouflaged animal."


@pytest.mark.parametrize(
    "text,box",
    [
        ("[0.1, 0.2, 0.5, 0.6]", (0.1, 0.2, 0.5, 0.6)),
        ("The bounding box is [0.55, 0.6, 0.12, 0.3].", (0.12, 0.3, 0.55, 0.6)),
        ("x0=0.0 y0=0.0 x1=1.2 y1=0.5 ", None),  # >1 without a view size
        ("nothing here", None),
        ("[0.1, 0.1, 0.1, 0.5]", None),  # no area
        ("", None),
    ],
)
def test_parse_box(text, box):
    got = parse_box(text)
    assert got == (pytest.approx(box) if box else None)


def test_parse_box_pixels_with_view_size():
    # pixels of the 100 x 50 view padded to a 100 x 100 square (rows 25..75 are the view): the
    # box stays in that square's frame, view pixels (20, 10, 60, 30)
    assert parse_box("[20, 35, 60, 55]", width=100, height=50) == pytest.approx((0.2, 0.35, 0.6, 0.55))
    assert parse_box("[20, 5, 60, 20]", width=100, height=50) is None  # only on the padding


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Frog, tree", ("frog", "tree")),
        ("Frogs and trees.", ("frog", "tree")),
        ("The camouflaged animal is a frog, and its environment is a tree.", ("frog", "tree")),
        ("Name: butterflies. Environment: leaves.", ("butterfly", "leaf")),
        ("Sorry, I cannot see any.", (None, None)),
        ("lizard", ("lizard", None)),
        ("", (None, None)),
    ],
)
def test_parse_names(text, expected):
    assert parse_names(text, "camouflaged animal") == expected


@pytest.mark.parametrize(
    "task,text,expected",
    [
        ("polyp", "Polyp, colon.", ("polyp", "colon")),
        ("polyp", "Polyps, colon", ("polyp", "colon")),
        ("polyp", "The polyp is a growth in the colon.", ("growth", "colon")),
        ("polyp", "The polyp is located in the colon.", ("polyp", "located")),
        ("skin lesion", "Lesion, skin.", ("lesion", "skin")),
        ("skin lesion", "Skin lesion, skin", ("lesion", "skin")),
        ("skin lesion", "Melanoma, skin.", ("melanoma", "skin")),
        ("skin lesion", "The skin lesion is a mole on the skin.", ("mole", "skin")),
        ("camouflaged animal", "Camouflaged frog, tree.", ("frog", "tree")),
        ("camouflaged animal", "Animal: frog. Environment: tree.", ("frog", "tree")),
        ("camouflaged animal", "Animal, forest.", ("animal", "forest")),
        ("camouflaged animal", "The frog is camouflaged in the bark.", ("frog", "bark")),
    ],
)
def test_the_task_head_noun_is_a_name_and_its_modifiers_frame(task, text, expected):
    """SPEC "Names": the task's head noun is a valid candidate (the medical tasks answer with it);
    only framing uses of the task's words are skipped."""
    assert parse_names(text, task) == expected


def test_task_words():
    assert prompts.task_words("skin lesion") == ("lesion", frozenset({"skin"}))
    assert prompts.task_words("Polyps") == ("polyp", frozenset())


def test_any_text_parses_without_raising():
    rng = random.Random(0)
    alphabet = string.printable + "äß漢字 [],.0123456789"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        p = parse_proposal(text, text, "skin lesion", rng.randint(1, 500), rng.randint(1, 500))
        if p.box is not None:
            x0, y0, x1, y1 = p.box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        for name in (p.foreground, p.background):
            assert name is None or (name.isascii() and 2 <= len(name) <= 24 and name == name.lower())


def test_candidates_ordered_by_frequency_then_first_seen():
    ps = [
        parse_proposal("", t, "camouflaged animal", 10, 10)
        for t in ["snake, tree", "frog, tree", "frog, bark", "snake, leaf", "moth, sky", "frog", "?"]
    ]
    assert candidate_list(ps) == ["frog", "snake", "moth"]
