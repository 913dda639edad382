"""One phone call: caller turns in, spoken replies out, with the call's whole conversation kept in context.

The session orchestrates; the parts decide. The turn-taking policy says when the caller paused, finished or
talks over the agent; a Responder turns an utterance into a reply; the Speaker plays it and knows what was
heard; the ConversationContext keeps the history as the caller heard it; Phrases hold the fixed lines.

Replies start speculatively at a short pause and play only once the turn ends (whisper may start sooner still, a
moment into the silence, and the pause takes its words if the caller stayed quiet). When the caller starts to talk
over the agent, it holds at once (Twilio's buffer cleared, what was not heard kept); the caller's first words
decide: an interruption, and the reply stops there, the history keeping what was heard; or a false alarm (a
cough, "mm-hmm", the agent's own echo), and the reply resumes where the caller stopped hearing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np

from voicepipe.audio.codec import ulaw_to_pcm16
from voicepipe.audio.levels import peak_frame_rms
from voicepipe.audio.vad import SileroStream
from voicepipe.config import Settings
from voicepipe.conversation.context import ConversationContext
from voicepipe.conversation.events import Observers, TurnTimings
from voicepipe.conversation.floor import Floor
from voicepipe.conversation.judge import LONGER_SILENCE_CUES, TurnJudge
from voicepipe.conversation.phrases import Phrases
from voicepipe.conversation.policy import (
    CallerStarted,
    CommitTurn,
    DropSpeculation,
    FalseStart,
    SilenceWatch,
    Speculate,
    Transcribe,
    TurnTaking,
)
from voicepipe.conversation.reply import Reply, Responder
from voicepipe.conversation.speaker import Speaker
from voicepipe.conversation.tools import Action, Toolbox
from voicepipe.engines.llm import Message
from voicepipe.engines.models import Models
from voicepipe.engines.stt import Transcript
from voicepipe.telephony.playback import PacedSender, Send

log = logging.getLogger(__name__)

DTMF_GAP_SECONDS = 1.0  # keys pressed closer together than this are one entry ("1", "2", "3" -> "1 2 3")
MAX_DTMF_DIGITS = 32  # keys gathered into one turn; more is a stuck key or a flood, not an answer
WATCHDOG_SECONDS = 0.25
# Sound after a pause that is within this of the utterance's loudest moment is speech, not a breath or a click
# (a short "but" here counted one voiced frame, yet peaked within 6 dB of the rest).
SPOKE_ON_DB = 15.0

HangUp = Callable[[], Awaitable[None]]
Transfer = Callable[[str], Awaitable[bool]]  # hand the live call to a number; False when that could not be done


def spoke_on(before: np.ndarray, now: np.ndarray) -> bool:
    """The same utterance at two pauses (`now` extends `before`): did the caller speak in between?"""
    if len(now) <= len(before) or not np.array_equal(now[: len(before)], before):
        return False  # another utterance
    loudest = peak_frame_rms(before)
    return loudest > 0 and peak_frame_rms(now[len(before) :]) >= loudest * 10 ** (-SPOKE_ON_DB / 20)


def turn_judge(settings: Settings, models: Models) -> TurnJudge:
    """The judge of a call's pauses, from its settings and the loaded models (the benchmark asks it too)."""
    return TurnJudge(models.turn_model, settings.language, settings.turn_threshold, settings.turn_min_logprob,
                     models.turn_text_model, settings.turn_text_threshold)


class CallSession:
    def __init__(self, settings: Settings, models: Models, phrases: Phrases, call_sid: str, stream_sid: str,
                 send: Send, observers: Observers | None = None, hang_up: HangUp | None = None,
                 tools: Toolbox | None = None, caller_number: str = "", transfer: Transfer | None = None) -> None:
        self.settings = settings
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.phrases = phrases
        self.observers = observers or Observers()
        self._hang_up = hang_up
        self._transfer = transfer
        self.context = ConversationContext(settings.system_prompt)
        silero = SileroStream(models.silero).feed if models.silero is not None else None
        # The judge hears the speculative transcript, so it needs speculation; without it a fixed silence decides.
        judged = bool(settings.turn_model) and models.turn_model is not None and settings.speculative
        self.judge = turn_judge(settings, models) if judged else None
        turn = dataclasses.replace(settings.turn, end_of_turn_ms=settings.max_silence_ms) if judged else settings.turn
        self.turn_taking = TurnTaking(turn, settings.speculative, settings.barge_in_ms, silero, judged)
        self.silence = SilenceWatch(settings.silence_reprompt_s, settings.silence_hangup_s, settings.max_call_s,
                                    time.monotonic())
        self.speaker = Speaker(PacedSender(stream_sid, send, settings.playback_lead_ms), models.synthesizer,
                               self.observers, models.priority)
        self.responder = Responder(models.transcriber, models.chat, self.speaker, self.context, phrases,
                                   self.observers, call_sid, settings.streaming,
                                   on_goodbye=lambda: self.end_call("closing"), tools=tools,
                                   caller_number=caller_number, on_action=self._act)
        self._speculative: Reply | None = None
        self.floor = Floor(self.speaker, self.responder, phrases, self.turn_taking, self._spawn)
        self._judging: asyncio.Task[None] | None = None  # is the caller done at this pause?
        self.judgments = 0  # pauses judged so far
        self._judged_early = 0  # pauses of the turn under way judged its end, that the caller spoke on from
        self._last_pause: tuple[Speculate, Reply] | None = None  # the previous pause and the reply begun there
        # Whisper begun at a silence too short for a pause, on the words up to the given audio time.
        self._early_words: tuple[int, asyncio.Future[Transcript]] | None = None
        self._stt_runs = 0  # whisper runs for the turn under way, those begun in gaps it went on from included
        self._tasks: set[asyncio.Task[Any]] = set()
        self._turns = 0  # committed turns; a turn's number (and its audio tags) is given at commit
        self._replies = 0  # replies started, speculative ones included (names their tasks)
        self._dtmf_digits = ""
        self._dtmf_task: asyncio.Task[None] | None = None
        self.ending = False
        self.end_reason = ""  # why the agent ended the call: closing, goodbye (silence), max_duration, shutdown
        self.closed = False

    @property
    def history(self) -> list[Message]:
        return self.context.messages

    @property
    def agent_speaking(self) -> bool:
        return self.floor.agent_speaking

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Every task of the call is named after it and tracked, so ending the call can end them all."""
        task = asyncio.create_task(coroutine, name=f"call:{self.call_sid}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def begin(self) -> None:
        self._spawn(self._watchdog(), "watchdog")
        if audio := self.phrases.audio.get("greeting"):
            self.context.add_assistant(self.phrases.text["greeting"])
            self._spawn(self.speaker.say(audio, "greeting"), "greeting")

    async def close(self) -> None:
        """End all of the call's work at once: nothing keeps running for a finished call."""
        self.closed = True
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- what Twilio sends ---------------------------------------------------------------------------------

    async def handle_media(self, payload: bytes) -> None:
        decisions = self.turn_taking.hear(ulaw_to_pcm16(payload))
        if self.ending:
            return
        for decision in decisions:
            if isinstance(decision, CallerStarted):
                self.silence.activity(time.monotonic())
                self.floor.note_caller_onset(decision.onset_ms)
            elif isinstance(decision, DropSpeculation):  # the caller went on speaking
                if self._speculative is not None and self._speculative.judged_done:
                    self._judged_early += 1
                self._drop_speculation()
                self.floor.caller_went_on()
            elif isinstance(decision, Transcribe):
                # Only on an idle model: it decodes one utterance at a time, and a gap the caller speaks on from
                # wastes its run, which must not hold up a pause's (this call's or another's).
                if not self.responder.transcriber.busy:
                    self._early_words = (decision.speech_end_ms, self.responder.start_transcription(decision.audio))
                    self._stt_runs += 1
            elif isinstance(decision, Speculate):
                words = None
                if self._early_words is not None and self._early_words[0] == decision.speech_end_ms:
                    words = self._early_words[1]  # no voiced frame since: the same words
                else:
                    self._stt_runs += 1
                self._speculative = self._start_reply(decision.audio, decision.speech_end_ms, speculative=True,
                                                      stt=words)
                previous, self._last_pause = self._last_pause, (decision, self._speculative)
                if self.judge is not None or self.floor.held:
                    self._judging = self._spawn(self._at_pause(self._speculative, decision, previous), "pause")
            elif isinstance(decision, FalseStart):
                if self.floor.held:
                    self.floor.resume_when_quiet(decision.speech_end_ms)
            elif isinstance(decision, CommitTurn):
                self.silence.activity(time.monotonic())
                self._stop_judging()
                await self._end_turn(decision)
        self.floor.tick(self.turn_taking.clock_ms, self.turn_taking.caller_speaking)
        if self.turn_taking.interrupts(self.agent_speaking and not self.floor.held):
            await self.floor.hold()
            if not self.turn_taking.caller_speaking:  # held before an utterance began: if none does, go on
                self.floor.resume_when_quiet(self.turn_taking.clock_ms)

    def handle_mark(self, name: str) -> None:
        self.speaker.player.on_mark(name)

    async def handle_dtmf(self, digit: str) -> None:
        """Keys reach the model as text once the caller stops pressing; a key also stops the agent."""
        self.silence.activity(time.monotonic())
        if self.ending:
            return
        if self.agent_speaking:
            await self.floor.give_way()
        if len(self._dtmf_digits) >= MAX_DTMF_DIGITS:
            log.debug("key ignored: %d keys is the most one turn takes", MAX_DTMF_DIGITS)
            return
        self._dtmf_digits += digit
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        self._dtmf_task = self._spawn(self._dtmf_turn(), "dtmf")

    async def _dtmf_turn(self) -> None:
        await asyncio.sleep(DTMF_GAP_SECONDS)
        digits, self._dtmf_digits = " ".join(self._dtmf_digits), ""
        reply = self._start_reply(None, None, speculative=False, typed=self.phrases.dtmf(digits))
        reply.timings.end_of_turn = "keys"
        await self._commit(reply)

    # -- turns ---------------------------------------------------------------------------------------------

    def _start_reply(self, audio: np.ndarray | None, speech_end_ms: int | None, speculative: bool,
                     typed: str = "", stt: asyncio.Future[Transcript] | None = None) -> Reply:
        self._replies += 1
        wall = self.turn_taking.wall_time_of(speech_end_ms) if speech_end_ms is not None else time.perf_counter()
        reply = Reply(audio, wall, TurnTimings(self.call_sid, 0, speculative), speech_end_ms, user_text=typed,
                      stt=stt)
        reply.task = self._spawn(self.responder.run(reply), f"reply{self._replies}")
        return reply

    def _drop_speculation(self) -> None:
        self._stop_judging()
        if self._speculative is not None:
            self._speculative.stop()
        self._speculative = None

    def _stop_judging(self) -> None:
        if self._judging is not None:
            self._judging.cancel()
        self._judging = None

    async def _at_pause(self, reply: Reply, pause: Speculate, previous: tuple[Speculate, Reply] | None) -> None:
        """At a pause: settle a hold by the words so far; then, if the caller sounds done and their words agree,
        the turn ends here, not at the maximum silence. `previous`: the pause before this one, and its reply."""
        if self.floor.held and await self._settle_hold(reply, pause):
            return
        if self.judge is None:
            return
        earlier = ""
        if previous is not None and spoke_on(previous[0].audio, pause.audio):
            earlier = await previous[1].words_heard()
        judgment = await self.judge.judge(pause.audio, reply.transcript_and_confidence(), earlier)
        self.judgments += 1
        timings = reply.timings
        timings.turn_probability, timings.turn_cue = judgment.probability, judgment.cue
        timings.turn_text_probability = judgment.text_probability
        timings.turn_decision = time.perf_counter() - reply.speech_end_wall
        log.debug("turn judged %s (P(done) %s, words: %s, log-prob %.2f, text P(done) %s) in %.0f ms",
                  "done" if judgment.done else "open", judgment.probability, judgment.cue or "complete",
                  judgment.logprob, judgment.text_probability, judgment.seconds * 1000)
        if self._speculative is not reply:
            return
        done = judgment.done
        if judgment.cue in LONGER_SILENCE_CUES:  # the words may go on, the model cannot tell: a longer silence decides
            self.turn_taking.end_at_silence(pause.speech_end_ms, self.settings.unsure_words_ms)
        elif not done and not judgment.cue:  # the words could end here; the model is not sure
            self.turn_taking.end_at_silence(pause.speech_end_ms, self.settings.turn.end_of_turn_ms)
            probability = await self._ask_again(pause)
            if probability is not None and self._speculative is reply:
                timings.turn_probability = probability
                timings.turn_decision = time.perf_counter() - reply.speech_end_wall
                done = probability >= self.judge.threshold
                if done:
                    self.turn_taking.no_end_at_silence()
        if done:
            reply.judged_done = True
            await reply.ready.wait()  # listening on until there is something to say (speech cancels this task)
            if self._speculative is not reply:
                return
            if commit := self.turn_taking.commit_if_still_paused(pause.speech_end_ms):
                self._judging = None  # committing now: a new pause must not cancel this task halfway
                await self._end_turn(commit, decided_after=timings.turn_decision)

    async def _ask_again(self, pause: Speculate) -> float | None:
        """Smart Turn's P(done) once the pause has lasted turn_recheck_ms (it hears the silence too; the words
        cannot have changed), or None when the caller spoke first or it is not to be asked again."""
        assert self.judge is not None
        recheck_ms = self.settings.turn_recheck_ms
        if self.judge.model is None or recheck_ms <= 0:
            return None
        waited_ms = self.turn_taking.clock_ms - pause.speech_end_ms
        if waited_ms < recheck_ms:
            await asyncio.sleep((recheck_ms - waited_ms) / 1000)
        audio = self.turn_taking.pause_so_far(pause.speech_end_ms)
        if audio is None:
            return None
        silence_ms = self.turn_taking.clock_ms - pause.speech_end_ms
        probability = await asyncio.to_thread(self.judge.model.probability_done, audio)
        log.debug("turn model asked again after %d ms of silence: P(done) %.2f", silence_ms, probability)
        return probability

    async def _end_turn(self, turn: CommitTurn, decided_after: float | None = None) -> None:
        """`decided_after`: a judged turn was decided over that long after the speech ended (its commit came
        later, once the reply had audio); the end-of-turn wait is the decision's."""
        reply, self._speculative = self._speculative, None
        if reply is None or reply.failed:  # a speculation that failed (a model fault) gets one fresh try
            reply = self._start_reply(turn.audio, turn.speech_end_ms, speculative=False)
            self._stt_runs += 1
            decided_after = None
        elif turn.by == "max_silence" and reply.judged_done:
            # Judged done, then the maximum silence ran out while its audio was still being made (a slow
            # model): the judge ended this turn, when it decided.
            turn = dataclasses.replace(turn, by="judged")
            decided_after = reply.timings.turn_decision
        reply.timings.vad_wait = decided_after if decided_after is not None else \
            time.perf_counter() - reply.speech_end_wall
        reply.timings.end_of_turn = turn.by
        reply.timings.judged_early, self._judged_early = self._judged_early, 0
        reply.timings.stt_runs, self._stt_runs = self._stt_runs, 0
        await self._commit(reply)

    async def _commit(self, reply: Reply) -> None:
        if self.agent_speaking:
            # A whole new turn while the agent talks or holds: it gives up the rest of its reply.
            await self.floor.give_way()
        self._turns += 1
        reply.timings.turn = self._turns
        self.floor.take(reply)
        reply.committed.set()

    async def _settle_hold(self, reply: Reply, pause: Speculate) -> bool:
        """The speech that held the agent, at its first pause: a false alarm (True: the reply goes on, and this
        was no turn), or words that take the turn (the agent gives way)."""
        text = await reply.transcript()
        if not self.floor.held or self._speculative is not reply:
            return False  # settled already (a commit or a key came first)
        if not self.floor.is_false_alarm(text):
            await self.floor.give_way()
            return False
        if self.turn_taking.commit_if_still_paused(pause.speech_end_ms) is None:
            return True  # they spoke again meanwhile: the next pause decides
        self._judging = None  # this task: not to be cancelled by dropping the speculation it belongs to
        self._drop_speculation()  # not a turn: no answer, nothing in the history
        self.floor.resume_when_quiet(pause.speech_end_ms)
        return True

    # -- silences and the end of the call -----------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Wall-clock duties: reprompt a silent caller, then hang up; end calls that run too long."""
        while not self.closed and not self.ending:
            await asyncio.sleep(WATCHDOG_SECONDS)
            busy = self.agent_speaking or self.turn_taking.caller_speaking or self._speculative is not None
            action = self.silence.check(time.monotonic(), busy)
            if action == "reprompt":
                await self._say("reprompt")
            elif action is not None:
                self._spawn(self.end_call(action), "end")
                return

    async def _say(self, phrase: str) -> None:
        """Speak one of the call's fixed lines and keep it in the history."""
        if audio := self.phrases.audio.get(phrase):
            self.context.add_assistant(self.phrases.text[phrase])
            await self.speaker.say(audio, phrase)

    async def _act(self, action: Action) -> None:
        """A built-in tool the model called, once its reply has been spoken (it is not cut off)."""
        if action.kind == "transfer_call":
            await self.transfer(action.destination)
        else:
            await self.end_call("closing", interrupt=False)

    async def hand_over(self, reason: str, clear: bool = True) -> None:
        """The agent is done with the call (for `reason`): no more turns, and with `clear` nothing more of what
        is playing (Twilio is taking the call elsewhere, or the last words replace it)."""
        self.ending = True
        self.end_reason = reason
        for reply in (self._speculative, self.floor.reply):
            if reply is not None:
                reply.stop()
        if clear and self.speaker.outstanding_ms:
            await self.speaker.clear()

    async def _last_words(self, phrase: str, reason: str, interrupt: bool) -> None:
        """Stop listening for turns, say `phrase` (after what is playing, or instead of it) and wait until
        Twilio reports it played."""
        await self.hand_over(reason, clear=interrupt)
        await self._say(phrase)
        await self.speaker.drain(timeout=(self.speaker.outstanding_ms + len(self.phrases.audio.get(phrase, b"")) / 8)
                                 / 1000 + 3.0)

    async def end_call(self, phrase: str, interrupt: bool = True) -> None:
        """Say the closing line, wait until Twilio reports it played, then hang up."""
        if self.ending:
            return
        await self._last_words(phrase, phrase, interrupt)
        log.info("call ended by the agent (%s)", phrase)
        if self._hang_up is not None:
            # Shielded: hanging up closes the socket, which ends the call and cancels its tasks, this one too.
            await asyncio.shield(self._hang_up())

    async def transfer(self, number: str) -> None:
        """Say the transfer line, then hand the live call to `number` (Twilio dials it); if that cannot be
        done, say so and go on with the call."""
        if self.ending:
            return
        if self._transfer is not None:
            await self._last_words("transfer", "transferred", interrupt=False)
            log.info("transferring the call")
            if await asyncio.shield(self._transfer(number)):
                return
            self.ending, self.end_reason = False, ""
        log.warning("the call could not be transferred; it goes on")
        await self._say("transfer_failed")
