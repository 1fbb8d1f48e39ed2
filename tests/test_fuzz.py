"""Every endpoint under property-based fuzzing (hypothesis): shaped Label Studio bodies with
any field broken, arbitrary JSON, raw bytes. The app has SAM and CLIPSeg configured (tiny
models), so the interactive paths are reached too. No answer may be a 5xx, and no exception
may escape."""

from __future__ import annotations

from app_fixture import backend_app
from fuzzing import fuzz
from sam_fixture import TINY_SAM_TYPE

EXAMPLES = 400


def test_no_request_gets_a_server_error(make_settings, tiny_sam, tiny_clipseg, docs) -> None:
    settings = make_settings(sam_checkpoint=tiny_sam, sam_model_type=TINY_SAM_TYPE,
                             clipseg_model=str(tiny_clipseg), local_files_document_root=docs)
    with backend_app(settings) as (client, _, jobs):
        report = fuzz(client, EXAMPLES)
        jobs.wait_idle(60)
    assert report.requests >= EXAMPLES
    assert report.crashes == []
    assert report.server_errors == [], "\n".join(report.server_errors[:10])
    assert len(report.statuses) >= 4  # 200, 400, 404, 405, 422, … all reached
