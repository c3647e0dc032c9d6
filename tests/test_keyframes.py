import json

import numpy as np
import pytest

from glus.errors import GLUSError
from glus.inference.keyframes import (frame_quality, load_key_frame_json, merge_passes, plan_passes,
                                      resolve_key_frame, select_key_frame)


def test_plan_without_key_frame_is_one_forward_pass():
    (p,) = plan_passes(7, None)
    assert p.frames == tuple(range(7)) and p.direction == "forward"
    assert plan_passes(7, 0) == [p]


@pytest.mark.parametrize("T,k", [(10, 4), (5, 4), (3, 1), (50, 23)])
def test_plan_with_key_frame_matches_released_protocol(T, k):
    fwd, bwd = plan_passes(T, k)
    assert fwd.frames == tuple(range(k, T))
    assert bwd.frames == tuple(range(k, -1, -1))
    owner = merge_passes([fwd, bwd], T)
    # frames <= k come from the backward pass, the rest from the forward pass, at their step index
    for f in range(T):
        if f <= k:
            assert tuple(owner[f]) == (1, k - f)
        else:
            assert tuple(owner[f]) == (0, f - k)


def test_plan_rejects_bad_key_frame():
    with pytest.raises(ValueError):
        plan_passes(5, 5)
    with pytest.raises(ValueError):
        plan_passes(0, None)


def test_key_frame_json_and_resolution(tmp_path):
    p = tmp_path / "kf.json"
    p.write_text(json.dumps({"vid_0": "00012", "vid_1": 3}))
    kf = load_key_frame_json(p)
    assert kf == {"vid_0": "00012", "vid_1": "3"}
    names = [f"{i:05d}" for i in range(0, 40, 2)]  # sparse frame numbers as in Ref-YouTube-VOS
    assert resolve_key_frame(kf["vid_0"], names) == 6
    assert resolve_key_frame("00012.jpg", names) == 6
    with pytest.raises(GLUSError, match="not one of the video's frames"):
        resolve_key_frame("3", names)


@pytest.mark.parametrize("content,msg", [("{", "not a readable JSON"), ("[1]", "expected a JSON object"),
                                         ('{"a": [1]}', "entry 'a'")])
def test_key_frame_json_errors_name_the_file(tmp_path, content, msg):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(GLUSError, match=msg) as err:
        load_key_frame_json(p)
    assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_selector_scores():
    assert frame_quality(0.9, 10.0, False) == 0.0
    assert frame_quality(0.8, 0.0, True) == pytest.approx(0.4)
    assert select_key_frame([0.1, 0.7, 0.7, np.nan]) == 1
    assert select_key_frame([0.0, 0.0]) == 0
