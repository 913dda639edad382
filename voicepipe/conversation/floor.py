"""The agent's side of turn-taking: the committed reply that has the floor, held the moment the caller talks
over it, then resumed (a false alarm: a cough, "mm-hmm", the agent's own echo) or given up (the caller takes
the turn, and the history keeps what they heard of it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from voicepipe.conversation.phrases import Phrases
from voicepipe.conversation.policy import TurnTaking
from voicepipe.conversation.reply import Reply, Responder
from voicepipe.conversation.speaker import Speaker

log = logging.getLogger(__name__)

CUT_IN_WINDOW_MS = 1000  # the caller speaking again this soon after their turn was taken: they were not done
# A false alarm resumes the reply once the caller has been quiet this long: a short word over the agent ("but",
# "yeah") is often the start of more, and resuming into it would talk over them again.
RESUME_AFTER_SILENCE_MS = 600

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class Floor:
    def __init__(self, speaker: Speaker, responder: Responder, phrases: Phrases, turn_taking: TurnTaking,
                 spawn: Spawn) -> None:
        self.speaker = speaker
        self.responder = responder
        self.phrases = phrases
        self.turn_taking = turn_taking
        self._spawn = spawn
        self.reply: Reply | None = None  # the committed reply, while it is produced or played
        self._resume_at_ms: int | None = None  # audio time a false alarm's resume is due

    @property
    def agent_speaking(self) -> bool:
        """Audio is playing (or about to, or held) on the caller's side."""
        reply = self.reply
        producing = reply is not None and reply.task is not None and not reply.task.done()
        return producing or self.speaker.outstanding_ms > 0 or self.speaker.held

    @property
    def held(self) -> bool:
        return self.speaker.held

    def take(self, reply: Reply) -> None:
        """A committed reply has the floor now."""
        self.reply = reply
        self._resume_at_ms = None

    def note_caller_onset(self, onset_ms: int) -> None:
        """The caller began speaking: if the agent has just taken their turn and begun, that was a cut-in."""
        self.caller_went_on()
        reply = self.reply
        if (reply is not None and reply.speech_end_ms is not None and reply.timings.voice_to_voice is not None
                and onset_ms - reply.speech_end_ms < CUT_IN_WINDOW_MS):
            reply.timings.cut_in = True
            log.info("cut-in: the caller went on %d ms after the turn was taken", onset_ms - reply.speech_end_ms)

    async def hold(self) -> None:
        """The caller started to talk over the agent: stop the audio now; their words will say what it was."""
        self.turn_taking.agent_yielded()
        await self.speaker.hold()
        if self.reply is not None:
            onset_wall = self.turn_taking.wall_time_of(self.turn_taking.detector.onset_ms)
            self.reply.timings.barge_in = time.perf_counter() - onset_wall
        log.info("caller talked over the agent: holding")

    def is_false_alarm(self, text: str) -> bool:
        """Words over the held reply that do not take the turn (none, a backchannel, the reply's own echo)."""
        agent_text = " ".join(s.text for s in self.reply.sentences[-2:]) if self.reply is not None else ""
        return self.phrases.is_false_alarm(text, agent_text)

    def caller_went_on(self) -> None:
        """They speak again: whether it was a false alarm, their words will say."""
        self._resume_at_ms = None

    def resume_when_quiet(self, speech_end_ms: int) -> None:
        """A false alarm: the reply goes on once the caller has been quiet for a moment after `speech_end_ms`."""
        self._resume_at_ms = speech_end_ms + RESUME_AFTER_SILENCE_MS

    def tick(self, clock_ms: int, caller_speaking: bool) -> None:
        """Audio time went on: resume now if a false alarm's moment has come."""
        if self._resume_at_ms is not None and clock_ms >= self._resume_at_ms and not caller_speaking:
            self._resume_at_ms = None
            if self.held:
                self.resume()

    def resume(self) -> None:
        if self.reply is not None:
            self.reply.timings.false_alarms += 1
        log.info("false alarm: the reply goes on")
        self._spawn(self.speaker.resume(), "resume")

    async def give_way(self) -> None:
        """The caller takes the turn: drop what was queued or held, stop the reply, keep what was heard."""
        self.turn_taking.agent_yielded()
        self._resume_at_ms = None
        reply, self.reply = self.reply, None
        if reply is not None:
            reply.stop()
        await self.speaker.clear()
        if reply is not None:
            reply.timings.interrupted = True
            self.responder.revise_to_heard(reply)
        log.info("the caller took the turn; the agent stopped")
