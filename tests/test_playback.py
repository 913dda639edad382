"""The mark-paced player: lead, clear, and a hold that keeps what was not heard for a resume."""

from __future__ import annotations

import asyncio
import json

from voicepipe.telephony.playback import PacedSender


class Line:
    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def kinds(self) -> list[str]:
        return [str(m["event"]) for m in self.sent]

    def marks(self) -> list[str]:
        return [str(m["mark"]["name"]) for m in self.sent if m["event"] == "mark"]  # type: ignore[index]


async def test_a_hold_stops_sending_at_once_and_resume_sends_the_unheard_audio_again() -> None:
    line = Line()
    player = PacedSender("MZ1", line.send, lead_ms=400)
    audio = bytes(range(256)) * 50  # 12,800 bytes: 1.6 s, eight 200 ms chunks
    playing = asyncio.create_task(player.play(audio, "s1"))
    await asyncio.sleep(0.01)
    assert line.marks() == ["s1.1", "s1.2"]  # 400 ms ahead: waiting for Twilio to play some
    player.on_mark("s1.1")  # 200 ms heard
    await asyncio.sleep(0.01)
    assert line.marks() == ["s1.1", "s1.2", "s1.3"]
    await player.hold()  # while play() waits for room
    player.on_mark("s1.2")  # Twilio echoes the cleared marks: cleared, not played
    player.on_mark("s1.3")
    await asyncio.sleep(0.05)
    assert line.kinds()[-1] == "clear" and len(line.marks()) == 3  # nothing after the clear
    assert player.played_ms("s1") == 200 and player.held

    resuming = asyncio.create_task(player.resume())
    await asyncio.sleep(0.01)
    resent = [m for m in line.sent[line.kinds().index("clear") + 1 :] if m["event"] == "media"]
    assert [m["media"]["payload"] for m in resent] == [  # type: ignore[index]
        line.sent[i]["media"]["payload"] for i in (2, 4)]  # chunks 2 and 3 again, in order  # type: ignore[index]
    for name in line.marks()[3:]:
        player.on_mark(name)
    await asyncio.sleep(0.01)
    for _ in range(20):  # Twilio plays on: the rest of the audio follows
        for name in line.marks():
            player.on_mark(name)
        await asyncio.sleep(0.005)
    await asyncio.wait_for(playing, 1)
    await resuming
    assert player.played_ms("s1") == 1600  # all of it heard once, the cut-off part after the resume


async def test_a_clear_during_a_hold_drops_the_held_audio_and_ends_the_play() -> None:
    line = Line()
    player = PacedSender("MZ1", line.send, lead_ms=400)
    playing = asyncio.create_task(player.play(b"\xff" * 4800, "s1"))
    await asyncio.sleep(0.01)
    await player.hold()
    await player.clear()
    await asyncio.wait_for(playing, 1)  # the waiting play() gives up
    await player.resume()  # nothing held any more: sends nothing
    assert line.kinds().count("media") == 2 and not player.held
