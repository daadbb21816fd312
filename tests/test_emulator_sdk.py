"""Runware's own Python SDK (runware-sdk, REST transport) against the emulator.

The SDK gets an aiohttp session whose resolver refuses every host name, so nothing it might try
(schema or registry fetches) can leave the machine: the emulator is reached by IP literal, which
aiohttp connects to without resolving. The test also asserts that no name was ever looked up.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from PIL import Image

from pipeline.emulator import Emulator

runware = pytest.importorskip("runware")
aiohttp = pytest.importorskip("aiohttp")
from aiohttp.abc import AbstractResolver, ResolveResult  # noqa: E402
from runware.types.sdk import RuntimeDependencies  # noqa: E402

pytestmark = pytest.mark.sdk


class NoDnsResolver(AbstractResolver):
    """Refuses to resolve any name: only IP-literal (loopback) URLs can be reached."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        raise OSError(f"name lookups are disabled in this test ({host})")

    async def close(self) -> None:
        return None


def base(**over: Any) -> dict[str, Any]:
    """SDK params for one Krea 2 Large image (taskType explicit: no registry lookup)."""
    params: dict[str, Any] = {
        "taskType": "imageInference",
        "model": "krea:krea@2-large",
        "positivePrompt": "a red fox in fresh snow, motion blur",
        "width": 1024,
        "height": 1024,
    }
    params.update(over)
    return params


def run_with_sdk(emu: Emulator, body: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `body(client)` with a loopback-only SDK client; check no name was resolved."""
    resolver = NoDnsResolver()

    async def main() -> Any:
        connector = aiohttp.TCPConnector(resolver=resolver)
        async with aiohttp.ClientSession(connector=connector) as session:
            client = runware.Runware(
                api_key="sdk-key",
                transport="rest",
                http_base_url=emu.base_url,
                validate=False,
                max_retries=3,
                retry_delay=50,
                dependencies=RuntimeDependencies(session=session),
            )
            try:
                return await body(client)
            finally:
                await client.close()

    result = asyncio.run(main())
    assert resolver.asked == []
    return result


def test_sdk_sync_text_to_image() -> None:
    with Emulator() as emu:
        items = run_with_sdk(
            emu, lambda c: c.run(base(deliveryMethod="sync", outputType="base64Data", seed=5))
        )
        (item,) = items
        assert item["seed"] == 5
        image = Image.open(io.BytesIO(base64.b64decode(item["imageBase64Data"])))
        assert image.size == (1024, 1024)
        assert emu.stats()["tasks.getResponse"] == 0
        assert len(emu.ledger_entries()) == 1


def test_sdk_async_text_to_image_polls_until_done() -> None:
    with Emulator(latency_s=1.2) as emu:  # the SDK's first poll (at 1 s) sees `processing`
        items = run_with_sdk(emu, lambda c: c.run(base(includeCost=True)))
        (item,) = items
        assert item["status"] == "success" and item["cost"] == 0.06 and "imageURL" in item
        assert emu.stats()["tasks.getResponse"] >= 2
        assert len(emu.ledger_entries()) == 1


def test_sdk_reference_images_and_two_results() -> None:
    out = io.BytesIO()
    Image.new("RGB", (48, 48), (30, 90, 200)).save(out, "PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()

    async def body(client: Any) -> Any:
        upload = await client.run(
            {
                "taskType": "imageUpload",
                "taskUUID": str(uuid.uuid4()),
                "image": data_uri,
                "deliveryMethod": "sync",
            }
        )
        refs = [{"image": upload[0]["imageUUID"], "strength": 0.6}, data_uri]
        return await client.run(
            base(numberResults=2, includeCost=True, inputs={"referenceImages": refs})
        )

    with Emulator(latency_s=0.2) as emu:
        items = run_with_sdk(emu, body)
        assert len(items) == 2
        assert len({i["imageUUID"] for i in items}) == 2
        assert all(i["cost"] == 0.065 for i in items)
        assert [e["reference_count"] for e in emu.ledger_entries()] == [2, 2]


def test_sdk_gets_the_servers_validation_error() -> None:
    async def body(client: Any) -> Any:
        with pytest.raises(runware.RunwareError) as caught:
            await client.run(base(width=1000, deliveryMethod="sync"))
        return caught.value

    with Emulator() as emu:
        error = run_with_sdk(emu, body)
        assert error.code == "validation" and error.status_code == 400
        assert error.parameter == "width" and not error.retryable
        assert emu.stats()["posts"] == 1  # a validation error is not retried
        assert emu.ledger_entries() == []


def test_sdk_retries_a_refused_submit_with_the_same_task_uuid() -> None:
    with Emulator(faults={"http_503": 0.5}, fault_seed=3) as emu:  # 503, 503, then served
        items = run_with_sdk(emu, lambda c: c.run(base(deliveryMethod="sync")))
        assert len(items) == 1
        assert emu.stats()["faults.http_503"] == 2 and emu.stats()["posts"] == 3
        assert len(emu.ledger_entries()) == 1
