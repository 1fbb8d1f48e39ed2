from __future__ import annotations

import pytest

from ml_backend.core.errors import UnsupportedConfig
from ml_backend.labelstudio.label_config import ModelFamily, parse_label_config

from conftest import load_capture


def test_capture_config_routes_choices_and_rectangles_on_image() -> None:
    parsed = parse_label_config(load_capture("setup.json")["body"]["schema"])
    (spec,) = parsed.for_family(ModelFamily.CLASSIFIER)
    assert (spec.name, spec.to_name, spec.value_key, spec.labels, spec.multiple) == (
        "quality", "image", "image", ("good", "bad"), False)
    (boxes,) = parsed.for_family(ModelFamily.DETECTOR)
    assert boxes.tag == "RectangleLabels" and boxes.result_type == "rectanglelabels"
    assert not any("RectangleLabels" in u for u in parsed.unserved)


def test_multiple_choice_and_label_attrs() -> None:
    parsed = parse_label_config(
        '<View><Image name="img" value="$pic"/><Choices name="tags" toName="img" '
        'choice="multiple"><Choice value="cat" hint="a cat"/><Choice value="dog"/></Choices>'
        "</View>")
    (spec,) = parsed.for_family(ModelFamily.CLASSIFIER)
    assert spec.multiple and spec.value_key == "pic"
    assert spec.label_attrs["cat"]["hint"] == "a cat"


@pytest.mark.parametrize("xml, message", [
    ("", "empty"),
    ("<View><Image", "not valid XML"),
    ("<View></View>", "nothing in this label config"),
    ('<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="a"/>'
     "</Choices></View>", "Choices 'c' on Text"),
])
def test_unservable_configs_say_why(xml: str, message: str) -> None:
    with pytest.raises(UnsupportedConfig, match=message):
        parse_label_config(xml)
