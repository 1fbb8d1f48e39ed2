"""SAM 2.1 on a small random-init Hiera built from the released tiny config: model types,
the strict checkpoint load, equality with sam2's own SAM2ImagePredictor, the embedding file,
and clicks through the Flask app as Label Studio sends them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_sam import (
    SAM_PROMPTS,
    PromptSpy,
    brush_region_of_image_size,
    interactive_body,
    keypoint,
    ours_and_stock,
    predict_spied,
    rectangle,
)

from ml_backend.core.errors import ModelUnavailable
from ml_backend.models.sam.embeddings import deserialize, serialize
from ml_backend.models.sam.loading import check_model_type, load_sam, locate_sam
from ml_backend.models.sam.model import SamPrompt
from ml_backend.models.sam.sam2_1 import SAM2_1_CONFIGS, sam2_1_overrides

from conftest import load_capture
from sam_fixture import SEGMENTATION_CONFIG, TINY_SAM2_1_TYPE, square_scene


def in_model_frame(x_percent: float, y_percent: float) -> np.ndarray:
    """Where a click at percent coordinates lands in SAM 2.1's square 1024 input."""
    return np.array([x_percent / 100 * 1024, y_percent / 100 * 1024])


@pytest.mark.parametrize("model_type", sorted(SAM2_1_CONFIGS))
def test_the_released_models_map_to_their_configs(model_type: str) -> None:
    config, overrides = sam2_1_overrides(model_type)
    check_model_type(model_type)
    assert config.startswith("configs/sam2.1/sam2.1_hiera_") and overrides == []
    import sam2

    assert (Path(sam2.__file__).parent / config).is_file()


def test_the_weights_script_fetches_every_released_model_type() -> None:
    from ml_backend.models.sam.sam1 import SAM_ARCHITECTURES

    spec = importlib.util.spec_from_file_location(
        "download_weights", Path(__file__).resolve().parents[1] / "scripts/download_weights.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert set(script.SAM_URLS) == set(SAM_ARCHITECTURES) | set(SAM2_1_CONFIGS)
    assert script.SAM_URLS["sam2.1_hiera_tiny"].endswith("/092824/sam2.1_hiera_tiny.pt")


@pytest.mark.parametrize("model_type, message", [
    ("sam2.1_hiera_huge", "is not one of sam2.1_hiera_tiny"),
    ("sam2.1_hiera:16/1-1-1-1", "stage 3's >= 2"),
    ("sam2.1_hiera:0/1-1-2-1", "must be >= 1"),
    ("vit_x", "sam2.1_hiera_tiny"),
])
def test_a_bad_model_type_names_what_is_accepted(model_type: str, message: str) -> None:
    with pytest.raises(ModelUnavailable, match=message):
        check_model_type(model_type)


def test_a_missing_checkpoint_says_how_to_fetch_this_model(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"--sam sam2\.1_hiera_small"):
        locate_sam("sam2.1_hiera_small", None)
    with pytest.raises(ModelUnavailable, match="does not exist"):
        locate_sam("sam2.1_hiera_small", tmp_path / "nothing.pt")


def test_a_checkpoint_of_another_size_is_refused_naming_both(tiny_sam2_1: Path) -> None:
    weights = locate_sam("sam2.1_hiera:16/1-1-3-1", tiny_sam2_1)
    with pytest.raises(ModelUnavailable) as caught:
        load_sam(weights, torch.device("cpu"))
    message = str(caught.value)
    assert "does not fit SAM_MODEL_TYPE=sam2.1_hiera:16/1-1-3-1" in message
    assert str(tiny_sam2_1) in message
    assert "not in the architecture (image_encoder.trunk.blocks.4" in message


def test_a_sam1_checkpoint_is_refused_for_sam2_1(tiny_sam: Path) -> None:
    weights = locate_sam(TINY_SAM2_1_TYPE, tiny_sam)
    with pytest.raises(ModelUnavailable, match="missing from the checkpoint"):
        load_sam(weights, torch.device("cpu"))


def test_a_bare_state_dict_loads_like_the_released_wrapped_one(tiny_sam2_1: Path,
                                                               tmp_path: Path) -> None:
    state = torch.load(tiny_sam2_1, map_location="cpu", weights_only=True)["model"]
    torch.save(state, tmp_path / "bare.pt")
    pixels = square_scene(112, 72)
    prompt = SamPrompt(np.array([[60.0, 30.0]]), np.array([True]))
    masks = []
    for path in (tiny_sam2_1, tmp_path / "bare.pt"):
        segmenter = load_sam(locate_sam(TINY_SAM2_1_TYPE, path), torch.device("cpu"))
        masks.append(segmenter.segment(segmenter.embed(pixels), prompt).mask)
    np.testing.assert_array_equal(masks[0], masks[1])


@pytest.mark.parametrize("favoured", [None, 0, 1, 2, 3])
@pytest.mark.parametrize("prompt", SAM_PROMPTS)
def test_the_stateless_path_gives_sam2s_own_predictors_masks(tiny_sam2_1: Path, monkeypatch,
                                                             prompt: str, favoured: int | None
                                                             ) -> None:
    """Our path (embedding as a value, then prompt encoder + decoder) against sam2's own
    SAM2ImagePredictor on the same weights, image and prompt: the same candidate scores, and
    the mask we choose equal, pixel for pixel, to the stock mask of the same candidate (stock
    multimask on gives candidates 1-3; off gives candidate 0 once its fallback to the
    multimask outputs for unstable masks is switched off, as our choice covers that).

    ``favoured`` raises one candidate's predicted IoU (in the decoder both paths call) so that
    each candidate in turn is the one chosen and compared; None leaves the model's choice."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    segmenter = load_sam(locate_sam(TINY_SAM2_1_TYPE, tiny_sam2_1), torch.device("cpu"))
    model = segmenter.model
    if favoured is not None:
        decode = model.sam_mask_decoder.predict_masks

        def favouring(**kwargs: Any) -> tuple[torch.Tensor, ...]:
            masks, iou, tokens, objects = decode(**kwargs)
            return masks, iou + 10 * (torch.arange(iou.shape[1]) == favoured), tokens, objects

        monkeypatch.setattr(model.sam_mask_decoder, "predict_masks", favouring)
    def stock() -> SAM2ImagePredictor:
        # Stock single-mask output falls back to the multimask outputs for unstable masks;
        # our choice covers that, so the comparison switches it off.
        monkeypatch.setattr(model.sam_mask_decoder, "dynamic_multimask_via_stability", False)
        return SAM2ImagePredictor(model)

    ours, masks, scores = ours_and_stock(segmenter, stock, prompt)
    chosen = int(np.argmax(scores))
    if favoured is not None and (len(scores) == 4 or favoured > 0):  # else never a choice
        assert chosen == (favoured if len(scores) == 4 else favoured - 1)
    assert ours.score == pytest.approx(float(scores[chosen]), abs=1e-6)
    assert ours.mask.shape == (72, 112)
    np.testing.assert_array_equal(ours.mask, masks[chosen].astype(bool))


def test_an_embedding_file_keeps_the_high_resolution_maps(tiny_sam2_1: Path) -> None:
    segmenter = load_sam(locate_sam(TINY_SAM2_1_TYPE, tiny_sam2_1), torch.device("cpu"))
    embedding = segmenter.embed(square_scene(112, 72))
    assert [level.shape for level in embedding.high_res] == [(1, 32, 256, 256),
                                                             (1, 64, 128, 128)]
    assert embedding.nbytes == 16 * 2**20
    restored = deserialize(serialize(embedding))
    assert restored.original_size == (72, 112) and restored.input_size == (1024, 1024)
    for before, after in zip((embedding.features, *embedding.high_res),
                             (restored.features, *restored.high_res), strict=True):
        np.testing.assert_array_equal(before, after)
    prompt = SamPrompt(np.zeros((0, 2)), np.zeros(0, dtype=bool), np.array([50.0, 15, 100, 60]))
    np.testing.assert_array_equal(segmenter.segment(embedding, prompt).mask,
                                  segmenter.segment(restored, prompt).mask)


def test_a_sam1_embedding_is_a_clear_error_for_sam2_1(tiny_sam2_1: Path) -> None:
    from ml_backend.models.sam.model import SamEmbedding

    segmenter = load_sam(locate_sam(TINY_SAM2_1_TYPE, tiny_sam2_1), torch.device("cpu"))
    sam1 = SamEmbedding(np.zeros((1, 256, 64, 64), np.float32), (72, 112), (659, 1024))
    with pytest.raises(ValueError, match=r"not a SAM 2\.1 embedding"):
        segmenter.segment(sam1, SamPrompt(np.array([[1.0, 1.0]]), np.array([True])))


def test_captured_smart_keypoint_gives_a_brush_mask_with_sam2_1(sam2_1_app) -> None:
    client, runtime, _ = sam2_1_app
    body = load_capture("predict_interactive_smart_keypoint_from_ui.json")["body"]
    spy = PromptSpy(runtime.sam.segmenter().model)
    (prediction,) = predict_spied(client, spy, body)
    brush_region_of_image_size(prediction)
    (call,) = spy.calls
    click = body["params"]["context"]["result"][0]["value"]
    np.testing.assert_allclose(call["coords"][0], in_model_frame(click["x"], click["y"]),
                               atol=1.0)
    assert call["labels"] == [1] and call["box"] is None
    health = client.get("/health").get_json()["models"]["sam"]
    assert health["status"] == "ready" and health["model_type"] == TINY_SAM2_1_TYPE
    assert health["model_id"].startswith("sam_sam2_1_hiera_16_1_1_2_1_")


def test_a_smart_rectangle_and_clicks_reach_sam2_1_box_first(sam2_1_app) -> None:
    client, runtime, _ = sam2_1_app
    context = [keypoint(60, 50, "Object"), keypoint(10, 10, "Object", positive=False),
               rectangle(40, 20, 30, 55, "Object")]
    spy = PromptSpy(runtime.sam.segmenter().model)
    (prediction,) = predict_spied(client, spy, interactive_body(SEGMENTATION_CONFIG, context))
    (region,) = prediction["result"]
    assert region["value"]["brushlabels"] == ["Object"]
    (call,) = spy.calls
    assert call["labels"] == [2, 3, 1, 0]  # the box as two corners, then the clicks
    expected = [in_model_frame(40, 20), in_model_frame(70, 75), in_model_frame(60, 50),
                in_model_frame(10, 10)]
    np.testing.assert_allclose(call["coords"], np.stack(expected), atol=1.0)
