"""Which model stages are failing, for /healthz: a stage that fails several turns in a row is reported."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

FAILING_AFTER = 3  # failures in a row before a stage counts as failing (one bad turn is not an outage)


@dataclass
class StageHealth:
    failures_in_a_row: int = 0
    failures: int = 0
    successes: int = 0
    last_error: str = ""


class Health:
    def __init__(self) -> None:
        self.stages: dict[str, StageHealth] = {}
        # Called with (stage, exception) on every failure: metrics count errors by kind.
        self.on_failure: list[Callable[[str, BaseException], None]] = []

    def _stage(self, name: str) -> StageHealth:
        return self.stages.setdefault(name, StageHealth())

    def succeeded(self, stage: str) -> None:
        health = self._stage(stage)
        health.successes += 1
        health.failures_in_a_row = 0

    def failed(self, stage: str, exc: BaseException) -> None:
        health = self._stage(stage)
        health.failures += 1
        health.failures_in_a_row += 1
        health.last_error = f"{type(exc).__name__}: {exc}"[:200]
        if health.failures_in_a_row == FAILING_AFTER:
            log.error("%s has failed %d turns in a row (last: %s)", stage, FAILING_AFTER, health.last_error)
        for observer in self.on_failure:
            observer(stage, exc)

    @contextlib.contextmanager
    def watch(self, stage: str) -> Iterator[None]:
        """Count the block as one success or failure of `stage` (a cancellation is neither)."""
        try:
            yield
        except Exception as exc:
            self.failed(stage, exc)
            raise
        self.succeeded(stage)

    @property
    def failing(self) -> list[str]:
        return sorted(name for name, h in self.stages.items() if h.failures_in_a_row >= FAILING_AFTER)

    def report(self) -> dict[str, dict[str, object]]:
        return {name: asdict(h) for name, h in sorted(self.stages.items())}
