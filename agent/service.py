"""Wiring: one running agent = outbox + uploader + heartbeat + HIS API (+ drop folder); stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal

import aiohttp
from aiohttp import web

from protocol.batch import KeyPair
from protocol.errors import ProtocolError
from protocol.sdnotify import keep_watchdog, notify

from .api import create_app
from .card import CardReader
from .cardlog import blacklist_applied_log
from .checks import DeskChecks
from .config import AgentConfig
from .dropfolder import DropFolder, prepare_dirs
from .enrol import load_key
from .errors import AgentError, ConfigError, PolicyError
from .evoucher import VoucherVerifier, open_verifier
from .heartbeat import HeartbeatSender
from .history import CentralHistory
from .metrics import AgentMetrics
from .metrics import install as install_metrics
from .policy import PolicyClient, issuers_from_keys_bundle
from .policy_store import Applied, PolicyStore
from .resync import Resync
from .settle import settle_body
from .store import Outbox
from .tls import ClientTls, client_ssl, client_tls, his_server_ssl
from .uploader import Uploader

__all__ = ["open_outbox", "open_policy", "serve"]

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
        hosp_lv=config.hosp_lv,
    )


def open_policy(
    config: AgentConfig, *, key: KeyPair | None = None, vouchers: VoucherVerifier | None = None,
    outbox: Outbox | None = None,
) -> tuple[PolicyStore, PolicyClient]:  # fmt: skip
    """The policy store and its TUF client; a held ``keys`` bundle replaces agent.json's voucher issuers.

    With ``outbox``, every applied blacklist bundle chains a ``blacklist_applied`` card log: the
    centre's replacement gate counts this institution only once it has applied *and* logged a lost
    card's entry (``agent.cardlog``)."""
    store = PolicyStore(config.policy_db_path)

    def use_keys() -> None:
        if vouchers is None:
            return
        try:
            issuers = issuers_from_keys_bundle(store)
        except ValueError as exc:  # checked before apply; a damaged store must not stop the agent
            log.error("the held keys bundle cannot be used: %s", exc)
            return
        if issuers is not None:
            vouchers.set_issuers(issuers, source=f"keys bundle seq {store.held_seq('keys')}")

    def log_blacklist(seq: int) -> None:
        if outbox is None or not config.pooling_area or seq <= 0:
            return
        try:  # not awaited: the policy client's thread must not wait on the outbox writer
            outbox.submit_card_log(blacklist_applied_log(config.fixmedins_code, config.pooling_area, seq))
        except (AgentError, ProtocolError) as exc:  # a bad log must not undo the apply
            log.error("the blacklist_applied log of bundle %d was not chained: %s", seq, exc)

    def on_applied(applied: Applied) -> None:
        if applied.kind == "keys":
            use_keys()
        if applied.kind == "blacklist":
            log_blacklist(applied.seq)

    use_keys()
    # Once at start too: a crash between an apply and its log, or an agent upgraded while holding a
    # blacklist, must not leave the gate waiting for the next bundle. A repeat costs one small record.
    log_blacklist(store.held_seq("blacklist") or 0)
    return store, PolicyClient(config, store, key=key, on_applied=on_applied)


#: How often the agent looks at its client certificate (renewal at two thirds of its life, alarm near expiry).
CERT_CHECK_S = 3600.0
CERT_ALARM = "tls_cert_expiring"


async def keep_certificate(tls: ClientTls, config: AgentConfig, outbox: Outbox) -> None:
    """Renew the client certificate when due, and keep the expiry alarm true; never stops the agent."""
    while True:
        try:
            if tls.renewal_due():
                timeout = aiohttp.ClientTimeout(total=config.upload_timeout_s)
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    until = await tls.renew(session, config.central_url, config.agent_id)
                log.info("client certificate renewed, valid until %s", until)
            state = tls.status()
            if state["expiring"]:
                await asyncio.wrap_future(outbox.raise_alarm(
                    CERT_ALARM,
                    f"the TLS client certificate expires at {state['client_cert_not_after']}; the agent "
                    "renews it when the centre is reachable, else enrol the agent again before then",
                ))  # fmt: skip
            else:
                await asyncio.wrap_future(outbox.clear_alarm(CERT_ALARM))
        except (AgentError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("client certificate renewal failed (%s); retrying in %.0f s", type(exc).__name__,
                        CERT_CHECK_S)  # fmt: skip
        await asyncio.sleep(CERT_CHECK_S)


async def serve(config: AgentConfig, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM. Settlements are durable as answered, so stopping is always safe."""
    if config.central_url.startswith("http://") and not config.insecure_dev:
        raise ConfigError(
            f"central_url {config.central_url} is plain HTTP: health data must travel over TLS; enrol again "
            "with --central https://… --ca-hash sha256:… (or set insecure_dev on a development machine)"
        )
    if config.dropfolder_path is not None:
        try:  # before anything is opened: a folder that cannot be used stops the start, like a bad setting
            prepare_dirs(config.dropfolder_path)
        except OSError as exc:
            raise ConfigError(f"dropfolder {config.dropfolder_path} cannot be used: {exc}") from exc
    his_ssl = his_server_ssl(config)  # before anything is opened: a bad certificate stops the start
    key = load_key(config)
    his_token = config.token_path.read_text().strip()
    outbox = open_outbox(config)
    uploader = Uploader(config, outbox, key)
    outbox.on_append = uploader.wake
    heartbeats = HeartbeatSender(config, outbox, key)
    heartbeats.on_centre_behind = uploader.wake
    resync = Resync(config, outbox, key)  # holds appends now if the home was restored from a backup
    card_reader = CardReader(config.card_reader, config.psam_reader)
    vouchers = open_verifier(config)
    policy_store, policy_client = open_policy(config, key=key, vouchers=vouchers, outbox=outbox)
    tls = client_tls(config.home, config.central_url)
    history = CentralHistory(
        config.central_url,
        config.agent_id,
        key,
        timeout_s=config.history_timeout_s,
        ssl_context=client_ssl(config.home, config.central_url),
    )
    desk = DeskChecks(
        config.db_path, policy_store, history, hosp_lv=config.hosp_lv, history_days=config.history_days
    )
    dropfolder: DropFolder | None = None
    if config.dropfolder_path is not None:
        # The same settlement path as POST /v1/settlements: same checks, same refusals, same outbox.
        settle = functools.partial(
            settle_body, config=config, outbox=outbox, vouchers=vouchers, policy=policy_store, desk=desk
        )
        dropfolder = DropFolder.from_config(config, settle)
    app = create_app(
        config,
        outbox,
        uploader,
        his_token,
        card_reader=card_reader,
        vouchers=vouchers,
        policy=policy_store,
        policy_client=policy_client,
        desk=desk,
        dropfolder_status=dropfolder.status if dropfolder is not None else None,
        heartbeats=heartbeats,
    )
    metrics = AgentMetrics(
        config=config,
        outbox=outbox,
        uploader=uploader,
        policy=policy_store,
        policy_client=policy_client,
        heartbeats=heartbeats,
        card_errors_from_api=False,
    )
    install_metrics(app, metrics)
    uploader.on_attempt = metrics.observe_upload
    card_reader.on_error = metrics.count_card_error
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = config.listen.rpartition(":")
    site = web.TCPSite(runner, host or "127.0.0.1", int(port), ssl_context=his_ssl)
    await site.start()
    log.info("agent %s listening on %s (%s), uploading to %s", config.agent_id, config.listen,
             "https" if his_ssl else "http", config.central_url)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    upload_task = asyncio.create_task(uploader.run())
    heartbeat_task = asyncio.create_task(heartbeats.run())
    resync_task = asyncio.create_task(resync.run())
    cert_task = asyncio.create_task(keep_certificate(tls, config, outbox)) if tls is not None else None
    try:
        policy_client.check_configured()
        policy_task: asyncio.Task | None = asyncio.create_task(policy_client.run())
    except PolicyError as exc:
        log.warning("policy bundles are off: %s", exc.message)
        policy_task = None
    dropfolder_task: asyncio.Task | None = None
    if dropfolder is not None:
        dropfolder_task = asyncio.create_task(dropfolder.run())
        log.info("drop folder on: %s", config.dropfolder_path)
    watchdog_task = asyncio.create_task(keep_watchdog(lambda: outbox.writer_alive))
    if ready is not None:
        ready.set()
    notify(f"READY=1\nSTATUS=HIS API on {config.listen}, uploading to {config.central_url}")
    try:
        await stop.wait()
    finally:
        notify("STOPPING=1")
        if dropfolder is not None and dropfolder_task is not None:
            # First, while the outbox is open: the files in hand finish or stay in processing/.
            await dropfolder.stop()
            dropfolder_task.cancel()
            try:
                await dropfolder_task
            except asyncio.CancelledError:
                pass
            except Exception:  # logged, and the rest of the agent still stops cleanly
                log.exception("the drop folder stopped with an error")
        uploader.stop()
        heartbeats.stop()
        policy_client.stop()
        await runner.cleanup()
        for task in (upload_task, heartbeat_task, resync_task, policy_task, cert_task, watchdog_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await history.close()
        desk.close()
        outbox.close()
        policy_store.close()
        card_reader.close()
        vouchers.close()
        log.info("agent stopped")
