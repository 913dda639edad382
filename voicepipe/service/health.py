"""Which model stages are failing, for /healthz: a stage that fails several turns in a row is reported."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from voicepipe.conversation.events import CallObserver

log = logging.getLogger(__name__)

FAILING_AFTER = 3  # failures in a row before a stage counts as failing (one bad turn is not an outage)


@dataclass
class StageHealth:
    failures_in_a_row: int = 0
    failures: int = 0
    successes: int = 0
    last_error: str = ""  # the exception's type only: /healthz is public behind a tunnel (the log has the rest)


class Health(CallObserver):
    def __init__(self) -> None:
        self.stages: dict[str, StageHealth] = {}

    def _stage(self, name: str) -> StageHealth:
        return self.stages.setdefault(name, StageHealth())

    def stage_succeeded(self, stage: str) -> None:
        health = self._stage(stage)
        health.successes += 1
        health.failures_in_a_row = 0

    def stage_failed(self, stage: str, error: BaseException) -> None:
        health = self._stage(stage)
        health.failures += 1
        health.failures_in_a_row += 1
        health.last_error = type(error).__name__
        if health.failures_in_a_row == FAILING_AFTER:
            log.error("%s has failed %d turns in a row (last: %s: %s)", stage, FAILING_AFTER, health.last_error,
                      str(error)[:200])

    @property
    def failing(self) -> list[str]:
        return sorted(name for name, h in self.stages.items() if h.failures_in_a_row >= FAILING_AFTER)

    def report(self) -> dict[str, dict[str, object]]:
        return {name: asdict(h) for name, h in sorted(self.stages.items())}
