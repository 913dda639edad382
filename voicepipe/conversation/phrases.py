"""The call's fixed lines in its language: their text (for the history) and their audio (synthesized once)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from voicepipe.audio.codec import pcm16_to_ulaw
from voicepipe.audio.resample import StreamResampler
from voicepipe.config import GOODBYES, PHRASES, Settings
from voicepipe.engines.tts import Synthesizer, synthesize
from voicepipe.telephony.playback import FRAME_BYTES, ULAW_SILENCE

# Words around a farewell that do not make it more than one ("Okay, thanks, bye!").
FAREWELL_FILLERS = ("ok", "okay", "well", "then", "thanks", "thank", "you", "vale", "bueno", "gracias", "pues", "so")


def line_audio(synthesizer: Synthesizer, text: str) -> bytes:
    """`text` spoken as whole-frame 8 kHz mu-law, ready to play on the line."""
    audio = StreamResampler(synthesizer.sample_rate, 8000).process(synthesize(synthesizer, text), last=True)
    ulaw = pcm16_to_ulaw(audio)
    return ulaw + ULAW_SILENCE * (-len(ulaw) % FRAME_BYTES)


# What a listener says to show they are listening, not to take the turn (hyphens count as spaces).
BACKCHANNELS = {
    "en": {"yeah", "yes", "yep", "yup", "ok", "okay", "mm hmm", "mhm", "mm", "hmm", "uh huh", "right", "sure",
           "i see", "got it", "alright", "all right", "oh", "ah", "uh", "um", "wow", "cool"},
    "es": {"sí", "si", "vale", "ajá", "aja", "ya", "claro", "bueno", "mhm", "mm", "ok", "okay", "de acuerdo",
           "entiendo", "eh", "ah", "oh", "ya veo", "perfecto"},
}


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower().replace("-", " ")).split()


def _hum(word: str) -> bool:
    """ "mmm", "hmm", "mhm": a closed-mouth sound, however whisper spells it."""
    return len(word) >= 2 and set(word) <= {"m", "h"}


def is_backchannel(text: str, language: str) -> bool:
    """ "Mm-hmm.", "Yeah, yeah.", "Sí, vale.": every piece of the turn is a listener's sound."""
    pieces = [_words(p) for p in re.split(r"[,.!?;…]+", text.lower().replace("-", " "))]
    pieces = [words for words in pieces if words]
    return bool(pieces) and all(" ".join(words) in BACKCHANNELS[language] or all(_hum(w) for w in words)
                                for words in pieces)


def is_echo(text: str, agent_text: str) -> bool:
    """The caller's words are the agent's own, heard back (a speakerphone): most of them are in what it said."""
    heard, said = _words(text), set(_words(agent_text))
    return len(heard) >= 2 and sum(w in said for w in heard) >= 0.7 * len(heard)


def is_goodbye(text: str, language: str) -> bool:
    """True when the caller's whole turn is a farewell ("Okay, bye!"), not a sentence that mentions one."""
    words = [w for w in _words(text) if w not in FAREWELL_FILLERS]
    return bool(words) and " ".join(words) in GOODBYES[language]


@dataclass(frozen=True)
class Phrases:
    """Lines by name: greeting, reprompt, goodbye (silence), closing, max_duration, apology, shutdown."""

    language: str
    text: dict[str, str]
    audio: dict[str, bytes]
    dtmf_template: str = "{digits}"

    def dtmf(self, digits: str) -> str:
        """The text a key press reaches the model as."""
        return self.dtmf_template.format(digits=digits)

    def is_goodbye(self, text: str) -> bool:
        return is_goodbye(text, self.language)

    def is_false_alarm(self, text: str, agent_text: str) -> bool:
        """Speech over the agent that does not take the turn: no words, a backchannel, or the agent's echo."""
        return not text.strip() or is_backchannel(text, self.language) or is_echo(text, agent_text)


def phrase_texts(settings: Settings) -> dict[str, str]:
    lines = {"greeting": settings.greeting, **PHRASES[settings.language]}
    lines.pop("dtmf")  # a template for the model, not a line to speak
    return lines


def prepare_phrases(settings: Settings, synthesizer: Synthesizer) -> Phrases:
    """Blocking: synthesizes every line once, at start-up, so that no call waits for one."""
    texts = phrase_texts(settings)
    return Phrases(settings.language, texts, {name: line_audio(synthesizer, text) for name, text in texts.items()},
                   PHRASES[settings.language]["dtmf"])
