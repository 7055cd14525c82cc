"""The preview contact sheet and the data benchmark produce what they claim."""

import numpy as np
import pytest
from PIL import Image

from longvila.data import bench, preview, world


def test_contact_sheet_png(tmp_path):
    v = world.make_video(3, 16, code="472", code_frame=5)
    p = preview.contact_sheet(v.frames, [e.to_dict() for e in v.events], tmp_path / "s.png", cols=4)
    img = np.asarray(Image.open(p))
    assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 10


@pytest.mark.slow
def test_bench_measures_both_backends(tmp_path):
    res = bench.run(tmp_path, videos=4, long_videos=2, workers=2, repeats=1, long_frames=64)
    m = res["metrics"]
    for s in ("short_sft", "long_sft"):
        for t in ("all", "8"):
            d, a = m[f"decode_{s}_{t}_decord_frames_per_s"], m[f"decode_{s}_{t}_pyav_frames_per_s"]
            assert d > 0 and a > 0 and m[f"decode_{s}_{t}_decord_over_pyav"] == pytest.approx(d / a)
    assert m["build_short_sft_videos_per_s_w1"] > 0 and res["details"]["long_sft_frames"] == [64, 64]
    assert res["machine"]["cores"] >= 1
