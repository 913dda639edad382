"""Prometheus metrics for GET /metrics: calls, per-stage latency, barge-ins, LLM fallbacks, errors by kind.

Each app has its own registry, so several servers in one process (tests, tools) do not mix their numbers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Seconds; dense where phone latency lives (0.2-2 s).
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
STAGES = ("vad_wait", "turn_decision", "stt", "llm_first_token", "llm_first_sentence", "tts_first_audio",
          "voice_to_voice")


class _LlmBackendCollector(Collector):
    """Turns answered per backend and fallbacks per reason, read from the chat backend when scraped."""

    def __init__(self, chat: Callable[[], Any]) -> None:
        self._chat = chat

    def collect(self) -> Iterator[CounterMetricFamily]:
        chat = self._chat()
        answers = CounterMetricFamily("voicepipe_llm_answers", "Turns answered, by LLM backend", labels=["backend"])
        fallbacks = CounterMetricFamily("voicepipe_llm_fallbacks", "Turns the fallback LLM answered, by reason",
                                        labels=["reason"])
        for backend, count in getattr(chat, "answers", {}).items():
            answers.add_metric([backend], count)
        for reason, count in getattr(chat, "fallbacks", {}).items():
            fallbacks.add_metric([reason], count)
        yield answers
        yield fallbacks


class Metrics:
    def __init__(self, active_calls: Callable[[], int], chat: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        Gauge("voicepipe_active_calls", "Calls with an open media stream", registry=self.registry).set_function(
            lambda: float(active_calls()))
        self.calls = Counter("voicepipe_calls", "Calls ended, by outcome", ["outcome"], registry=self.registry)
        self.turns = Counter("voicepipe_turns", "Caller turns answered (or attempted)", registry=self.registry)
        self.turn_ends = Counter("voicepipe_turn_ends", "What ended caller turns: judged done at a pause, the "
                                 "maximum silence, keys", ["by"], registry=self.registry)
        self.stage_seconds = Histogram("voicepipe_stage_seconds", "Latency per stage of a turn (server's clock)",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.barge_ins = Counter("voicepipe_barge_ins", "Replies cut off by the caller", registry=self.registry)
        self.false_alarms = Counter("voicepipe_false_alarms", "Holds that were no interruption (noise, a "
                                    "backchannel, the agent's echo): the reply resumed", registry=self.registry)
        self.cut_ins = Counter("voicepipe_cut_ins", "Replies the agent began while the caller was not done (the "
                               "caller went on within a second)", registry=self.registry)
        self.judged_early = Counter("voicepipe_turns_judged_early", "Pauses judged the end of the turn that the "
                                    "caller then spoke on from, before the reply's audio was ready (a cut-in on a "
                                    "machine that has it ready sooner)", registry=self.registry)
        self.stt_runs = Counter("voicepipe_stt_runs", "Whisper runs for caller turns: one at each pause, and one at "
                                "each gap between words begun early that the caller spoke on from",
                                registry=self.registry)
        self.errors = Counter("voicepipe_errors", "Errors, by where and what", ["stage", "kind"],
                              registry=self.registry)
        self.registry.register(_LlmBackendCollector(chat))

    def turn(self, timings: dict[str, Any]) -> None:
        self.turns.inc()
        if timings.get("end_of_turn"):
            self.turn_ends.labels(timings["end_of_turn"]).inc()
        for stage in STAGES:
            if timings.get(stage) is not None:
                self.stage_seconds.labels(stage).observe(timings[stage])
        if timings.get("interrupted"):
            self.barge_ins.inc()
        if timings.get("cut_in"):
            self.cut_ins.inc()
        self.false_alarms.inc(float(timings.get("false_alarms") or 0))
        self.judged_early.inc(float(timings.get("judged_early") or 0))
        self.stt_runs.inc(float(timings.get("stt_runs") or 0))

    def error(self, stage: str, kind: str) -> None:
        self.errors.labels(stage, kind).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
