"""What the server shares between its requests and calls, in one typed place (`app[SERVICE]`)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from voicepipe.config import Settings
from voicepipe.conversation.events import CallObserver, EndedCall, Observers, TurnTimings
from voicepipe.conversation.phrases import Phrases
from voicepipe.conversation.tools import Toolbox
from voicepipe.engines.models import Models
from voicepipe.service.health import Health
from voicepipe.service.metrics import Metrics
from voicepipe.service.records import CallRecords
from voicepipe.service.tokens import MemoryTokenStore, StoreUnavailable, TokenStore, occupied

if TYPE_CHECKING:
    from voicepipe.conversation.session import CallSession
    from voicepipe.service.cluster import NodeRegistry

RECENT_TURNS = 1000  # what /stats keeps


@dataclass(eq=False)
class Service:
    settings: Settings
    tokens: TokenStore = field(default_factory=MemoryTokenStore)
    observers: Observers = field(default_factory=Observers)
    health: Health = field(default_factory=Health)
    sessions: set[CallSession] = field(default_factory=set)
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    recent_turns: deque[TurnTimings] = field(default_factory=lambda: deque(maxlen=RECENT_TURNS))
    instance_id: str = field(default_factory=lambda: secrets.token_hex(8))  # `voicepipe doctor` compares it
    draining: bool = False  # shutdown began: no new calls
    registry: NodeRegistry | None = None  # with VOICEPIPE_REDIS_URL: this node's place in the cluster
    _publishing: set[asyncio.Task[None]] = field(default_factory=set)
    # Set when the app starts (models load in a worker thread; the records file opens).
    models: Models = field(init=False)
    phrases: Phrases = field(init=False)
    records: CallRecords = field(init=False)
    tools: Toolbox = field(init=False)  # built in create_app: a bad tools file stops start-up
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(active_calls=lambda: len(self.sessions),
                               chat=lambda: self.models.chat if hasattr(self, "models") else None)
        self.observers.add(self.health)
        self.observers.add(ServiceReports(self))


    def session_for(self, call_sid: str) -> CallSession | None:
        """This node's live call with that CallSid, if any."""
        return next((s for s in self.sessions if s.call_sid == call_sid), None)

    async def full(self) -> bool:
        """No room for another call: this node's (or, in a cluster, every live node's) streams and the tokens
        about to open one reach the maximum. May raise StoreUnavailable."""
        if self.draining:
            return True
        if self.registry is not None:
            return await self.registry.full()
        return occupied(len(self.sockets), len(self.sessions), await self.tokens.pending()) >= self.settings.max_calls

    def load_changed(self) -> None:
        """A stream opened or closed: the cluster hears of it now, not at the next heartbeat."""
        if self.registry is None:
            return
        task = asyncio.get_running_loop().create_task(self._publish(self.registry))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    @staticmethod
    async def _publish(registry: NodeRegistry) -> None:
        with contextlib.suppress(StoreUnavailable):  # the heartbeat reports the outage
            await registry.publish()


SERVICE = web.AppKey("service", Service)


class ServiceReports(CallObserver):
    """What calls report, into /stats, /metrics and the call records."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def turn_finished(self, timings: TurnTimings) -> None:
        self.service.recent_turns.append(timings)
        numbers = timings.as_dict()
        self.service.metrics.turn(numbers)
        said = None
        if self.service.settings.transcripts:
            session = self.service.session_for(timings.call_sid)
            said = [m for m in session.history if m["role"] != "system"] if session is not None else None
        self.service.records.turn(timings.call_sid, timings.turn, numbers, said)

    def stage_failed(self, stage: str, error: BaseException) -> None:
        self.service.metrics.error(stage, type(error).__name__)

    def call_ended(self, call: EndedCall) -> None:
        self.service.metrics.calls.labels(call.outcome).inc()
        transcript = call.said if self.service.settings.transcripts else None
        self.service.records.stream_ended(call.call_sid, call.outcome, call.caller_turns, transcript)
