"""``statelab up``: a cluster and its control API until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

from statelab.cluster.control import ControlServer
from statelab.cluster.runfolder import EVENTS_FILE
from statelab.cluster.servers import ServerError
from statelab.cluster.supervisor import Cluster, ClusterOptions


def run_cluster(options: ClusterOptions, say: Callable[[str], None] = print) -> None:
    """Start a cluster, serve its control API, and stop everything on SIGINT/SIGTERM."""
    asyncio.run(_run(options, say))


async def _run(options: ClusterOptions, say: Callable[[str], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = Cluster(options)
    control: ControlServer | None = None
    try:
        if not await _until_stopped(cluster.start(), stop):
            return
        control = ControlServer(cluster)
        await control.start()
        cluster._spawn(cluster.watch())
        say(banner(cluster))
        await stop.wait()
        say("statelab: stopping the cluster")
    finally:
        if control is not None:
            await control.stop()
        await cluster.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _until_stopped(work: Any, stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first; ``True`` when it completed."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        task.result()  # re-raise a start failure
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ServerError):
        await task
    return False


def banner(cluster: Cluster) -> str:
    opts = cluster.options
    run_dir = cluster.run_dir
    return "\n".join(
        [
            f"statelab: {opts.replicas} replica(s), profile {opts.profile.value}, "
            f"{opts.effective_balance} load balancing, "
            f"{opts.worker_count} job worker(s)",
            f"  shop     {cluster.shop_url}",
            f"  control  {cluster.control_url}   (statelab cluster status --run-dir {run_dir})",
            f"  logs     {run_dir / 'logs'}/   events {run_dir / EVENTS_FILE}",
            "Ctrl-C stops everything.",
        ]
    )
