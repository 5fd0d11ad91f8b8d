"""Reading a flow's artifacts back from the Prefect API, as the UI would show them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


def latest_artifacts(keys: Iterable[str]) -> dict[str, Any]:
    """key -> the newest artifact with that key (other tests' runs publish under the same keys)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read_back() -> dict[str, Any]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))),
                sort=ArtifactSort.CREATED_DESC,
            )
        latest: dict[str, Any] = {}
        for artifact in found:
            latest.setdefault(artifact.key, artifact)
        return latest

    return asyncio.run(read_back())
