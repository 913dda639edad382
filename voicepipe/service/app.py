"""The aiohttp app: Twilio's webhooks (/voice, /status), the media stream (/media), and /healthz, /stats,
/metrics; serving it, and draining calls on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, web

from voicepipe.config import ConfigError, Settings
from voicepipe.conversation.phrases import prepare_phrases
from voicepipe.conversation.tools import build_toolbox
from voicepipe.engines.models import Models, load_models
from voicepipe.service.access import guard, is_loopback, require_operator
from voicepipe.service.media import media
from voicepipe.service.pages import add_pages
from voicepipe.service.records import open_records
from voicepipe.service.state import SERVICE, Service
from voicepipe.service.tokens import StoreUnavailable
from voicepipe.service.webhooks import amd, status, voice

log = logging.getLogger(__name__)


async def cluster_report(service: Service) -> dict[str, object] | None:
    """The live nodes, their calls and their room (None outside a cluster)."""
    if service.registry is None:
        return None
    try:
        nodes = await service.registry.nodes()
    except StoreUnavailable:
        return {"redis": "unavailable"}
    return {"node": service.instance_id, "nodes": len(nodes), "calls": sum(n.get("calls", n["load"]) for n in nodes),
            "capacity": sum(n["max_calls"] for n in nodes), "in_registry": not service.registry.left}


async def healthz(request: web.Request) -> web.Response:
    """200 while every model stage works; 503 once one has failed several turns in a row."""
    service = request.app[SERVICE]
    models = service.models
    failing = service.health.failing
    return web.json_response(
        {
            "status": "degraded" if failing else "ok",
            "instance": service.instance_id,
            "device": models.device,
            "failing": failing,
            "stages": service.health.report(),
            "llm": models.chat.report(),
            "active_calls": len(service.sessions),
            "cluster": await cluster_report(service),
            "draining": service.draining,
            "model_load_seconds": {k: round(v, 3) for k, v in models.load_seconds.items()},
        },
        status=503 if failing else 200,
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition: active calls, calls by outcome, stage latency histograms, fallbacks, errors."""
    require_operator(request)
    return web.Response(body=request.app[SERVICE].metrics.exposition(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def stats(request: web.Request) -> web.Response:
    """Recent per-turn timings (numbers only, no content), newest last; ?call_sid= filters."""
    require_operator(request)
    call_sid = request.query.get("call_sid")
    turns = [t.as_dict() for t in request.app[SERVICE].recent_turns if call_sid is None or t.call_sid == call_sid]
    return web.json_response({"turns": turns})


async def _close_sockets(app: web.Application) -> None:
    for ws in app[SERVICE].sockets.copy():
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def create_app(settings: Settings, models: Models | None = None) -> web.Application:
    """Build the app; without `models`, they are loaded (and warmed) before the server accepts calls."""
    app = web.Application(client_max_size=64 * 1024, middlewares=[guard])
    service = app[SERVICE] = Service(settings)
    service.tools = build_toolbox(settings)

    async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
        heartbeat = None
        if settings.redis_url:
            from voicepipe.service.cluster import NodeRegistry, RedisTokenStore

            tokens = service.tokens = RedisTokenStore(settings.redis_url)
            service.registry = NodeRegistry(tokens, service.instance_id, settings.max_calls,
                                            lambda: (len(service.sockets), len(service.sessions)))
            heartbeat = asyncio.get_running_loop().create_task(service.registry.beat(), name="cluster heartbeat")
            log.info("cluster node %s: tokens and capacity shared through Redis", service.instance_id)
        yield
        if service.registry is not None:
            await service.registry.leave()
        if heartbeat is not None:
            heartbeat.cancel()
        await service.tokens.close()

    async def records_ctx(app: web.Application) -> AsyncIterator[None]:
        records = await asyncio.to_thread(open_records, settings, lambda kind: service.metrics.error("records", kind))
        records.close_interrupted()
        service.records = records
        yield
        await asyncio.to_thread(records.close)  # what is still queued is written first

    async def models_ctx(app: web.Application) -> AsyncIterator[None]:
        service.models = models if models is not None else await asyncio.to_thread(load_models, settings,
                                                                                    service.tools.specs)
        service.phrases = await asyncio.to_thread(prepare_phrases, settings, service.models.synthesizer)
        yield

    app.cleanup_ctx.append(cluster_ctx)
    app.cleanup_ctx.append(records_ctx)
    app.cleanup_ctx.append(models_ctx)
    app.on_shutdown.append(_close_sockets)
    app.router.add_post("/voice", voice)
    app.router.add_post("/status", status)
    app.router.add_post("/amd", amd)
    app.router.add_get("/media", media)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    add_pages(app)
    return app


def check_exposure(settings: Settings, host: str) -> None:
    """Without TWILIO_AUTH_TOKEN anyone could place "calls" into the models: unsigned mode stays on this machine
    (a loopback listener, no WEBHOOK_URL, and access.guard refuses forwarded requests) unless the operator
    says VOICEPIPE_UNSAFE_ALLOW_UNSIGNED=1."""
    if settings.twilio_auth_token:
        return
    if settings.unsafe_allow_unsigned:
        log.warning("VOICEPIPE_UNSAFE_ALLOW_UNSIGNED=1 and no TWILIO_AUTH_TOKEN: requests are NOT checked for "
                    "Twilio's signature, and anyone who can reach this server can open calls")
        return
    log.warning("TWILIO_AUTH_TOKEN is not set: unsigned mode, answering only requests made on this machine "
                "(the simulator, the test phone). Set TWILIO_AUTH_TOKEN to take calls.")
    if settings.webhook_url:
        raise ConfigError("refusing to serve WEBHOOK_URL without TWILIO_AUTH_TOKEN: anyone who knows the tunnel's "
                          "URL could open calls. Set TWILIO_AUTH_TOKEN (or, at your own risk, "
                          "VOICEPIPE_UNSAFE_ALLOW_UNSIGNED=1)")
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without TWILIO_AUTH_TOKEN; set it (or, at your own risk, "
            "VOICEPIPE_UNSAFE_ALLOW_UNSIGNED=1)"
        )


async def drain(app: web.Application) -> None:
    """Stop taking calls (/voice answers "busy"), give active calls the grace period to finish, then say
    goodbye on the ones left and hang up."""
    service = app[SERVICE]
    service.draining = True
    if service.registry is not None:
        await service.registry.leave()  # the cluster stops counting on this node at once
    grace = service.settings.shutdown_grace_s
    log.info("shutting down: no new calls; %d active, %.0f s grace", len(service.sessions), grace)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while service.sessions and loop.time() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.gather(*(session.end_call("shutdown") for session in service.sessions.copy()),
                         return_exceptions=True)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run until SIGTERM/SIGINT, then drain calls and exit normally."""
    import signal

    from aiohttp.web_runner import GracefulExit

    check_exposure(settings, host)
    app = create_app(settings)

    async def handle_signals(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            if stopping:
                return
            stopping.append(loop.create_task(drain(app)))
            stopping[0].add_done_callback(lambda _: loop.call_soon(_exit))

        def _exit() -> None:
            raise GracefulExit()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)

    app.on_startup.append(handle_signals)
    web.run_app(app, host=host, port=port, access_log=None, print=None, handle_signals=False)
