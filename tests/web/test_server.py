"""Running one replica: what the server does around the app."""

from __future__ import annotations

import asyncio
import gc
import socket
from pathlib import Path

from statelab.config import build_settings
from statelab.web.server import GC_YOUNGEST, _DrainingServer, _uvicorn_config
from tests.web.conftest import SECRET


async def test_a_started_replica_leaves_its_startup_heap_to_no_collector(
    tmp_path: Path, sqlite_url: str, redis_url: str
) -> None:
    settings = build_settings(
        profile="stateless",
        replica_id="r1",
        redis_url=redis_url,
        database_url=sqlite_url,
        secret_key=SECRET,
        data_dir=tmp_path / "data",
    )
    server = _DrainingServer(_uvicorn_config(settings), drain_seconds=0)
    threshold = gc.get_threshold()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        try:
            async with asyncio.timeout(15):
                while not server.started:
                    assert not serving.done(), serving.exception()
                    await asyncio.sleep(0.05)
            assert gc.get_freeze_count() > 10_000  # the framework, drivers and stores
            assert gc.get_threshold()[0] == GC_YOUNGEST
        finally:
            server.should_exit = True
            await serving
            gc.unfreeze()
            gc.set_threshold(*threshold)
