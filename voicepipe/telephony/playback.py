"""Outbound audio to Twilio, paced by echoed marks so that Twilio's buffer stays shallow.

Audio goes out in 200 ms messages, each followed by a mark. Twilio echoes a mark once the audio before it has
played, so the echoes say exactly how much the caller has heard. We stay at most `lead_ms` ahead of that:
then `clear` drops little, and what was heard of each sentence is known to the 200 ms. A mark echoed after
a `clear` means "cleared", not "played" (Twilio echoes every pending mark at once on clear).

A hold is a `clear` that keeps what was cut off: playback stops at once (the caller may be interrupting), and
`resume` sends the unheard audio again, under the same tags, if it was a false alarm.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from voicepipe.telephony.protocol import clear_message, mark_message, media_message

log = logging.getLogger(__name__)

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
ULAW_SILENCE = b"\xff"
CHUNK_FRAMES = 10  # 200 ms per message
# If Twilio stops echoing marks, do not stall the call forever: past this, assume the chunk played.
MARK_TIMEOUT_SECONDS = 2.0

Send = Callable[[str], Awaitable[None]]


@dataclass
class _Chunk:
    seq: int
    tag: Hashable
    ms: int
    audio: bytes


class PacedSender:
    def __init__(self, stream_sid: str, send: Send, lead_ms: int = 400) -> None:
        self.stream_sid = stream_sid
        self._send = send
        self.lead_ms = lead_ms
        self._pending: deque[_Chunk] = deque()  # sent, not yet reported played
        self._played: dict[Hashable, int] = {}  # ms of each tag's audio the caller has heard
        self._progress = asyncio.Event()
        self._seq = 0
        self._clears = 0  # a play() that began before the latest clear sends nothing more
        self._held: list[_Chunk] | None = None  # cut off by a hold, to be sent again on resume
        self._not_held = asyncio.Event()
        self._not_held.set()

    @property
    def outstanding_ms(self) -> int:
        """Audio sent that Twilio has not yet reported played."""
        return sum(chunk.ms for chunk in self._pending)

    @property
    def held(self) -> bool:
        return self._held is not None

    def played_ms(self, tag: Hashable) -> int:
        return self._played.get(tag, 0)

    async def play(self, ulaw: bytes, tag: Hashable) -> None:
        """Send whole-frame audio, waiting whenever we are lead_ms ahead of playback."""
        size = FRAME_BYTES * CHUNK_FRAMES
        clears = self._clears
        for start in range(0, len(ulaw), size):
            while True:  # a hold may come while waiting for room: then wait for the resume too
                await self._not_held.wait()
                await self._wait_for_room()
                if self._held is None:
                    break
            if self._clears != clears:
                return
            await self._send_chunk(ulaw[start : start + size], tag)

    async def _send_chunk(self, audio: bytes, tag: Hashable) -> None:
        self._seq += 1
        self._pending.append(_Chunk(self._seq, tag, len(audio) // 8, audio))
        await self._send(media_message(self.stream_sid, audio))
        await self._send(mark_message(self.stream_sid, f"{tag}.{self._seq}"))

    async def _wait_for_room(self) -> None:
        while self.outstanding_ms >= self.lead_ms:
            self._progress.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives as
            # the event is set, and clear() sets it exactly when the reply is being cancelled.
            try:
                async with asyncio.timeout(MARK_TIMEOUT_SECONDS):
                    await self._progress.wait()
            except TimeoutError:
                log.debug("no mark echoed for %.1f s; assuming the oldest chunk played", MARK_TIMEOUT_SECONDS)
                self._mark_played(self._pending[0].seq)

    def on_mark(self, name: str) -> None:
        """An echoed mark: everything up to it has played (unless it was cleared, then it is unknown here)."""
        seq_text = name.rpartition(".")[2]
        if seq_text.isascii() and seq_text.isdecimal():  # "²".isdigit() is True, and int("²") raises
            self._mark_played(int(seq_text))

    def _mark_played(self, seq: int) -> None:
        while self._pending and self._pending[0].seq <= seq:
            chunk = self._pending.popleft()
            self._played[chunk.tag] = self._played.get(chunk.tag, 0) + chunk.ms
        self._progress.set()

    async def clear(self) -> None:
        """Drop everything Twilio has queued (and anything held); the pending chunks count as never heard."""
        self._pending.clear()
        self._held = None
        self._not_held.set()
        self._clears += 1
        self._progress.set()
        await self._send(clear_message(self.stream_sid))

    async def hold(self) -> None:
        """Stop playback now, keeping what Twilio had not played; play() waits until resume() or clear()."""
        if self._held is not None:
            return
        self._held = list(self._pending)
        self._pending.clear()
        self._not_held.clear()
        self._progress.set()
        await self._send(clear_message(self.stream_sid))

    async def resume(self) -> None:
        """Send again what the hold cut off (the marks of the cleared audio were echoed as cleared, with older
        numbers), then let waiting play() calls go on."""
        held, self._held = self._held or [], None
        clears = self._clears
        try:
            for index, chunk in enumerate(held):
                await self._wait_for_room()
                if self._clears != clears:
                    return
                if self._held is not None:  # held again meanwhile: the rest waits for the next resume
                    self._held.extend(held[index:])
                    return
                await self._send_chunk(chunk.audio, chunk.tag)
        finally:
            if self._held is None:
                self._not_held.set()

    async def drain(self, timeout: float) -> None:
        """Wait until Twilio reports everything sent as played (or the timeout passes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending and loop.time() < deadline:
            self._progress.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._progress.wait()
            except TimeoutError:
                break
