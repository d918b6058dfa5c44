"""The Gradio app end to end through gradio_client: upload → generate → accept → export."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from gradio_client import handle_file

from tests.support import served_client
from webapp.studio import StudioService


@pytest.mark.slow
def test_upload_generate_accept_export_through_the_client(service: StudioService, slab_png, tmp_path: Path) -> None:
    slab = tmp_path / "slab.png"
    slab.write_bytes(slab_png(48, 40, 0))
    with served_client(service) as client:
        message, *_ = client.predict([handle_file(str(slab))], "clean", None, api_name="/upload")
        assert message.startswith("Stored 1 image(s)")
        (source,) = service.list_sources(role="clean")
        assert source.uploaded_by == "local"

        # As the browser does on opening the tab: the dropdowns learn the new slab and the tokens.
        client.predict(None, None, api_name="/generate_refresh")
        job = client.submit(source.id, "scratches", 1.0, 2, 2, 0, api_name="/generate")
        gallery, _, generated = job.result(timeout=120)
        assert len(gallery["value"]) == 2 and generated.startswith("2 candidates")
        first, second = sorted(row.id for row in service.dataset_view().rows)

        _, _, decided, _ = client.predict(first, "", api_name="/accept")
        assert decided == f"Sample {first} is now accepted."
        client.predict(second, "too faint", api_name="/reject")
        assert [(r.id, r.status, r.reject_reason) for r in service.dataset_view().rows] == [
            (second, "rejected", "too faint"),
            (first, "accepted", None),
        ]

        # A refused request says why next to the controls and leaves the other panels as they were.
        *_, refused = client.predict(source.id, "scratches", 0.05, 1, 2, 0, api_name="/generate")
        assert refused.startswith("⚠️") and "steps × strength must be at least 1" in refused
        _, _, counts, rows = client.predict("All", "All", "All", api_name="/dataset_view")
        assert counts["data"] == [["scratches", 0, 0, 1, 1]] and len(rows["data"]) == 2
        _, _, details = client.predict(first, api_name="/sample_details")
        assert details["parameters"]["seed"] == 0 and details["decisions"][0]["user"] == "local"
        assert client.predict(api_name="/finetune_status")[1] == "No fine-tune run yet."
        (version,) = service.adapter_versions("scratches")
        client.predict(None, api_name="/finetune_tab")  # as the browser does on opening the tab
        client.predict("scratches", api_name="/adapter_versions")
        learnt = client.predict("scratches", version.version, api_name="/adapter_learnt")
        assert learnt == f"**{version.label}** — {version.learnt}" and version.learnt.endswith(".")

        summary, download = client.predict(api_name="/export")
        assert "1 images" in summary
        with zipfile.ZipFile(download) as archive:
            manifest = json.loads(archive.read("manifest.json"))
        assert [(item["kind"], item["sample_id"]) for item in manifest["items"]] == [("synthetic", first)]
        (item,) = manifest["items"]
        assert item["params"]["source_sha256"] == item["lineage"]["source_image_sha256"], "one hash per source"
