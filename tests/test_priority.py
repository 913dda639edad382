"""First audio first: generation waits while a reply's first sentence is synthesized, and never for long."""

from __future__ import annotations

import threading
import time

import pytest

from voicepipe.engines import priority
from voicepipe.engines.priority import FirstAudioGate


def generate(gate: FirstAudioGate, tokens: list[float], stop: threading.Event) -> None:
    """A stand-in for the LLM's thread: a token every millisecond, each after the gate lets it."""
    while not stop.is_set():
        gate.wait()
        tokens.append(time.monotonic())
        time.sleep(0.001)


def test_generation_pauses_while_a_first_sentence_is_synthesized() -> None:
    gate, stop = FirstAudioGate(), threading.Event()
    tokens: list[float] = []
    worker = threading.Thread(target=generate, args=(gate, tokens, stop))
    worker.start()
    try:
        time.sleep(0.05)
        with gate.first_audio(), gate.first_audio():  # two calls' first sentences at once
            assert gate.closed
            time.sleep(0.02)  # the token being made when the gate closed may still land
            during = len(tokens)
            time.sleep(0.2)
            assert len(tokens) == during  # none while the synthesis runs
        assert not gate.closed
        deadline = time.monotonic() + 5
        while len(tokens) == during and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(tokens) > during  # and on again after it
    finally:
        stop.set()
        worker.join()


def test_a_stuck_synthesis_does_not_stall_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(priority, "MAX_WAIT_SECONDS", 0.05)
    gate = FirstAudioGate()
    with gate.first_audio():
        assert gate.wait() is False  # it gave up waiting: the generator goes on


def test_the_gate_stays_open_off_the_cpu() -> None:
    gate = FirstAudioGate(enabled=False)  # on a GPU the two do not share cores
    with gate.first_audio():
        assert not gate.closed and gate.wait()
