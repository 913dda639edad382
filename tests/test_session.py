"""The call session's logic with fake engines: speculation, barge-in and what was heard, DTMF, goodbye, faults.

The caller's audio is real recorded speech (JFK) through the real turn detector; transcription, the chat model
and synthesis are fakes, so that each test runs in well under a second and says exactly what happened."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fakes import (
    PHRASE_TEXT,
    REPLY,
    FakeChat,
    FakeTranscriber,
    Twilio,
    make_session,
    play_reply,
    settle,
    silence,
    speak,
    until,
)
from voicepipe.config import Settings
from voicepipe.conversation import session as session_module
from voicepipe.conversation.events import CallObserver
from voicepipe.conversation.session import CallSession
from voicepipe.engines.llm import ToolCall


async def test_a_speculative_reply_plays_only_once_the_turn_ends(
    unit_settings: Settings, jfk_clause: np.ndarray
) -> None:
    stt = FakeTranscriber("And so my fellow Americans.")
    chat = FakeChat()
    session, twilio, turns = make_session(unit_settings, stt, chat)
    await speak(session, np.concatenate([jfk_clause, silence(0.3)]))  # a 200 ms pause: work starts early
    await until(lambda: chat.finished)
    assert len(stt.heard) == 1 and not twilio.events("media")  # transcribed and answered, but nothing sent
    await speak(session, silence(0.4))  # now past the 550 ms end of turn
    await play_reply(session, twilio)
    assert len(stt.heard) == 1  # the speculative transcription was the one used
    assert [m["role"] for m in session.history] == ["system", "user", "assistant"]
    assert session.history[-1]["content"] == REPLY
    (timings,) = turns.finished
    assert timings.speculative and timings.turn == 1 and not timings.interrupted
    assert twilio.marks("t1s1.") and twilio.marks("t1s3.")  # a mark per 200 ms of each sentence
    await session.close()


async def test_speech_after_a_pause_voids_the_speculation(unit_settings: Settings, jfk_8k: np.ndarray) -> None:
    stt = FakeTranscriber("And so my fellow", "And so my fellow Americans, ask not.")
    chat = FakeChat()
    session, twilio, _ = make_session(unit_settings, stt, chat)
    # JFK pauses 0.56 s mid-phrase at 7.64 s (a Paused, then speech again): one turn, not two.
    await speak(session, jfk_8k[int(5.2 * 8000) : int(7.95 * 8000)])
    await until(lambda: chat.prompts)  # the speculative reply is under way...
    assert len(stt.heard) == 1
    await speak(session, np.concatenate([jfk_8k[int(7.95 * 8000) :], silence(1.0)]))  # ...when he goes on
    await play_reply(session, twilio)
    assert len(stt.heard) >= 2 and stt.heard[-1] > stt.heard[0]  # the turn's audio grew past the first pause
    assert [m["role"] for m in session.history].count("user") == 1
    assert session.history[1]["content"] == "And so my fellow Americans, ask not."
    assert chat.prompts[-1][-1]["content"] == "And so my fellow Americans, ask not."
    assert chat.finished == 1  # the voided speculation's stream was stopped
    assert not twilio.marks("t0")  # and nothing of it was played (replies get their turn number at commit)
    await session.close()


async def play_first_sentence_and_a_bit(session: CallSession, twilio: Twilio) -> None:
    """Twilio plays the reply's first sentence whole and 200 ms of the second."""
    for _ in range(300):
        await settle(0.01)
        twilio.play(session, "t1s1.")
        if twilio.marks("t1s2."):
            break
    assert twilio.play(session, "t1s2.", count=1) == 1
    await settle()


async def test_an_interruption_holds_at_once_then_keeps_only_what_was_heard(
    unit_settings: Settings, jfk_clause: np.ndarray, jfk_8k: np.ndarray
) -> None:
    stt = FakeTranscriber("And so my fellow Americans.", "I have another question about my account.")
    chat = FakeChat()
    session, twilio, turns = make_session(unit_settings, stt, chat)
    await speak(session, np.concatenate([jfk_clause, silence(0.7)]))
    await play_first_sentence_and_a_bit(session, twilio)
    onset = jfk_8k[int(3.2 * 8000) : int(3.5 * 8000)]  # 3.28 s: the caller starts talking over the agent
    await speak(session, onset)
    assert twilio.events("clear") and session.speaker.held  # held within the first 120 ms of voiced speech
    await speak(session, np.concatenate([jfk_8k[int(3.5 * 8000) : int(4.5 * 8000)], silence(0.3)]))
    await until(lambda: turns.finished)  # the words took the turn: the reply stopped and reports its turn
    second = "The second sentence has quite a few more words in it.".split()
    heard_words = round(len(second) * 200 / 700)  # 200 ms of its ~700 ms (with the 100 ms breath before it)
    assert session.history[-1] == {"role": "assistant",
                                   "content": "First sentence is here. " + " ".join(second[:heard_words]) + "…"}
    (timings,) = turns.finished
    assert timings.interrupted and timings.barge_in is not None and timings.false_alarms == 0
    assert not twilio.marks("t1s3.") and not session.speaker.held  # nothing more of that reply went out
    # The caller's new words were answered knowing the turn before, as far as they heard it: its prompt was made
    # while that turn was still held, not yet in the history.
    await until(lambda: len(chat.prompts) == 2)
    assert chat.prompts[-1][1:] == [*session.history[1:], {"role": "user", "content": "I have another question about my account."}]
    await session.close()


@pytest.mark.parametrize(("sound", "heard"), [
    ("cough", ""),  # 0.2 s of speech-like sound: too short for words
    ("backchannel", "Mm-hmm."),
    ("backchannel", "Yeah, yeah."),
    ("echo", "The second sentence has quite"),  # the agent's own words through a speakerphone
])
async def test_a_false_alarm_resumes_where_the_caller_stopped_hearing(
    unit_settings: Settings, jfk_clause: np.ndarray, jfk_8k: np.ndarray, sound: str, heard: str
) -> None:
    session, twilio, turns = make_session(unit_settings, FakeTranscriber("And so my fellow Americans.", heard))
    await speak(session, np.concatenate([jfk_clause, silence(0.7)]))
    await play_first_sentence_and_a_bit(session, twilio)
    seconds = 0.2 if sound == "cough" else 0.6
    await speak(session, np.concatenate([jfk_8k[int(3.28 * 8000) : int((3.28 + seconds) * 8000)], silence(0.3)]))
    assert twilio.events("clear")  # it held...
    await until(lambda: session.floor._resume_at_ms is not None)  # judged a false alarm, at the pause
    media_sent = len(twilio.events("media"))
    await speak(session, silence(0.2))
    assert len(twilio.events("media")) == media_sent  # still quiet: the caller might go on
    await speak(session, silence(0.2))  # 600 ms of quiet after the sound
    await play_reply(session, twilio)  # ...and then it went on to the end
    (timings,) = turns.finished
    assert timings.false_alarms == 1 and not timings.interrupted
    assert session.history[-1] == {"role": "assistant", "content": REPLY}  # all of it was heard
    assert [m["role"] for m in session.history].count("user") == 1  # the sound was no turn
    second_sentence = [n for n in twilio.marks("t1s2.")]
    assert len(second_sentence) > 4  # its cut-off rest was sent again after the clear (4 chunks once)
    assert twilio.marks("t1s3.")
    await session.close()


async def test_keys_become_one_typed_turn_and_stop_the_agent(
    unit_settings: Settings, jfk_clause: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "DTMF_GAP_SECONDS", 0.05)
    chat = FakeChat()
    session, twilio, _ = make_session(unit_settings, FakeTranscriber("And so my fellow Americans."), chat)
    await speak(session, np.concatenate([jfk_clause, silence(0.7)]))
    await until(lambda: twilio.events("media"))
    assert session.agent_speaking
    await session.handle_dtmf("1")
    await session.handle_dtmf("2")
    assert twilio.events("clear")  # the first key stopped the agent
    await until(lambda: len(chat.prompts) == 2)
    await play_reply(session, twilio)
    typed = "(The caller pressed 1 2 on the phone keypad.)"
    assert chat.prompts[-1][-1] == {"role": "user", "content": typed}
    assert [m["content"] for m in session.history if m["role"] == "user"][-1] == typed
    await session.close()


async def test_a_farewell_says_the_closing_line_and_hangs_up(unit_settings: Settings, jfk_clause: np.ndarray) -> None:
    hang_ups: list[str] = []
    chat = FakeChat()
    session, twilio, _ = make_session(unit_settings, FakeTranscriber("Okay, bye!"), chat, hang_ups)
    await speak(session, np.concatenate([jfk_clause, silence(0.7)]))
    for _ in range(300):
        await settle(0.01)
        twilio.play(session)
        if hang_ups:
            break
    assert hang_ups and session.end_reason == "closing" and not chat.prompts
    assert session.history[-2:] == [{"role": "user", "content": "Okay, bye!"},
                                    {"role": "assistant", "content": PHRASE_TEXT["closing"]}]
    await session.close()


async def test_a_model_fault_is_an_apology(unit_settings: Settings, jfk_clause: np.ndarray) -> None:
    session, twilio, turns = make_session(unit_settings, FakeTranscriber("x", fail=True))
    failures: list[str] = []

    class Failures(CallObserver):
        def stage_failed(self, stage: str, error: BaseException) -> None:
            failures.append(stage)

    session.observers.add(Failures())
    await speak(session, np.concatenate([jfk_clause, silence(0.3)]))
    await until(lambda: failures)  # the speculative reply fails...
    await speak(session, silence(0.4))  # ...so the ended turn gets a fresh try, which fails too
    await until(lambda: twilio.marks("t1apology."))
    assert twilio.marks("t1apology.")
    assert failures == ["stt", "stt"]  # the failed speculation, then the committed turn's own try
    assert not turns.finished  # no words, so no turn to report
    await session.close()


async def test_a_tool_call_without_tools_is_ignored_and_the_text_still_spoken(
    unit_settings: Settings, jfk_clause: np.ndarray
) -> None:
    chat = FakeChat(extra=[ToolCall("call_1", "transfer_call", "{}")])
    session, twilio, _ = make_session(unit_settings, FakeTranscriber("Put me through."), chat)
    await speak(session, np.concatenate([jfk_clause, silence(0.7)]))
    await play_reply(session, twilio)
    assert session.history[-1]["content"] == REPLY
    await session.close()


async def test_a_short_word_then_more_words_is_an_interruption_not_a_false_alarm(
    unit_settings: Settings, jfk_clause: np.ndarray, jfk_8k: np.ndarray
) -> None:
    # "But... only after this month": the short word alone is too short for a turn; the agent must not resume
    # into the caller's pause before they go on.
    stt = FakeTranscriber("And so my fellow Americans.", "Ask not what your country can do.")
    session, twilio, turns = make_session(unit_settings, stt)
    await speak(session, np.concatenate([jfk_clause, silence(0.7)]))
    await play_first_sentence_and_a_bit(session, twilio)
    await speak(session, np.concatenate([jfk_8k[int(3.28 * 8000) : int(3.48 * 8000)], silence(0.45)]))
    assert twilio.events("clear")
    held_at = len(twilio.sent)
    await speak(session, np.concatenate([jfk_8k[int(3.28 * 8000) : int(4.4 * 8000)], silence(0.3)]))
    await until(lambda: turns.finished)
    assert not [m for m in twilio.sent[held_at:] if m["event"] == "media"]  # it never resumed in between
    assert turns.finished[0].interrupted and turns.finished[0].false_alarms == 0
    await session.close()


async def test_a_sound_too_short_to_start_an_utterance_holds_the_agent_then_it_goes_on(
    unit_settings: Settings, jfk_clause: np.ndarray, jfk_8k: np.ndarray
) -> None:
    # The agent holds on 80 ms of voiced sound, before the detector has an utterance at all (it needs 120 ms):
    # if none follows, nothing else would ever settle the hold, so the reply resumes after the quiet.
    session, twilio, turns = make_session(unit_settings, FakeTranscriber("And so my fellow Americans."))
    await speak(session, np.concatenate([jfk_clause, silence(0.7)]))
    await play_first_sentence_and_a_bit(session, twilio)
    await speak(session, jfk_8k[int(3.28 * 8000) : int(3.38 * 8000)])  # 100 ms of a word
    assert twilio.events("clear") and session.speaker.held and not session.turn_taking.caller_speaking
    await speak(session, silence(0.7))
    await play_reply(session, twilio)
    (timings,) = turns.finished
    assert timings.false_alarms == 1 and not timings.interrupted and timings.barge_in is not None
    assert session.history[-1] == {"role": "assistant", "content": REPLY}
    await session.close()


@pytest.mark.parametrize(("reply", "spoken"), [
    ("First sentence is here. The second sentence has quite a few", "First sentence is here."),
    ("A single long thought that ran into the limit and", "A single long thought that ran into the limit and"),
])
async def test_a_reply_cut_off_by_the_token_limit_ends_at_its_last_whole_sentence(
    unit_settings: Settings, jfk_clause: np.ndarray, reply: str, spoken: str
) -> None:
    # Half a sentence is not said, unless it is all the model wrote (then it is better than silence).
    session, twilio, _ = make_session(unit_settings, FakeTranscriber("And so my fellow Americans."),
                                      FakeChat(reply, cut_short=True))
    await speak(session, np.concatenate([jfk_clause, silence(0.7)]))
    await play_reply(session, twilio)
    assert session.history[-1] == {"role": "assistant", "content": spoken}
    await session.close()


@pytest.mark.parametrize(("reply", "spoken", "finished"), [
    ("Sorry for any misunderstanding. Sorry for any misunderstanding. Sorry for any misunderstanding.",
     "Sorry for any misunderstanding.", 0),
    ("We open at nine. Sorry, we open at nine, not ten. We open at nine.",
     "We open at nine. Sorry, we open at nine, not ten.", 0),
    ("No. No, that is not possible. No.", "No. No, that is not possible. No.", 1),
])
async def test_a_reply_that_repeats_itself_ends_before_the_repeat(
    unit_settings: Settings, jfk_clause: np.ndarray, reply: str, spoken: str, finished: int
) -> None:
    # A looping model is stopped at the first sentence it says again, so the loop reaches neither the caller nor
    # the history (where the model would copy it into its next replies); a short "No." may come back.
    chat = FakeChat(reply)
    session, twilio, _ = make_session(unit_settings, FakeTranscriber("And so my fellow Americans."), chat)
    await speak(session, np.concatenate([jfk_clause, silence(0.7)]))
    await play_reply(session, twilio)
    assert session.history[-1] == {"role": "assistant", "content": spoken}
    assert chat.finished == finished  # the model was stopped, not left to write to its limit
    await session.close()
