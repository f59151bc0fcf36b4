"""Figures that must read back as written."""

import numpy as np
import pytest
from PIL import Image

from eqx_ffvae.reporting import viz


@pytest.mark.parametrize("fps", [4.0, 10.0])
def test_a_gif_plays_at_its_fps(tmp_path, fps):
    rows = [np.random.default_rng(0).uniform(size=(5, 1, 8, 8)), np.zeros((5, 1, 8, 8))]
    path = tmp_path / "a.gif"
    viz.save_gif(path, rows, fps=fps)
    with Image.open(path) as gif:
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
        assert gif.n_frames == 5 and gif.info.get("loop") == 0
    assert durations == [1000.0 / fps] * 5


def test_a_gif_with_no_fps_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fps must be > 0, got 0.0"):
        viz.save_gif(tmp_path / "a.gif", [np.zeros((2, 1, 4, 4))], fps=0.0)


def test_usage_curves_draw_every_flow(tmp_path):
    records = [{"step": i, "usage_0": 0.5, "usage_1": 0.3, "usage_2": 0.2, "q_entropy": 1.0} for i in range(1, 6)]
    viz.save_usage_curves(tmp_path / "usage.png", records, 3)
    with Image.open(tmp_path / "usage.png") as image:
        assert image.width > image.height > 100
