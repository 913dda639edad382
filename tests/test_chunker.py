from voicepipe.conversation.chunker import SentenceChunker, clean_for_speech


def run(deltas: list[str]) -> list[str]:
    chunker = SentenceChunker()
    pieces = [piece for delta in deltas for piece in chunker.push(delta)]
    return pieces + list(chunker.flush())


def test_sentences_are_released_as_soon_as_they_end() -> None:
    chunker = SentenceChunker()
    assert list(chunker.push("Hello there")) == []
    assert list(chunker.push("! How are")) == ["Hello there!"]
    assert list(chunker.push(" you? I am")) == ["How are you?"]
    assert list(chunker.flush()) == ["I am"]


def test_token_by_token_stream() -> None:
    text = "Paris is the capital of France. It is on the Seine! Anything else?"
    assert run(list(text)) == ["Paris is the capital of France.", "It is on the Seine!", "Anything else?"]


def test_abbreviations_and_list_numbers_do_not_split() -> None:
    assert run(["Dr. Smith lives on Main St. in town. Yes."]) == ["Dr. Smith lives on Main St. in town.", "Yes."]
    assert run(["1. Open the app. 2. Tap call."]) == ["1. Open the app.", "2. Tap call."]


def test_decimal_numbers_do_not_split() -> None:
    assert run(["It costs 3.50 dollars. Okay."]) == ["It costs 3.50 dollars.", "Okay."]


def test_first_clause_goes_early_but_later_ones_wait_for_more_words() -> None:
    pieces = run(["Well, let me think about that, because it is tricky, and then I will answer, okay."])
    assert pieces[0] == "Well, let me think about that,"
    assert pieces[1:] == ["because it is tricky, and then I will answer, okay."]


def test_spanish_punctuation() -> None:
    assert run(["¡Hola! ¿Cómo está usted? Bien."]) == ["¡Hola!", "¿Cómo está usted?", "Bien."]


def test_markup_is_not_spoken() -> None:
    assert clean_for_speech("**Bold** and `code` 😀 # title") == "Bold and code title"
    assert run(["* item one\n* item two"]) == ["item one item two"]


def test_a_sentence_that_ends_the_stream_so_far_goes_without_waiting_for_the_next_token() -> None:
    chunker = SentenceChunker()
    assert list(chunker.push("Sure, I can")) == []
    assert list(chunker.push(" help you.")) == ["Sure, I can help you."]  # the " What" that follows is not awaited
    assert list(chunker.push(" What is")) == []
    assert list(chunker.push(" your name?")) == ["What is your name?"]
    # Not yet ends: a number, an initial, an abbreviation may go on ("3.5", "U.S.", "Dr. Smith").
    for text in ("It costs 3.", "We ship to the U.", "We ship to the U.S.", "Ask Dr.", "Call me at 5 p.m."):
        assert list(SentenceChunker().push(text)) == [], text
    # An ellipsis streamed a dot at a time goes at its first dot; the dots after it are not spoken as a piece.
    assert run(list("Well... let me see. Okay.")) == ["Well.", "let me see.", "Okay."]
    assert run(["Well", "...", " let me see."]) == ["Well...", "let me see."]
