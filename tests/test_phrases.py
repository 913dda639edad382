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
