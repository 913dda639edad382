import itertools

import numpy as np
import pytest

from tests.conftest import FIXTURES
from voicepipe.audio.turn import (
    FRAME_SAMPLES,
    Paused,
    Quieted,
    SpeechResumed,
    SpeechStarted,
    TurnDetector,
    TurnEnded,
    TurnSettings,
)

RATE = 8000


def feed_all(detector: TurnDetector, audio: np.ndarray, chunk: int = FRAME_SAMPLES) -> list[object]:
    events: list[object] = []
    for start in range(0, len(audio), chunk):
        events += detector.feed(audio[start : start + chunk])
    return events


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(RATE * seconds), dtype=np.int16)


def test_jfk_is_one_turn_with_a_long_end_of_turn(jfk_8k: np.ndarray) -> None:
    detector = TurnDetector(TurnSettings(end_of_turn_ms=1500))
    events = feed_all(detector, np.concatenate([jfk_8k, silence(2.0)]))
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert len(ended) == 1
    assert isinstance(events[0], SpeechStarted)
    # JFK pauses ~1 s between phrases: each pause is announced, and resumed from.
    assert sum(isinstance(e, Paused) for e in events) == sum(isinstance(e, SpeechResumed) for e in events) + 1
    # The turn holds all the speech (from the pre-roll to the end-of-turn silence).
    assert len(ended[0].audio) >= len(jfk_8k) - RATE
    assert 10_000 <= ended[0].speech_end_ms <= 11_000


def test_every_pause_is_heralded_by_a_quiet_moment_on_the_same_words(jfk_8k: np.ndarray) -> None:
    audio = np.concatenate([jfk_8k, silence(2.0)])
    events = feed_all(TurnDetector(TurnSettings(end_of_turn_ms=1500)), audio)
    quiet = {e.speech_end_ms: e.audio for e in events if isinstance(e, Quieted)}
    pauses = [e for e in events if isinstance(e, Paused)]
    settings = TurnSettings()
    for pause in pauses:  # the words up to transcribe_ms into the silence: what the pause has, minus its end
        early = quiet[pause.speech_end_ms]
        assert len(pause.audio) - len(early) == (settings.pause_ms - settings.transcribe_ms) * RATE // 1000
        assert np.array_equal(pause.audio[: len(early)], early)
    assert len(quiet) > len(pauses)  # and some quiet moments were gaps between words, spoken on from
    without = feed_all(TurnDetector(TurnSettings(end_of_turn_ms=1500, transcribe_ms=0)), audio)
    assert [e for e in without if isinstance(e, Quieted)] == []
    assert [type(e) for e in without] == [type(e) for e in events if not isinstance(e, Quieted)]


def test_short_end_of_turn_splits_at_the_pauses(jfk_8k: np.ndarray) -> None:
    events = feed_all(TurnDetector(TurnSettings(end_of_turn_ms=550)), np.concatenate([jfk_8k, silence(1.0)]))
    assert sum(isinstance(e, TurnEnded) for e in events) >= 3


def test_decisions_do_not_depend_on_chunk_size(jfk_8k: np.ndarray) -> None:
    audio = np.concatenate([jfk_8k, silence(1.0)])
    def summary(chunk: int) -> list[tuple[str, int]]:
        return [(type(e).__name__, getattr(e, "speech_end_ms", getattr(e, "at_ms", 0)))
                for e in feed_all(TurnDetector(), audio, chunk)]
    assert summary(160) == summary(4000) == summary(333)


def test_silence_and_quiet_noise_make_no_turn() -> None:
    rng = np.random.default_rng(1)
    quiet_noise = (rng.standard_normal(RATE * 3) * 30).astype(np.int16)  # about -61 dBFS: line hiss
    for audio in (silence(3.0), quiet_noise):
        assert feed_all(TurnDetector(), audio) == []


def test_a_click_is_not_a_turn(jfk_8k: np.ndarray) -> None:
    click = jfk_8k[int(0.5 * RATE) : int(0.65 * RATE)]  # 150 ms of speech-like sound
    events = feed_all(TurnDetector(TurnSettings(speech_start_ms=60)), np.concatenate([silence(0.5), click, silence(1.5)]))
    assert not any(isinstance(e, TurnEnded) for e in events)


def test_a_monologue_is_cut_at_the_maximum(jfk_8k: np.ndarray) -> None:
    detector = TurnDetector(TurnSettings(max_utterance_ms=3000, end_of_turn_ms=2000))
    ended = [e for e in feed_all(detector, jfk_8k) if isinstance(e, TurnEnded)]
    assert ended and len(ended[0].audio) <= 3.5 * RATE


@pytest.mark.models
def test_steady_noise_never_starts_a_turn_with_silero() -> None:
    from tests.conftest import make_noises
    from voicepipe.audio.vad import SileroStream, load_silero

    session = load_silero()
    false_turns = {}
    for name, noise in make_noises(seconds=4.0).items():
        detector = TurnDetector(TurnSettings(), SileroStream(session).feed)
        false_turns[name] = sum(isinstance(e, (SpeechStarted, TurnEnded)) for e in feed_all(detector, noise))
    assert false_turns == {"white": 0, "pink": 0, "hum": 0, "tone": 0}


@pytest.mark.models
def test_silero_hears_each_frame_as_it_arrives(jfk_8k: np.ndarray) -> None:
    # Its 32 ms windows complete every 1.6 frames; behind a resampler that hands out ~100 ms blocks (soxr's
    # streams), the probability changed once in 5 frames and each onset was heard up to 100 ms late.
    from voicepipe.audio.vad import SileroStream, load_silero

    stream = SileroStream(load_silero())
    speech = jfk_8k[: 4 * RATE]
    probabilities = [stream.feed(speech[i : i + 160]) for i in range(0, len(speech), 160)]
    changed = sum(a != b for a, b in itertools.pairwise(probabilities))
    assert changed >= 0.5 * len(probabilities), changed  # 5 frames in 8; behind soxr, 1 in 5


@pytest.mark.models
def test_speech_still_makes_a_turn_with_silero(jfk_8k: np.ndarray) -> None:
    from voicepipe.audio.vad import SileroStream, load_silero

    detector = TurnDetector(TurnSettings(end_of_turn_ms=1500), SileroStream(load_silero()).feed)
    ended = [e for e in feed_all(detector, np.concatenate([jfk_8k, silence(2.0)])) if isinstance(e, TurnEnded)]
    assert len(ended) == 1 and 10_000 <= ended[0].speech_end_ms <= 11_000


def test_speech_probability_vetoes_frames_unless_the_threshold_is_zero(jfk_8k: np.ndarray) -> None:
    # VOICEPIPE_SILERO_THRESHOLD=0 turns Silero off: its probability must then be ignored, not merely low.
    def never_speech(frame: np.ndarray) -> float:
        return 0.0

    audio = np.concatenate([jfk_8k, silence(2.0)])
    vetoed = feed_all(TurnDetector(TurnSettings(end_of_turn_ms=1500), never_speech), audio)
    off = feed_all(TurnDetector(TurnSettings(end_of_turn_ms=1500, silero_threshold=0), never_speech), audio)
    assert not any(isinstance(e, SpeechStarted) for e in vetoed)
    assert [type(e) for e in off if isinstance(e, (SpeechStarted, TurnEnded))][:2] == [SpeechStarted, TurnEnded]


@pytest.mark.models
@pytest.mark.parametrize("clip", ["en_picovoice_wakeword_pause_command.wav", "en_stp_weather_question.wav",
                                  "en_vosk_digits.wav", "es_fleurs_cierto_question.ogg", "jfk.flac",
                                  "en_ljspeech_two_clauses.wav"])
def test_the_simulated_caller_stops_speaking_where_the_voice_does(clip: str) -> None:
    # The simulator's "the caller has finished" is the start of every caller-view latency and of "talked over":
    # a recording's background noise after its last word must not count (the first four clips' noise is within
    # 35 dB of their peak to within 60 ms of their end), and its speech must (the last two end on quiet words).
    from voicepipe.audio.vad import SileroStream, load_silero
    from voicepipe.simulate import load_audio_8k, speech_bounds

    audio = load_audio_8k(FIXTURES / clip)
    detector = TurnDetector(TurnSettings(end_of_turn_ms=500), SileroStream(load_silero()).feed)
    ended = [e for e in feed_all(detector, np.concatenate([audio, silence(1.0)])) if isinstance(e, TurnEnded)]
    _, end_frame = speech_bounds(audio)
    assert abs(end_frame * 20 - ended[-1].speech_end_ms) <= 200, (end_frame * 20, ended[-1].speech_end_ms)
