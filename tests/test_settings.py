"""Settings from the environment: defaults, parsing, and clear errors for bad values."""

from __future__ import annotations

import pytest

from ml_backend.core.settings import Settings
from ml_backend.learning.selection import Strategy


def test_defaults_rank_by_margin_with_a_random_hedge() -> None:
    settings = Settings.from_env({})
    assert settings.ranking_strategy is Strategy.MARGIN
    assert (settings.ranking_batch_size, settings.ranking_random_share) == (10, 0.1)
    assert settings.rerank_after_training and settings.rerank_max_load == 0.5


def test_ranking_settings_parse() -> None:
    settings = Settings.from_env({"RANKING_STRATEGY": "Ranked_Batch", "RANKING_BATCH_SIZE": "25",
                                  "RANKING_RANDOM_SHARE": "0", "RERANK_AFTER_TRAINING": "off",
                                  "RERANK_MIN_INTERVAL_S": "0.5", "RERANK_MAX_LOAD": "1"})
    assert settings.ranking_strategy is Strategy.RANKED_BATCH
    assert settings.ranking_batch_size == 25 and settings.ranking_random_share == 0.0
    assert not settings.rerank_after_training
    assert (settings.rerank_min_interval_s, settings.rerank_max_load) == (0.5, 1.0)
    assert settings.public_dict()["ranking_strategy"] == "ranked_batch"


@pytest.mark.parametrize("env, message", [
    ({"RANKING_STRATEGY": "smartest"}, "RANKING_STRATEGY='smartest' is not one of"),
    ({"RANKING_BATCH_SIZE": "0"}, "RANKING_BATCH_SIZE=0 must be >= 1"),
    ({"RANKING_RANDOM_SHARE": "1.5"}, "share between 0 and 1"),
    ({"RERANK_MAX_LOAD": "0"}, "must be above 0"),
    ({"RERANK_AFTER_TRAINING": "maybe"}, "not a boolean"),
])
def test_bad_values_name_the_variable(env, message) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_log_format_is_text_or_json() -> None:
    import json
    import logging

    from ml_backend.core.logs import JsonFormatter

    assert Settings.from_env({"LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "xml"})
    record = logging.LogRecord("ml_backend.x", logging.WARNING, __file__, 1, "n=%d", (3,), None)
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["message"]) == ("WARNING", "ml_backend.x", "n=3")
