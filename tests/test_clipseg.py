"""The CLIPSeg adapter on a tiny random-init model built with transformers' own classes and
loaded through ``from_pretrained``: the cached path equals the stock one, one backbone pass
serves every prompt, prompts reach the model, results are valid Label Studio regions, and a
missing model fails CLIPSeg only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml_backend.app import create_app
from ml_backend.core.errors import ModelUnavailable
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.jobs.queues import InProcessQueue
from ml_backend.jobs.registry import job_registry
from ml_backend.labelstudio.rle import rle_to_mask
from ml_backend.models.classifier.training import train_classifier
from ml_backend.models.clipseg.model import load_clipseg, locate_clipseg
from ml_backend.runtime import Runtime

from app_fixture import backend_app
from conftest import DIGITS_CONFIG, hosted_digit_tasks
from fakes import FakeLabelStudioAPI
from sam_fixture import HEIGHT, WIDTH

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="prompt" toName="image" editable="true" rows="1" maxSubmissions="1"/>
  <RectangleLabels name="box" toName="image">
    <Label value="Car" hint="a photo of a car"/><Label value="Bus"/>
  </RectangleLabels>
  <BrushLabels name="mask" toName="image"><Label value="Road"/></BrushLabels>
</View>"""
TASK = {"id": 3, "data": {"image": "/data/local-files/?d=set1/img_3.png"}}


class TextSpy:
    """The prompts CLIPSeg's text model is run on, decoded back from its token ids."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.prompts: list[str] = []
        self._tokenizer = tokenizer
        self._handle = model.clip.text_model.register_forward_pre_hook(self._record,
                                                                       with_kwargs=True)

    def _record(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.prompts += [t.strip() for t in
                         self._tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def close(self) -> None:
        self._handle.remove()


class PassCounter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self._handle = module.register_forward_hook(self._count)

    def _count(self, *_: Any) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def picture(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)


def test_cached_activations_give_the_stock_logits_with_one_backbone_pass(tiny_clipseg) -> None:
    segmenter = load_clipseg(locate_clipseg(str(tiny_clipseg)), torch.device("cpu"))
    prompts = ["car", "a bus", "road", "sky", "tree", "person", "dog", "cat"]
    pixels = picture()
    backbone = PassCounter(segmenter.model.clip.vision_model)
    try:
        image = segmenter.encode_image(pixels)
        ours = segmenter.logits(image, prompts)
        assert backbone.calls == 1
        # The stock usage: the image repeated once per prompt, a backbone pass for each.
        inputs = segmenter.processor(text=prompts, images=[pixels] * len(prompts),
                                     padding=True, return_tensors="pt")
        with torch.inference_mode():
            stock = segmenter.model(**inputs).logits
        assert backbone.calls == 2  # one batched call of 8 images
    finally:
        backbone.close()
    assert ours.shape == stock.shape == (8, 64, 64)
    assert torch.allclose(ours, stock, atol=1e-4)


def test_text_embeddings_are_cached_per_prompt(tiny_clipseg) -> None:
    segmenter = load_clipseg(locate_clipseg(str(tiny_clipseg)), torch.device("cpu"))
    spy = TextSpy(segmenter.model, segmenter.processor.tokenizer)
    try:
        image = segmenter.encode_image(picture())
        segmenter.probabilities(image, ["car", "bus"], "background")
        segmenter.probabilities(image, ["bus", "road"], "background")
    finally:
        spy.close()
    assert sorted(spy.prompts) == ["background", "bus", "car", "road"]  # each once
    assert segmenter.counts["texts_encoded"] == 4


def test_probabilities_compete_with_the_background_or_stand_alone(tiny_clipseg) -> None:
    segmenter = load_clipseg(locate_clipseg(str(tiny_clipseg)), torch.device("cpu"))
    image = segmenter.encode_image(picture())
    competing = segmenter.probabilities(image, ["car", "bus"], "background")
    assert competing.shape == (2, HEIGHT, WIDTH) and competing.dtype == np.float32
    assert (competing.sum(axis=0) < 1.0 + 1e-5).all()  # the background takes the rest
    alone = segmenter.probabilities(image, ["car", "bus"], None)
    assert ((alone > 0) & (alone < 1)).all()


def test_batch_predict_gives_boxes_and_brush_masks_and_reaches_the_model(clipseg_app
                                                                          ) -> None:
    client, runtime, _ = clipseg_app
    body = {"tasks": [TASK], "project": "5.1", "label_config": CONFIG, "params": {}}
    segmenter = runtime.clipseg.model()
    spy = TextSpy(segmenter.model, segmenter.processor.tokenizer)
    try:
        response = client.post("/predict", json=body)
    finally:
        spy.close()
    assert response.status_code == 200, response.get_json()
    assert sorted(spy.prompts) == ["a photo of a car", "background", "bus", "road"]
    [prediction] = response.get_json()["results"]
    assert 0.0 <= prediction["score"] <= 1.0
    boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
    brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    # Threshold 0: every pixel counts, so each label is one box over the whole image.
    assert sorted(b["value"]["rectanglelabels"][0] for b in boxes) == ["Bus", "Car"]
    for region in boxes:
        assert region["original_width"] == WIDTH and region["original_height"] == HEIGHT
        value = region["value"]
        assert (value["x"], value["y"], value["width"], value["height"]) == (0, 0, 100, 100)
        assert 0.0 < region["score"] <= 1.0
    [brush] = brushes
    assert brush["value"]["brushlabels"] == ["Road"] and brush["from_name"] == "mask"
    decoded = rle_to_mask(brush["value"]["rle"], HEIGHT, WIDTH)
    assert decoded.shape == (HEIGHT, WIDTH) and decoded.all()
    health = client.get("/health").get_json()["models"]["clipseg"]
    assert health["status"] == "ready" and health["image_passes"] == 1
    client.post("/predict", json=body)  # the same image again: no second backbone pass
    assert client.get("/health").get_json()["models"]["clipseg"]["image_passes"] == 1


def test_typed_prompt_goes_to_every_box_and_mask_control_under_the_named_label(clipseg_app
                                                                               ) -> None:
    client, runtime, _ = clipseg_app
    segmenter = runtime.clipseg.model()
    spy = TextSpy(segmenter.model, segmenter.processor.tokenizer)
    context = {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                           "value": {"text": ["the bus on the left"]}}]}
    try:
        response = client.post("/predict", json={
            "tasks": [TASK], "project": "5.1", "label_config": CONFIG,
            "params": {"context": context}})
    finally:
        spy.close()
    assert response.status_code == 200, response.get_json()
    assert spy.prompts == ["background", "the bus on the left"]
    [prediction] = response.get_json()["results"]
    labels = {r["from_name"]: r["value"].get("rectanglelabels", r["value"].get("brushlabels"))
              for r in prediction["result"]}
    assert labels == {"box": ["Bus"], "mask": ["Road"]}  # the mask control has no "bus"


def test_threshold_number_in_the_context_is_applied(clipseg_app) -> None:
    client, _, _ = clipseg_app
    config = CONFIG.replace("</View>", '<Number name="threshold" toName="image"/></View>')
    context = {"result": [
        {"from_name": "prompt", "to_name": "image", "type": "textarea",
         "value": {"text": ["bus"]}},
        {"from_name": "threshold", "to_name": "image", "type": "number",
         "value": {"number": 1.0}}]}
    body = {"tasks": [TASK], "project": "5.1", "label_config": config,
            "params": {"context": context}}
    [prediction] = client.post("/predict", json=body).get_json()["results"]
    assert prediction["result"] == []  # nothing exceeds probability 1
    context["result"][1]["value"]["number"] = "high"
    response = client.post("/predict", json=body)
    assert response.status_code == 400 and "threshold" in response.get_json()["error"]


MIXED = DIGITS_CONFIG.replace("</View>", """
  <TextArea name="prompt" toName="image"/>
  <RectangleLabels name="box" toName="image" model="clipseg">
    <Label value="Digit"/>
  </RectangleLabels>
</View>""")


@pytest.mark.parametrize("model, message", [
    ("{tmp}/nowhere", "no such model directory"),
    ("CIDAS/clipseg-rd64-refined", "not in the local Hugging Face cache"),
    ("{tmp}/broken", "could not be loaded as CLIPSeg"),
])
def test_missing_model_fails_clipseg_only(make_settings, image_host, tmp_path: Path,
                                          monkeypatch, model: str, message: str) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty local cache
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"model_type": "clipseg"}))
    settings = make_settings(label_studio_url=image_host.url,
                             clipseg_model=model.format(tmp=tmp_path))
    with backend_app(settings) as (client, runtime, _):
        tasks = hosted_digit_tasks(image_host, 50)
        runtime.ls_api = FakeLabelStudioAPI(MIXED, tasks[:40])  # type: ignore[assignment]
        assert train_classifier(runtime, TrainRequest(project=7, mode="full")).status == "trained"

        typed = {"tasks": [{"id": 41, "data": tasks[40]["data"]}], "project": "7.1",
                 "label_config": MIXED, "params": {"context": {"result": [
                     {"from_name": "prompt", "type": "textarea", "value": {"text": ["7"]}}]}}}
        response = client.post("/predict", json=typed)
        assert response.status_code == 503 and message in response.get_json()["error"]
        health = client.get("/health").get_json()["models"]["clipseg"]
        assert health["status"] == "error" and message in health["error"]
        # The classifier on the same config keeps predicting; CLIPSeg adds nothing.
        batch = {"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks[40:]],
                 "project": "7.1", "label_config": MIXED}
        results = client.post("/predict", json=batch).get_json()["results"]
        assert len(results) == 10
        assert all([r["type"] for r in p["result"]] == ["choices"] for p in results)


def test_unset_model_names_the_setting() -> None:
    with pytest.raises(ModelUnavailable, match="CLIPSEG_MODEL is not set"):
        locate_clipseg(None)


def test_text_box_sam_mask_when_both_are_configured(make_settings, tiny_clipseg, tiny_sam,
                                                    docs) -> None:
    from sam_fixture import TINY_SAM_TYPE

    settings = make_settings(clipseg_model=str(tiny_clipseg), clipseg_threshold=0.0,
                             sam_checkpoint=tiny_sam, sam_model_type=TINY_SAM_TYPE,
                             local_files_document_root=docs)
    runtime = Runtime(settings)
    jobs = InProcessQueue(runtime, job_registry())
    client = create_app(settings, runtime=runtime, jobs=jobs, warm_up=False).test_client()
    config = CONFIG.replace('<BrushLabels name="mask" toName="image">',
                            '<BrushLabels name="mask" toName="image" sam_refine="true">')
    boxes: list[np.ndarray] = []
    sam = runtime.sam.segmenter().model
    handle = sam.prompt_encoder.register_forward_hook(
        lambda module, args, kwargs, out: boxes.append(kwargs["boxes"][0].numpy().copy()),
        with_kwargs=True)
    try:
        response = client.post("/predict", json={"tasks": [TASK], "project": "5.1",
                                                 "label_config": config})
    finally:
        handle.remove()
        jobs.close()
    assert response.status_code == 200, response.get_json()
    # CLIPSeg's one component (every pixel at threshold 0) reached SAM as a box, in SAM's
    # input coordinates (the long side scaled to 1024, the other rounded to whole pixels).
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], [0, 0, 1024, round(HEIGHT * 1024 / WIDTH)])
    [brush] = [r for r in response.get_json()["results"][0]["result"]
               if r["type"] == "brushlabels"]
    assert rle_to_mask(brush["value"]["rle"], HEIGHT, WIDTH).shape == (HEIGHT, WIDTH)


def test_a_spent_time_budget_gives_empty_predictions_not_a_timeout(make_settings, tiny_clipseg,
                                                                    docs) -> None:
    settings = make_settings(clipseg_model=str(tiny_clipseg), clipseg_threshold=0.0,
                             local_files_document_root=docs, request_time_budget_s=0.0)
    tasks = [TASK, {"id": 4, "data": {"image": "/data/local-files/?d=set1/img_4.png"}}]
    with backend_app(settings) as (client, _, _):
        response = client.post("/predict", json={"tasks": tasks, "project": "5.1",
                                                 "label_config": CONFIG})
        assert response.status_code == 200
        assert [r["result"] for r in response.get_json()["results"]] == [[], []]
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'mlb_task_errors_total{reason="time-budget"} 2.0' in metrics


def test_an_over_long_typed_prompt_is_a_clear_400(clipseg_app) -> None:
    client, _, _ = clipseg_app
    context = {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                           "value": {"text": ["a car " * 100]}}]}
    response = client.post("/predict", json={"tasks": [TASK], "project": "5.1",
                                             "label_config": CONFIG,
                                             "params": {"context": context}})
    assert response.status_code == 400 and "the limit is 300" in response.get_json()["error"]
