"""Fixed phrases and farewells (no models)."""

from __future__ import annotations

import pytest

from voicepipe.conversation.phrases import is_goodbye


@pytest.mark.parametrize(("text", "language"), [
    ("Okay, goodbye.", "en"), ("Good-bye!", "en"), ("OK. Bye-bye.", "en"), ("Thanks, bye!", "en"),
    ("Thank you, good bye.", "en"), ("Well, that's all.", "en"), ("Adiós, gracias.", "es"), ("Vale, chao.", "es"),
    ("Hasta luego.", "es"), ("Bueno, eso es todo.", "es"),
])
def test_farewells_as_whisper_writes_them(text: str, language: str) -> None:
    assert is_goodbye(text, language)


@pytest.mark.parametrize(("text", "language"), [
    ("Okay.", "en"), ("Thank you.", "en"), ("I said goodbye to my old plan, I want a new one.", "en"),
    ("Bye, wait, one more thing.", "en"), ("Gracias.", "es"), ("Adiós a mi viejo plan.", "es"),
])
def test_a_mention_of_goodbye_is_not_a_farewell(text: str, language: str) -> None:
    assert not is_goodbye(text, language)


@pytest.mark.parametrize(("text", "language", "backchannel"), [
    ("Mm-hmm.", "en", True), ("MMM.", "en", True), ("Yeah, yeah.", "en", True), ("Uh-huh.", "en", True),
    ("Okay.", "en", True), ("Oh.", "en", True), ("Sí, vale.", "es", True), ("Ajá.", "es", True),
    ("Claro.", "es", True), ("Yes, I want the blue one.", "en", False), ("Stop.", "en", False),
    ("Wait, what?", "en", False), ("No, espera.", "es", False), ("", "en", False),
])
def test_backchannels_are_told_from_words_that_take_the_turn(text: str, language: str, backchannel: bool) -> None:
    from voicepipe.conversation.phrases import is_backchannel

    assert is_backchannel(text, language) is backchannel


def test_the_agents_own_words_heard_back_are_an_echo() -> None:
    from voicepipe.conversation.phrases import is_echo

    said = "Once upon a time, a brave little dragon guarded the village."
    assert is_echo("a brave little dragon", said)
    assert is_echo("Once upon a time.", said)
    assert not is_echo("dragon", said)  # one word is not enough to tell
    assert not is_echo("I want to book a table", said)
