"""Is the caller done? Asked at each short pause, from how they sound (Smart Turn) and what they said so far.

The audio model alone ends turns on rhetorical pauses, and whisper puts a period on fragments; the words still
carry cheap cues that a thought is unfinished: a trailing conjunction, preposition, article or filler, a comma,
a number or a spelling being read out. A turn that is not done is kept open; the turn-taking policy still ends
it after the maximum silence, so a caller who stops mid-thought gets an answer. Words whisper was unsure of
vouch for nothing: a dangling "del" heard as "mail" reads as complete.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import numpy as np

from voicepipe.engines.turn_model import TurnModel
from voicepipe.engines.turn_text import TextTurnModel

# Words that cannot end a finished thought (lower case, accents kept): always (a conjunction, an article, a
# filler), or unless whisper heard a question or an exclamation ("Who is it for?", "¡Para!").
OPEN_ENDINGS = {
    "en": {"and", "or", "but", "nor", "because", "cause", "unless", "although", "though", "whether", "than",
           "a", "an", "the", "my", "your", "our", "their", "its", "every", "each", "another", "i", "we", "they",
           "um", "uh", "er", "erm", "uhm", "hmm", "mm"},
    "es": {"y", "e", "o", "u", "ni", "pero", "sino", "que", "porque", "pues", "aunque", "mientras", "a", "al",
           "de", "del", "en", "con", "por", "sin", "hasta", "desde", "hacia", "contra", "según", "tras", "el",
           "la", "los", "las", "un", "unos", "unas", "lo", "mi", "mis", "tu", "tus", "su", "sus", "nuestro",
           "nuestra", "cada", "me", "te", "se", "nos", "le", "les", "este", "eh", "em", "mmm", "ehm"},
}
OPEN_UNLESS_ASKED = {
    "en": {"if", "when", "where", "who", "which", "whose", "since", "until", "to", "of", "for", "with", "from",
           "by", "at", "about", "into", "onto", "through", "between", "without", "like", "via", "per"},
    "es": {"como", "cuando", "donde", "cual", "quien", "entre", "para", "sobre"},
}
# A turn that begins with one of these and has no comma yet has only said its condition ("Unless you...").
OPEN_CLAUSES = {
    "en": {"unless", "although", "though", "if", "whether", "while", "whereas"},
    "es": {"aunque", "si", "mientras", "cuando"},
}
OPEN_PHRASES = {
    "en": ("you know", "i mean", "such as", "as well as", "in order", "so that", "rather than", "kind of",
           "sort of", "let me see", "let's see"),
    "es": ("es decir", "o sea", "de que", "a ver", "por ejemplo", "tal como", "así que", "ya que", "lo que"),
}
NUMBER_WORDS = {
    "en": {"zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"},
    "es": {"cero", "uno", "una", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez"},
}
ONE_LETTER_WORDS = {"en": {"i", "a"}, "es": {"a", "y", "o", "e", "u"}}  # not letters being spelled out
TOKEN = re.compile(r"[\w'’]+|[^\w\s]", re.UNICODE)
UNSURE_WORDS = "words unsure"  # the cue of a transcript whisper was unsure of (the turn ends at a longer silence)
READS_UNFINISHED = "reads unfinished"  # the text turn model's cue: the words read as a message cut short
LONGER_SILENCE_CUES = {UNSURE_WORDS, READS_UNFINISHED}  # soft cues: the turn ends at unsure_words_ms of silence


def unfinished_cue(text: str, language: str) -> str:
    """Why the words so far cannot be the whole turn, as a category ("" when nothing says so). Categories, not
    the words themselves: the cue goes into logs and metrics, where no transcript may go."""
    stripped = text.strip()
    words = _words(stripped)
    if not words:
        return "no words"
    if stripped.endswith((",", ";", ":", "-", "–", "…", "..")):
        return "trailing punctuation"
    phrase = " ".join(words)
    if any(phrase == p or phrase.endswith(" " + p) for p in OPEN_PHRASES[language]):
        return "open phrase"
    asked = stripped.endswith(("?", "!"))
    if words[-1] in OPEN_ENDINGS[language] or (words[-1] in OPEN_UNLESS_ASKED[language] and not asked):
        return "open word"
    if words[0] in OPEN_CLAUSES[language] and "," not in stripped and not asked:
        return "condition only"
    # A number being read out: two or more numbers in a row, or a group of digits that is not a year.
    numbers = []
    for word in reversed(words):
        if not (word.isdigit() or word in NUMBER_WORDS[language]):
            break
        numbers.append(word)
    if len(numbers) >= 2 or (numbers and numbers[0].isdigit() and len(numbers[0]) not in (1, 2, 4)):
        return "number"
    letters = 0
    for word in reversed(words):
        if len(word) != 1 or not word.isalpha() or word in ONE_LETTER_WORDS[language]:
            break
        letters += 1
    if letters >= 2:
        return "spelling"
    return ""


def words_unheard(earlier: str, text: str) -> bool:
    """The caller spoke on since `earlier` (the transcript at the utterance's previous pause), yet no words were
    added: whisper dropped the words at the end ("...my subscription, but" heard as "...my subscription."), and a
    short word after a pause is most often a conjunction or a filler, not an ending."""
    return bool(earlier) and len(_words(text)) <= len(_words(earlier))


def _words(text: str) -> list[str]:
    return [t for t in TOKEN.findall(text.lower()) if t[0].isalnum()]


@dataclass(frozen=True)
class Judgment:
    done: bool
    probability: float | None  # Smart Turn's P(done); None without the model
    cue: str  # the words' reason to keep the turn open, or ""
    logprob: float  # whisper's average log-probability per token of the words (how sure it was of them)
    seconds: float  # from the question to the answer (the model beside the transcription)
    text_probability: float | None = None  # the text turn model's P(the message ends here); None: not asked


class TurnJudge:
    def __init__(self, model: TurnModel | None, language: str, threshold: float = 0.5,
                 min_logprob: float = 0.0, text_model: TextTurnModel | None = None,
                 text_threshold: float = 0.0) -> None:
        """`min_logprob`: words transcribed with a lower average log-probability per token are unsure (0: none).
        `text_model`: asked of words no other cue keeps open; below `text_threshold` they read unfinished."""
        self.model = model
        self.language = language
        self.threshold = threshold
        self.min_logprob = min_logprob
        self.text_model = text_model
        self.text_threshold = text_threshold

    async def judge(self, audio: np.ndarray, transcript: Awaitable[tuple[str, float]], earlier: str = "") -> Judgment:
        """Ask the audio model (in a worker thread) while the words are transcribed, then weigh both. `transcript`:
        the words and whisper's average log-probability per token of them. `earlier`: the transcript at this
        utterance's previous pause, when the caller has spoken on since.

        Beside the transcription, not after it: measured on a 2-core CPU (2-3 runs each), after it whisper was
        ~40 ms faster but the LLM's first token ~60 ms slower (the model took the core it needs), so the reply
        came no sooner while the decision came ~100 ms later."""
        started = time.perf_counter()
        sound = asyncio.ensure_future(asyncio.to_thread(self.model.probability_done, audio)) if self.model else None
        try:
            text, logprob = await transcript
            probability = await sound if sound is not None else None
        finally:
            if sound is not None and not sound.done():
                sound.cancel()
        cue = unfinished_cue(text, self.language) or ("words unheard" if words_unheard(earlier, text) else "")
        if not cue and self.min_logprob < 0 and logprob < self.min_logprob:
            cue = UNSURE_WORDS
        text_probability = None
        if not cue and self.text_model is not None:
            text_probability = await asyncio.to_thread(self.text_model.probability_done, text)
            if text_probability < self.text_threshold:
                cue = READS_UNFINISHED
        done = not cue and (probability is None or probability >= self.threshold)
        return Judgment(done, probability, cue, logprob, time.perf_counter() - started, text_probability)
