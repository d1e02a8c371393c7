"""Shared by the scheduler tests: scenes of one frog on bark (``scenarios.bark_world``: a snake the
VLM "sees" in bark, so every image-iteration of these scenes mines) and the scheduler's jobs over
them."""

import numpy as np
from scenarios import bark_world

from int_engine.pipeline import image_steps
from int_engine.testing.scenes import compose, ellipse

H, W = 96, 128
WORLD = bark_world()


def scenes(n):
    rng = np.random.default_rng(0)
    return [
        compose(WORLD, "bark", [("frog", ellipse(H, W, rng.uniform(20, 108), rng.uniform(20, 76), 12, 9))], H, W, seed=s).image
        for s in range(n)
    ]


def jobs(images, cfg):
    return [(i, (lambda im=im: image_steps(im, cfg))) for i, im in enumerate(images)]
