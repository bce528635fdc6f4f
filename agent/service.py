"""Wiring: one running agent = outbox + uploader + HIS API, stopped cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from .api import create_app
from .card import CardReader
from .config import AgentConfig
from .enrol import load_key
from .evoucher import open_verifier
from .store import Outbox
from .uploader import Uploader

__all__ = ["open_outbox", "serve"]

log = logging.getLogger("yibao.agent")


def open_outbox(config: AgentConfig) -> Outbox:
    return Outbox(
        config.db_path,
        agent_id=config.agent_id,
        max_records=config.outbox_max_records,
        max_bytes=config.outbox_max_bytes,
        min_free_disk_bytes=config.min_free_disk_bytes,
        group_max=config.group_max,
        retention_s=config.retention_s,
    )


async def serve(config: AgentConfig, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM. Settlements are durable as answered, so stopping is always safe."""
    key = load_key(config)
    his_token = config.token_path.read_text().strip()
    outbox = open_outbox(config)
    uploader = Uploader(config, outbox, key)
    outbox.on_append = uploader.wake
    card_reader = CardReader(config.card_reader, config.psam_reader)
    vouchers = open_verifier(config)
    app = create_app(config, outbox, uploader, his_token, card_reader=card_reader, vouchers=vouchers)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = config.listen.rpartition(":")
    site = web.TCPSite(runner, host or "127.0.0.1", int(port))
    await site.start()
    log.info("agent %s listening on %s, uploading to %s", config.agent_id, config.listen, config.central_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    upload_task = asyncio.create_task(uploader.run())
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        uploader.stop()
        await runner.cleanup()
        upload_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upload_task
        outbox.close()
        card_reader.close()
        vouchers.close()
        log.info("agent stopped")
