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


def is_goodbye(text: str, language: str) -> bool:
    """True when the caller's whole turn is a farewell ("Okay, bye!"), not a sentence that mentions one."""
    words = re.sub(r"[^\w\s']", " ", text.lower()).split()
    words = [w for w in words if w not in FAREWELL_FILLERS]
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


def phrase_texts(settings: Settings) -> dict[str, str]:
    lines = {"greeting": settings.greeting, **PHRASES[settings.language]}
    lines.pop("dtmf")  # a template for the model, not a line to speak
    return lines


def prepare_phrases(settings: Settings, synthesizer: Synthesizer) -> Phrases:
    """Blocking: synthesizes every line once, at start-up, so that no call waits for one."""
    texts = phrase_texts(settings)
    return Phrases(settings.language, texts, {name: line_audio(synthesizer, text) for name, text in texts.items()},
                   PHRASES[settings.language]["dtmf"])
