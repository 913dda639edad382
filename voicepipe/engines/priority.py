"""First audio first: on a CPU, while a reply's first words are synthesized, local LLM generation waits.

The model writes seconds of text ahead of playback, so pausing it costs the caller nothing, while the first
sentence's synthesis is what the caller is waiting for. Measured on the 2-core build machine: Piper took 106 ms
for a first sentence alone and 251 ms beside a generating SmolLM2 (both want every core). On a GPU the two do
not share cores, so the gate stays open there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# A waiting generator goes on after this long whatever happens: a stuck synthesis must not stall every call.
MAX_WAIT_SECONDS = 0.5


class FirstAudioGate:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._synthesizing = 0  # first sentences being synthesized now, over all calls
        self._open = threading.Event()
        self._open.set()

    @contextmanager
    def first_audio(self) -> Iterator[None]:
        """Around a reply's first synthesis: generation elsewhere pauses until it is done."""
        if not self.enabled:
            yield
            return
        with self._lock:
            self._synthesizing += 1
            self._open.clear()
        try:
            yield
        finally:
            with self._lock:
                self._synthesizing -= 1
                if self._synthesizing == 0:
                    self._open.set()

    def wait(self) -> bool:
        """Called by a generating thread between tokens; False when it gave up waiting."""
        return self._open.wait(MAX_WAIT_SECONDS)

    @property
    def closed(self) -> bool:
        return not self._open.is_set()
