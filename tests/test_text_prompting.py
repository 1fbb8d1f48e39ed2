"""Text prompts → regions, without a model: box extraction is exact on probability maps with
known components; prompts, thresholds and typed text follow the documented rules."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.core.errors import BadRequest
from ml_backend.labelstudio.label_config import ModelFamily, parse_label_config
from ml_backend.labelstudio.masks import component_boxes, mask_components
from ml_backend.labelstudio.results import Boxes, Mask
from ml_backend.learning.selection import probability_map_uncertainty
from ml_backend.models.clipseg.prompts import (
    TextSettings,
    context_threshold,
    control_threshold,
    label_for_text,
    label_prompt,
    resize_mask,
    scale_boxes,
    text_outputs,
    typed_prompt,
)

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="prompt" toName="image" editable="true" rows="1" maxSubmissions="1"/>
  <Number name="threshold" toName="image" min="0" max="1" step="0.05" defaultValue="0.3"/>
  <RectangleLabels name="box" toName="image" model="clipseg" clipseg_threshold="0.6">
    <Label value="Car" hint="a photo of a car"/><Label value="Traffic light"/>
    <Label value="Bus" prompt="a red double-decker bus" hint="ignored"/>
  </RectangleLabels>
  <BrushLabels name="mask" toName="image"><Label value="Car"/><Label value="Road"/></BrushLabels>
</View>"""


def blob(shape: tuple[int, int], rows: slice, cols: slice, value: float) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    out[rows, cols] = value
    return out


def test_one_box_per_component_exact_corners_and_mean_scores() -> None:
    prob = np.zeros((40, 60), dtype=np.float32)
    prob[2:6, 3:9] = 0.9  # instance 1 of the label
    prob[20:30, 40:45] = 0.6  # instance 2
    prob[20:30, 40] = 0.8  # part of instance 2 (raises its mean)
    xyxy, scores = component_boxes(prob, 0.5, 1)
    assert xyxy.tolist() == [[3, 2, 9, 6], [40, 20, 45, 30]]  # highest score first
    assert scores[0] == pytest.approx(0.9)
    assert scores[1] == pytest.approx((40 * 0.6 + 10 * 0.8) / 50)


def test_components_touching_every_border_and_a_full_map() -> None:
    prob = np.zeros((10, 12), dtype=np.float32)
    prob[0:3, 0:2] = 1.0  # top-left corner
    prob[7:10, 9:12] = 1.0  # bottom-right corner
    prob[0, 5:7] = 1.0  # top edge
    prob[4:6, 11] = 1.0  # right edge
    xyxy, _ = component_boxes(prob, 0.5, 1)
    assert sorted(map(tuple, xyxy.tolist())) == [(0, 0, 2, 3), (5, 0, 7, 1), (9, 7, 12, 10),
                                                 (11, 4, 12, 6)]
    whole, score = component_boxes(np.full((7, 5), 0.7, np.float32), 0.5, 1)
    assert whole.tolist() == [[0, 0, 5, 7]] and score.tolist() == [pytest.approx(0.7)]


def test_diagonal_pixels_are_one_object_and_small_ones_are_dropped() -> None:
    prob = np.zeros((20, 20), dtype=np.float32)
    for i in range(5):
        prob[i, i] = 0.9  # a diagonal line: 8-connected, one component
    prob[15, 15] = 0.9  # a single pixel
    prob[10:12, 2:4] = 0.9  # four pixels
    xyxy, _ = component_boxes(prob, 0.5, 4)
    assert sorted(map(tuple, xyxy.tolist())) == [(0, 0, 5, 5), (2, 10, 4, 12)]
    labels, count = mask_components(prob > 0.5, 5)
    assert count == 1 and labels[0, 0] == 1 and labels[15, 15] == 0 and labels[10, 2] == 0


def test_threshold_is_strict_and_an_empty_map_has_no_boxes() -> None:
    prob = blob((8, 8), slice(2, 4), slice(2, 4), 0.5)
    assert component_boxes(prob, 0.5, 1)[0].shape == (0, 4)
    assert component_boxes(prob, 0.49, 1)[0].tolist() == [[2, 2, 4, 4]]
    assert component_boxes(np.zeros((8, 8), np.float32), 0.0, 1)[0].shape == (0, 4)


def test_scaling_boxes_and_masks_between_working_and_image_size() -> None:
    assert scale_boxes(np.array([[10.0, 5.0, 20.0, 15.0]]), (50, 100), (100, 400)).tolist() \
        == [[40.0, 10.0, 80.0, 30.0]]
    mask = np.zeros((2, 3), dtype=bool)
    mask[1, 2] = True
    big = resize_mask(mask, (4, 6))
    assert big.sum() == 4 and big[2:, 4:].all()


def test_label_prompts_thresholds_and_routing() -> None:
    parsed = parse_label_config(CONFIG)
    box = parsed.for_family(ModelFamily.TEXT_SEGMENTER)[0]
    assert box.name == "box" and parsed.for_family(ModelFamily.SEGMENTER)[0].name == "mask"
    assert [c.name for c in parsed.text_inputs] == ["prompt"]
    assert not any("threshold" in u or "TextArea" in u for u in parsed.unserved)
    assert [label_prompt(box, label) for label in box.labels] == [
        "a photo of a car", "Traffic light", "a red double-decker bus"]
    assert control_threshold(box, 0.4, None) == 0.6
    assert control_threshold(box, 0.4, 0.2) == 0.2
    assert context_threshold(None, parsed, "image") == 0.3  # the Number's defaultValue
    number = {"result": [{"from_name": "threshold", "to_name": "image", "type": "number",
                          "value": {"number": 0.75}}]}
    assert context_threshold(number, parsed, "image") == 0.75
    number["result"][0]["value"]["number"] = 7
    with pytest.raises(BadRequest, match="threshold"):
        context_threshold(number, parsed, "image")


def test_typed_text_and_the_label_it_names() -> None:
    parsed = parse_label_config(CONFIG)
    box = parsed.for_family(ModelFamily.TEXT_SEGMENTER)[0]
    context = {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                           "value": {"text": ["  the red car on the left  "]}}]}
    typed = typed_prompt(context, parsed)
    assert typed is not None and typed.image == "image"
    assert typed.text == "the red car on the left"
    assert label_for_text(box, typed.text) == "Car"
    assert label_for_text(box, "A photo of a CAR") == "Car"  # the label's hint
    assert label_for_text(box, "traffic light at night") == "Traffic light"
    assert label_for_text(box, "carpet") == "Car"  # no label named: the first one
    assert label_for_text(box, "a car under a traffic light") == "Traffic light"  # longest
    assert label_for_text(box, "a bus and a car") == "Car"  # a tie: the first in the config
    assert typed_prompt({"result": []}, parsed) is None
    with pytest.raises(BadRequest, match=r"value\.text"):
        typed_prompt({"result": [{"from_name": "prompt", "value": {"text": [3]}}]}, parsed)


def test_text_outputs_build_boxes_and_masks_at_the_image_size() -> None:
    parsed = parse_label_config(CONFIG)
    box = parsed.for_family(ModelFamily.TEXT_SEGMENTER)[0]
    mask = parsed.for_family(ModelFamily.SEGMENTER)[0]
    car = blob((20, 40), slice(5, 10), slice(10, 20), 0.9)
    road = blob((20, 40), slice(15, 20), slice(0, 40), 0.7)
    maps = {"box": {"Car": car}, "mask": {"Car": car, "Road": road}}
    outputs, uncertainty = text_outputs([box, mask], maps, (40, 80),
                                        TextSettings(0.5, 0.0, 1.0), threshold=None)
    boxes = [o for o in outputs if isinstance(o, Boxes)]
    masks = [o for o in outputs if isinstance(o, Mask)]
    assert len(boxes) == 1 and boxes[0].detections.labels == ("Car",)
    assert boxes[0].detections.xyxy.tolist() == [[20.0, 10.0, 40.0, 20.0]]  # x2 scale
    assert [m.label for m in masks] == ["Car", "Road"]
    assert masks[0].mask.shape == (40, 80) and masks[0].mask.sum() == 10 * 20
    assert masks[1].score == pytest.approx(0.7)
    assert uncertainty == pytest.approx(probability_map_uncertainty(np.stack([car, road])))


def test_map_uncertainty_ignores_sure_background() -> None:
    sure = blob((10, 10), slice(0, 2), slice(0, 2), 0.99)
    doubtful = blob((10, 10), slice(0, 2), slice(0, 2), 0.5)
    assert probability_map_uncertainty(np.zeros((10, 10))) == 0.0
    assert probability_map_uncertainty(doubtful) == pytest.approx(1.0)
    assert probability_map_uncertainty(sure) == pytest.approx(0.02)
