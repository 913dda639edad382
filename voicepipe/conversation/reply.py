"""One reply: the caller's audio to text, the text to the chat backend, its sentences to the speaker.

A reply may start before the caller's turn is over (a speculative reply, begun at a short pause); it produces
text and audio early but plays nothing until it is committed, and it is dropped if the caller goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from voicepipe.conversation.chunker import SentenceChunker
from voicepipe.conversation.context import ConversationContext
from voicepipe.conversation.events import Observers, TurnTimings
from voicepipe.conversation.phrases import Phrases
from voicepipe.conversation.speaker import Line, Speaker, SpokenSentence
from voicepipe.conversation.tools import Action, Toolbox, ToolResult
from voicepipe.engines.llm import ChatBackend, CutShort, Message, TextDelta, ToolCall
from voicepipe.engines.stt import Transcriber, Transcript

log = logging.getLogger(__name__)

MAX_TOOL_ROUNDS = 3  # model -> tools -> model ... at most this many times in one reply
# A piece of this many words or more said again in one reply means the model is looping (SmolLM2 was heard
# saying "I'm sorry for any misunderstanding." 17 times, to its token limit); shorter ones ("No.") may repeat.
LOOP_MIN_WORDS = 3
FILLER_AFTER_SECONDS = 0.7  # a tool still running this long: the caller hears "One moment."


@dataclass(eq=False)  # a reply is itself, not its values (its audio is an array)
class Reply:
    audio: np.ndarray | None  # the caller's utterance (8 kHz); None for a typed turn (DTMF)
    speech_end_wall: float  # wall time of the caller's last voiced frame: voice-to-voice counts from here
    timings: TurnTimings
    speech_end_ms: int | None = None  # audio time of the same moment (None for a typed turn)
    user_text: str = ""
    words_logprob: float = 0.0  # whisper's average log-probability per token of user_text (0: typed or unknown)
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    # The reply waits for its commit: its first audio is ready to play, or it has nothing to play (a goodbye, a
    # tool call first, a failure). A turn judged over commits only now, so a caller who goes on meanwhile is not
    # talked over: the time to the first audio is spent listening, not waiting.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    transcribed: asyncio.Event = field(default_factory=asyncio.Event)  # user_text is final (or failed)
    task: asyncio.Task[None] | None = None
    stt: asyncio.Future[Transcript] | None = None  # the transcription, which runs to its end even if dropped
    sentences: list[SpokenSentence] = field(default_factory=list)  # sent to Twilio, in order
    assistant_entry: Message | None = None  # its entry in the history, revised to what was heard
    remembered: bool = False
    # Set the moment the reply is cut off. Cancelling its tasks takes effect only at their next await, and
    # meanwhile its player must not start another sentence.
    stopped: bool = False
    failed: bool = False
    judged_done: bool = False  # its pause was judged the end of the turn (the commit waits for its audio)
    action: Action | None = None  # a built-in tool the model called: done once the reply has been spoken

    async def words_heard(self) -> str:
        """What whisper heard in this utterance, even if the reply was dropped since ("" if it heard nothing)."""
        if self.stt is None:
            return ""
        try:
            return (await asyncio.shield(self.stt)).text
        except Exception:  # a failed transcription: it was reported where it failed
            return ""

    async def transcript(self) -> str:
        """What the caller said, once transcribed ("" for no speech or a failed transcription)."""
        await self.transcribed.wait()
        return self.user_text

    async def transcript_and_confidence(self) -> tuple[str, float]:
        """The transcript and whisper's average log-probability per token of it."""
        return await self.transcript(), self.words_logprob

    async def wait_for_commit(self) -> None:
        """The reply has something to do for the caller now (audio, a goodbye, a tool): it is ready."""
        self.ready.set()
        await self.committed.wait()

    def stop(self) -> None:
        self.stopped = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class Responder:
    """Runs replies for one call and keeps each finished turn in the conversation, as the caller heard it."""

    def __init__(self, transcriber: Transcriber, chat: ChatBackend, speaker: Speaker, context: ConversationContext,
                 phrases: Phrases, observers: Observers, call_sid: str, streaming: bool = True,
                 on_goodbye: Callable[[], Awaitable[None]] | None = None, tools: Toolbox | None = None,
                 caller_number: str = "", on_action: Callable[[Action], Awaitable[None]] | None = None) -> None:
        self.transcriber = transcriber
        self.chat = chat
        self.speaker = speaker
        self.context = context
        self.phrases = phrases
        self.observers = observers
        self.call_sid = call_sid
        self.streaming = streaming  # False: the whole reply is spoken in one piece at the end (for comparison)
        self.on_goodbye = on_goodbye
        self.tools = tools
        self.caller_number = caller_number  # for the operator's tools that may send it
        self.on_action = on_action
        self._running: list[Reply] = []  # replies under way, in the order they started

    def prompt(self, reply: Reply) -> list[Message]:
        """What the model sees to answer `reply`: the history, then any earlier turn still under way (the caller
        spoke before it ended, so it is not in the history yet) as far as the caller has heard it."""
        under_way: list[Message] = []
        for earlier in self._running:
            if earlier is reply or earlier.remembered or not earlier.committed.is_set() or not earlier.user_text:
                continue
            under_way.append({"role": "user", "content": earlier.user_text})
            if heard := self.speaker.heard(earlier.sentences):
                under_way.append({"role": "assistant", "content": heard})
        return self.context.prompt(reply.user_text, under_way)

    async def run(self, reply: Reply) -> None:
        self._running.append(reply)
        try:
            if reply.audio is not None:
                heard = await self.transcribe(reply)
                reply.transcribed.set()
                if not heard:
                    return
                if self.phrases.is_goodbye(reply.user_text) and self.on_goodbye is not None:
                    await reply.wait_for_commit()
                    self.remember(reply)
                    await self.on_goodbye()
                    return
            await self.answer(reply, self.prompt(reply))
            if reply.action is not None and self.on_action is not None and not reply.stopped:
                self.remember(reply)
                await self.on_action(reply.action)
        except Exception:
            reply.failed = True
            log.exception("%s failed", f"turn {reply.timings.turn}" if reply.timings.turn else "a speculative reply")
            if reply.committed.is_set() and not reply.stopped and "apology" in self.phrases.audio:
                await self.speaker.say(self.phrases.audio["apology"], f"t{reply.timings.turn}apology")
        finally:
            reply.transcribed.set()  # nobody waits for a transcript that will not come
            reply.ready.set()
            self._running.remove(reply)
            # Interrupted turns are reported too: their timings (barge-in included, set a moment later on
            # the same object) are what /stats and the bench read.
            if reply.committed.is_set():
                self.remember(reply)
                if reply.user_text:
                    log.info("turn timings %s", {k: v for k, v in reply.timings.as_dict().items() if v is not None})
                    self.observers.turn_finished(reply.timings)

    def remember(self, reply: Reply) -> None:
        """Keep the turn in the history: what the caller said and what of the answer was sent (revised to
        what was heard if the caller cut in)."""
        if not reply.user_text or reply.remembered:
            return
        reply.remembered = True
        self.context.add_user(reply.user_text)
        if reply.sentences:
            reply.assistant_entry = self.context.add_assistant(" ".join(s.text for s in reply.sentences))
            if reply.timings.interrupted:
                self.revise_to_heard(reply)

    def revise_to_heard(self, reply: Reply) -> None:
        entry = reply.assistant_entry
        if entry is not None and not self.context.revise(entry, self.speaker.heard(reply.sentences)):
            reply.assistant_entry = None

    def start_transcription(self, audio: np.ndarray) -> asyncio.Future[Transcript]:
        """Whisper on `audio` in a worker thread. It runs to its end, needed or not (a running decode cannot be
        stopped); a failure is reported by whoever awaits it, and an unawaited one is dropped quietly."""
        future = asyncio.get_running_loop().run_in_executor(None, self.transcriber.transcribe, audio)
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        return future

    async def transcribe(self, reply: Reply) -> bool:
        """Fill in what the caller said; False when the utterance held no speech."""
        assert reply.audio is not None
        with self.observers.watch("stt"):
            if reply.stt is None:  # else begun before the pause, on the same words (Transcribe)
                reply.stt = self.start_transcription(reply.audio)
            # Shielded: a speculation dropped because the caller went on still learns its words (the next
            # pause's judgment compares them).
            transcript = await asyncio.shield(reply.stt)
        reply.timings.stt = transcript.seconds
        if not transcript.is_speech:
            log.debug("utterance had no speech (no_speech_prob %.2f)", transcript.no_speech_prob)
            return False
        reply.user_text, reply.words_logprob = transcript.text, transcript.avg_logprob
        log.debug("caller said: %s", transcript.text)
        return True

    async def answer(self, reply: Reply, prompt: list[Message]) -> None:
        """Generate and speak the answer to `prompt`; sentences play once the reply is committed."""
        sentences: asyncio.Queue[str | Line | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._think(prompt, sentences, reply), name=f"call:{self.call_sid}:llm")
            group.create_task(self.speaker.speak(reply, sentences), name=f"call:{self.call_sid}:tts")

    async def _think(self, prompt: list[Message], sentences: asyncio.Queue[str | Line | None], reply: Reply) -> None:
        """The model's words, sentence by sentence, onto `sentences`; the tools it calls are run (once the reply
        is committed) and their results given back to it for the words that follow."""
        timings = reply.timings
        started = time.perf_counter()
        chunker = SentenceChunker()
        whole_reply: list[str] = []
        repetition = LoopGuard()

        def emit(item: str | Line) -> None:
            if isinstance(item, str):
                if timings.llm_first_sentence is None:
                    timings.llm_first_sentence = time.perf_counter() - started
                if not self.streaming:
                    whole_reply.append(item)
                    return
            elif whole_reply:
                sentences.put_nowait(" ".join(whole_reply))
                whole_reply.clear()
            sentences.put_nowait(item)

        try:
            messages = prompt
            for round_ in range(MAX_TOOL_ROUNDS + 1):
                tools = self.tools.specs if self.tools is not None and round_ < MAX_TOOL_ROUNDS else []
                said: list[str] = []
                cut_short = False  # this round's text reached the token limit
                calls: list[ToolCall] = []
                running: list[asyncio.Task[ToolResult]] = []
                try:
                    with self.observers.watch("llm"):
                        # Closed at once when the reply stops early, so the model stops writing too.
                        async with contextlib.aclosing(self.chat.stream(messages, key=self.call_sid,
                                                                        tools=tools)) as stream:
                            async for event in stream:
                                if timings.llm_first_token is None:
                                    timings.llm_first_token = time.perf_counter() - started
                                if isinstance(event, TextDelta):
                                    said.append(event.text)
                                    for sentence in chunker.push(event.text):
                                        if repetition.repeats(sentence):
                                            break
                                        emit(sentence)
                                    if repetition.found:
                                        break
                                elif isinstance(event, CutShort):
                                    cut_short = True
                                elif tools:  # run as soon as it is complete, while the model goes on
                                    calls.append(event)
                                    running.append(asyncio.create_task(self._run_tool(reply, event)))
                                else:
                                    log.warning("the model called tool %r, which it was not offered; ignored",
                                                event.name[:64])
                    # A reply cut off by the token limit ends at its last whole sentence: the caller does not hear
                    # half a thought (unless that is all there is).
                    tail = [] if repetition.found else [s for s in chunker.flush() if not repetition.repeats(s)]
                    if not (cut_short and timings.llm_first_sentence is not None):
                        for sentence in tail:
                            emit(sentence)
                    if repetition.found:
                        log.info("the model repeated itself; the reply ends before the repeat")
                        break
                    if not calls:
                        break
                    results = await self._tool_results(reply, running, emit)
                finally:
                    for task in running:
                        task.cancel()
                reply.action = next((r.action for r in results if r.action is not None), None)
                if reply.action is not None:
                    break
                if any(r.failed for r in results):
                    if line := self._line("tool_failed"):
                        emit(line)
                    break
                messages = [*messages, assistant_calls("".join(said), calls),
                            *({"role": "tool", "tool_call_id": r.call.id, "content": r.content} for r in results)]
            if whole_reply:
                sentences.put_nowait(" ".join(whole_reply))
        finally:
            sentences.put_nowait(None)

    async def _run_tool(self, reply: Reply, call: ToolCall) -> ToolResult:
        # A speculative reply may be dropped: nothing is done for the caller until they have finished.
        await reply.wait_for_commit()
        assert self.tools is not None
        return await self.tools.run(call, self.call_sid, self.caller_number)

    async def _tool_results(self, reply: Reply, running: list[asyncio.Task[ToolResult]],
                            emit: Callable[[str | Line], None]) -> list[ToolResult]:
        await reply.wait_for_commit()
        _, pending = await asyncio.wait(running, timeout=FILLER_AFTER_SECONDS)
        if pending and (line := self._line("wait")):
            emit(line)
        return [await task for task in running]

    def _line(self, name: str) -> Line | None:
        audio = self.phrases.audio.get(name)
        return Line(self.phrases.text[name], audio) if audio else None


class LoopGuard:
    """Notices a reply saying again what it already said: the model is looping, and the reply should end."""

    def __init__(self) -> None:
        self._said: set[str] = set()
        self.found = False

    def repeats(self, piece: str) -> bool:
        words = re.findall(r"\w+", piece.lower())
        if len(words) >= LOOP_MIN_WORDS:
            key = " ".join(words)
            self.found = self.found or key in self._said
            self._said.add(key)
        return self.found


def assistant_calls(text: str, calls: list[ToolCall]) -> Message:
    """The model's turn that called tools, in OpenAI's shape (the backends convert it where they must)."""
    return {"role": "assistant", "content": text or None,
            "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                           for c in calls]}
