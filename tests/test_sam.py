"""Interactive segmentation through the Flask app on a tiny random-init SAM: the captured
smart-tool bodies, what reaches the model, brush and polygon output, a missing checkpoint."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from ml_backend.app import create_app
from ml_backend.core.errors import ModelUnavailable
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.jobs.queues import InProcessQueue
from ml_backend.jobs.registry import job_registry
from ml_backend.labelstudio.label_config import ModelFamily, parse_label_config
from ml_backend.labelstudio.rle import rle_to_mask
from ml_backend.models.classifier.training import train_classifier
from ml_backend.models.sam.loading import load_sam, locate_sam
from ml_backend.models.sam.model import SamPrompt
from ml_backend.runtime import Runtime

from app_fixture import backend_app
from conftest import DIGITS_CONFIG, hosted_digit_tasks, load_capture
from fakes import FakeLabelStudioAPI
from sam_fixture import HEIGHT, SEGMENTATION_CONFIG, TINY_SAM_TYPE, WIDTH, square_scene


class PromptSpy:
    """Records what a SAM model's prompt encoder is called with (model input coordinates),
    for either generation (SAM 2.1 names it ``sam_prompt_encoder`` and passes a box as two
    labelled points)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[dict[str, Any]] = []
        encoder = getattr(model, "sam_prompt_encoder", None) or model.prompt_encoder
        self._handle = encoder.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        points = kwargs.get("points")
        boxes = kwargs.get("boxes")
        self.calls.append({
            "coords": None if points is None else points[0][0].numpy().copy(),
            "labels": None if points is None else points[1][0].numpy().tolist(),
            "box": None if boxes is None else boxes[0].numpy().copy()})

    def close(self) -> None:
        self._handle.remove()


def keypoint(x: float, y: float, label: str, positive: bool = True,
             name: str = "kp") -> dict[str, Any]:
    return {"from_name": name, "to_name": "image", "type": "keypointlabels",
            "is_positive": positive, "origin": "manual",
            "original_width": WIDTH, "original_height": HEIGHT,
            "value": {"x": x, "y": y, "width": 0.25, "keypointlabels": [label]}}


def rectangle(x: float, y: float, w: float, h: float, label: str,
              name: str = "box") -> dict[str, Any]:
    return {"from_name": name, "to_name": "image", "type": "rectanglelabels",
            "is_positive": True, "origin": "manual",
            "original_width": WIDTH, "original_height": HEIGHT,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                      "rectanglelabels": [label]}}


def stock_candidates(stock: Any, points: np.ndarray, positive: np.ndarray,
                     box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The candidate masks and scores a stock predictor (segment-anything's SamPredictor or
    sam2's SAM2ImagePredictor, image already set) offers for one prompt, in the order our
    segmenters rank them: the single-mask answer first unless one click makes it ambiguous."""
    clicks = {"point_coords": points if len(points) else None,
              "point_labels": positive.astype(np.int64) if len(points) else None, "box": box}
    multi_masks, multi_scores, _ = stock.predict(multimask_output=True, **clicks)
    if len(points) == 1 and box is None:  # one click is ambiguous: SAM's three masks only
        return multi_masks, multi_scores
    single_mask, single_score, _ = stock.predict(multimask_output=False, **clicks)
    return (np.concatenate([single_mask, multi_masks]),
            np.concatenate([single_score, multi_scores]))


def interactive_body(config: str, context: list[dict[str, Any]],
                     image: str = "/data/local-files/?d=set1/img_3.png") -> dict[str, Any]:
    body = copy.deepcopy(load_capture("predict_interactive_smart_keypoint_from_ui.json")["body"])
    body["label_config"] = config
    body["tasks"][0]["data"]["image"] = image
    body["params"]["context"] = {"result": context}
    return body


def predict_spied(client: Any, spy: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``/predict`` with ``spy`` recording the prompt encoder's calls (removed after); the
    predictions of a 200 response."""
    try:
        response = client.post("/predict", json=body)
    finally:
        spy.close()
    assert response.status_code == 200, response.get_json()
    return list(response.get_json()["results"])


def brush_region_of_image_size(prediction: dict[str, Any]) -> dict[str, Any]:
    """The prediction's one region, checked to be an RLE brush mask of the whole image whose
    score is the prediction's."""
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels" and region["value"]["format"] == "rle"
    assert (region["original_width"], region["original_height"]) == (WIDTH, HEIGHT)
    mask = rle_to_mask(region["value"]["rle"], HEIGHT, WIDTH)
    assert mask.shape == (HEIGHT, WIDTH) and set(np.unique(mask)) <= {0, 255}
    assert 0.0 <= region["score"] == prediction["score"]
    return dict(region)


def in_model_frame(x_percent: float, y_percent: float) -> np.ndarray:
    """Where a click at percent coordinates lands in SAM's 1024-long-side input."""
    scale = 1024 / WIDTH
    return np.array([x_percent / 100 * WIDTH * scale, y_percent / 100 * HEIGHT * scale])


def test_captured_smart_keypoint_gives_a_brush_mask_of_the_image_size(sam_app) -> None:
    client, runtime, _ = sam_app
    body = load_capture("predict_interactive_smart_keypoint_from_ui.json")["body"]
    spy = PromptSpy(runtime.sam.segmenter().model)
    (prediction,) = predict_spied(client, spy, body)
    region = brush_region_of_image_size(prediction)
    assert (region["from_name"], region["to_name"]) == ("mask", "image")
    assert region["value"]["brushlabels"] == ["Cat"]
    # The click reached the model at its place in the model's frame, as a positive point.
    (call,) = spy.calls
    click = body["params"]["context"]["result"][0]["value"]
    np.testing.assert_allclose(call["coords"][0], in_model_frame(click["x"], click["y"]),
                               atol=1.0)
    assert call["labels"] == [1] and call["box"] is None


def test_positive_and_negative_points_and_a_box_reach_the_model(sam_app) -> None:
    client, runtime, _ = sam_app
    context = [keypoint(60, 50, "Object"), keypoint(10, 10, "Object", positive=False),
               keypoint(90, 90, "Background"),  # another label: not part of this prompt
               rectangle(40, 20, 30, 55, "Object"), keypoint(70, 40, "Object")]
    spy = PromptSpy(runtime.sam.segmenter().model)
    (prediction,) = predict_spied(client, spy, interactive_body(SEGMENTATION_CONFIG, context))
    (region,) = prediction["result"]
    assert region["value"]["brushlabels"] == ["Object"]
    (call,) = spy.calls
    assert call["labels"] == [1, 0, 1]
    expected = [in_model_frame(60, 50), in_model_frame(10, 10), in_model_frame(70, 40)]
    np.testing.assert_allclose(call["coords"], np.stack(expected), atol=1.0)
    corners = np.concatenate([in_model_frame(40, 20), in_model_frame(70, 75)])
    np.testing.assert_allclose(call["box"], corners, atol=1.0)


def test_polygon_control_gets_a_simplified_polygon(any_sam_app) -> None:
    client, _, _ = any_sam_app
    config = SEGMENTATION_CONFIG.replace("BrushLabels", "PolygonLabels")
    response = client.post("/predict", json=interactive_body(
        config, [rectangle(45, 20, 40, 55, "Object")]))
    assert response.status_code == 200, response.get_json()
    regions = response.get_json()["results"][0]["result"]
    for region in regions:
        assert region["type"] == "polygonlabels" and region["value"]["closed"] is True
        assert region["value"]["polygonlabels"] == ["Object"]
        points = np.array(region["value"]["points"])
        assert points.shape[1] == 2 and len(points) >= 3
        assert points.min() >= 0.0 and points.max() <= 100.0


def test_with_brush_and_polygon_the_control_next_to_the_smart_tool_wins() -> None:
    from ml_backend.models.sam.prompts import click_request

    both = """<View><Image name="image" value="$image"/>
      <BrushLabels name="mask" toName="image"><Label value="Cat"/></BrushLabels>
      <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Cat"/></KeyPointLabels>
      <PolygonLabels name="poly" toName="image"><Label value="Cat"/><Label value="Dog"/>
      </PolygonLabels>
      <RectangleLabels name="box" toName="image" smart="true"><Label value="Cat"/>
      </RectangleLabels></View>"""
    parsed = parse_label_config(both)
    assert {c.name for c in parsed.prompts} == {"kp", "box"}
    assert not parsed.for_family(ModelFamily.DETECTOR)  # a smart box prompts, not detects
    # kp sits between mask and poly at equal distance: the brush wins the tie.
    assert click_request({"result": [keypoint(5, 5, "Cat")]}, parsed).target.name == "mask"
    # The box tool sits next to the polygon control.
    request = click_request({"result": [rectangle(5, 5, 9, 9, "Cat")]}, parsed)
    assert request.target.name == "poly"
    # Only the polygon control has "Dog".
    dog = click_request({"result": [keypoint(5, 5, "Dog")]}, parsed)
    assert dog.target.name == "poly" and dog.label == "Dog"


def test_smart_rectangle_without_a_mask_control_still_detects() -> None:
    config = """<View><Image name="image" value="$image"/>
      <RectangleLabels name="box" toName="image" smart="true"><Label value="Cat"/>
      </RectangleLabels></View>"""
    parsed = parse_label_config(config)
    assert parsed.prompts == () and parsed.for_family(ModelFamily.DETECTOR)


@pytest.mark.parametrize("context, message", [
    ([keypoint(10, 10, "Object") | {"value": {"x": "left", "y": 3}}], "must be a number"),
    ([keypoint(10, 10, "Unknown")], "none of the mask controls"),
    ([rectangle(10, 10, 0, 5, "Object")], "positive width"),
])
def test_bad_clicks_are_clear_400s(sam_app, context: list[dict[str, Any]], message: str
                                   ) -> None:
    client, _, _ = sam_app
    response = client.post("/predict", json=interactive_body(SEGMENTATION_CONFIG, context))
    assert response.status_code == 400 and message in response.get_json()["error"]


def test_a_broken_image_is_a_clear_error_and_the_next_click_works(sam_app, docs) -> None:
    client, _, _ = sam_app
    (docs / "set1" / "broken.png").write_bytes(b"not a png")
    click = [keypoint(50, 50, "Object")]
    broken = client.post("/predict", json=interactive_body(
        SEGMENTATION_CONFIG, click, "/data/local-files/?d=set1/broken.png"))
    assert broken.status_code == 422 and "decode" in broken.get_json()["error"]
    assert client.post("/predict", json=interactive_body(SEGMENTATION_CONFIG, click)
                       ).status_code == 200


def test_second_click_reuses_the_embedding(sam_app) -> None:
    client, runtime, _ = sam_app
    click = [keypoint(50, 50, "Object")]
    for _ in range(3):
        assert client.post("/predict", json=interactive_body(SEGMENTATION_CONFIG, click)
                           ).status_code == 200
    counts = runtime.sam.embeddings.counts
    assert counts["computed"] == 1 and counts["memory"] == 2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'mlb_sam_embeddings_total{source="computed"} 1.0' in metrics
    assert 'mlb_cache_lookups_total{cache="sam_embeddings",result="hit"} 2.0' in metrics
    assert 'mlb_cache_lookups_total{cache="sam_embeddings",result="miss"} 1.0' in metrics


MIXED_CONFIG = DIGITS_CONFIG.replace("</View>", """
  <BrushLabels name="mask" toName="image"><Label value="Digit"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Digit"/></KeyPointLabels>
</View>""")


def test_missing_checkpoint_fails_sam_only(make_settings, image_host) -> None:
    settings = make_settings(label_studio_url=image_host.url, sam_model_type="vit_b")
    with backend_app(settings) as (client, runtime, _):
        tasks = hosted_digit_tasks(image_host, 60)
        runtime.ls_api = FakeLabelStudioAPI(MIXED_CONFIG, tasks[:40])  # type: ignore[assignment]
        assert train_classifier(runtime, TrainRequest(project=7, mode="full")).status == "trained"

        health = client.get("/health").get_json()["models"]["sam"]
        assert health["status"] == "error" and "SAM_CHECKPOINT is not set" in health["error"]
        click = {"tasks": [{"id": 41, "data": tasks[40]["data"]}], "project": "7.1",
                 "label_config": MIXED_CONFIG,
                 "params": {"context": {"result": [keypoint(50, 50, "Digit")]}}}
        response = client.post("/predict", json=click)
        assert response.status_code == 503
        assert "SAM_CHECKPOINT is not set" in response.get_json()["error"]
        # The classifier on the same config keeps predicting, with or without a context.
        batch = {"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks[40:]],
                 "project": "7.1", "label_config": MIXED_CONFIG, "params": {"context": None}}
        results = client.post("/predict", json=batch).get_json()["results"]
        assert len(results) == 20
        assert all(r["result"][0]["type"] == "choices" for r in results)


def test_a_checkpoint_of_another_architecture_is_a_clear_error(make_settings, tiny_sam,
                                                               docs) -> None:
    settings = make_settings(sam_checkpoint=tiny_sam, sam_model_type="vit_b",
                             local_files_document_root=docs)
    runtime = Runtime(settings)
    client = create_app(settings, runtime=runtime, jobs=InProcessQueue(runtime, job_registry()),
                        warm_up=False).test_client()
    response = client.post("/predict", json=interactive_body(
        SEGMENTATION_CONFIG, [keypoint(50, 50, "Object")]))
    assert response.status_code == 503
    assert "does not fit SAM_MODEL_TYPE=vit_b" in response.get_json()["error"]
    assert "does not fit" in client.get("/health").get_json()["models"]["sam"]["error"]


def test_a_checkpoint_with_one_renamed_key_is_refused_naming_it(tiny_sam, tmp_path) -> None:
    state = torch.load(tiny_sam, map_location="cpu", weights_only=True)
    state["mask_decoder.iou_head.weight"] = state.pop(
        "mask_decoder.iou_prediction_head.layers.0.weight")
    torch.save(state, tmp_path / "renamed.pth")
    weights = locate_sam(TINY_SAM_TYPE, tmp_path / "renamed.pth")
    with pytest.raises(ModelUnavailable) as caught:
        load_sam(weights, torch.device("cpu"))
    assert ("1 missing from the checkpoint (mask_decoder.iou_prediction_head.layers.0.weight)"
            in str(caught.value))
    assert "1 not in the architecture (mask_decoder.iou_head.weight)" in str(caught.value)


SAM_PROMPTS = {  # image pixels of square_scene(112, 72): x, y; box x0, y0, x1, y1
    "one positive click": (np.array([[60.0, 30.0]]), np.array([True]), None),
    "positive and negative clicks": (np.array([[60.0, 30.0], [10.0, 10.0]]),
                                     np.array([True, False]), None),
    "a box": (np.zeros((0, 2)), np.zeros(0, dtype=bool), np.array([50.0, 15.0, 100.0, 60.0])),
    "a box and clicks": (np.array([[70.0, 35.0], [20.0, 60.0]]), np.array([True, False]),
                         np.array([50.0, 15.0, 100.0, 60.0])),
}


def ours_and_stock(segmenter: Any, make_stock: Any, prompt: str
                   ) -> tuple[Any, np.ndarray, np.ndarray]:
    """Our mask for ``SAM_PROMPTS[prompt]`` on the square scene, and the candidate masks and
    scores a stock predictor (``make_stock()``, made after our decode) offers for the same;
    fails unless the candidate scores agree to 6 decimals."""
    pixels = square_scene(112, 72)
    points, positive, box = SAM_PROMPTS[prompt]
    ours = segmenter.segment(segmenter.embed(pixels), SamPrompt(points, positive, box))
    stock = make_stock()
    stock.set_image(pixels)  # RGB
    masks, scores = stock_candidates(stock, points, positive, box)
    np.testing.assert_allclose(ours.candidate_scores, scores, rtol=0, atol=5e-7)  # 6 decimals
    return ours, masks, scores


@pytest.mark.parametrize("favoured", [None, 0, 1, 2, 3])
@pytest.mark.parametrize("prompt", SAM_PROMPTS)
def test_the_stateless_path_gives_the_stock_predictors_masks(tiny_sam, monkeypatch,
                                                             prompt: str, favoured: int | None
                                                             ) -> None:
    """Our path (embedding as a value, then prompt encoder + decoder) against segment-
    anything's own SamPredictor on the same weights, image and prompt: the same candidate
    scores, and the mask we choose equal, pixel for pixel, to the stock mask of the same
    candidate (stock multimask off gives candidate 0, on gives 1-3).

    ``favoured`` raises one candidate's predicted IoU (in the decoder both paths call) so that
    each candidate in turn is the one chosen and compared; None leaves the model's choice."""
    from segment_anything import SamPredictor

    weights = locate_sam(TINY_SAM_TYPE, tiny_sam)
    segmenter = load_sam(weights, torch.device("cpu"))
    model = segmenter.model
    if favoured is not None:
        decode = model.mask_decoder.predict_masks

        def favouring(**kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            masks, iou = decode(**kwargs)
            return masks, iou + 10 * (torch.arange(iou.shape[1]) == favoured)

        monkeypatch.setattr(model.mask_decoder, "predict_masks", favouring)
    ours, masks, scores = ours_and_stock(segmenter, lambda: SamPredictor(model), prompt)
    chosen = int(np.argmax(scores))
    if favoured is not None and (len(scores) == 4 or favoured > 0):  # else never a choice
        assert chosen == favoured - (4 - len(scores))
    assert ours.score == float(scores[chosen])
    assert ours.mask.dtype == masks.dtype == np.bool_
    assert np.array_equal(ours.mask, masks[chosen])
    assert 0 < ours.mask.mean() < 1  # a real comparison: not an empty or full mask
