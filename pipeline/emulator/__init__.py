"""A Runware-compatible emulator of the image API for the registered models, on loopback only.

    with Emulator(latency_s=0.5, faults={"http_429": 0.1}, ledger=Path("ledger.jsonl")) as emu:
        requests.post(emu.base_url, json=[task], headers={"Authorization": "Bearer any"})

It speaks the wire protocol of shared/reference/runware-protocol.md: a JSON array of tasks,
Bearer or `authentication`-task auth, `imageInference` for every model of pipeline/models,
validated with its own model's JSON Schema and answered with Runware-shaped errors, sync and
async delivery with `getResponse`, `imageUpload`, URL / base64Data / dataURI outputs, webhooks
and upload endpoints (loopback only), a billing ledger, credits, latency and fault injection.
Images are deterministic test cards.
"""

from __future__ import annotations

from pipeline.emulator.faults import parse_faults
from pipeline.emulator.server import Emulator

__all__ = ["Emulator", "parse_faults"]
