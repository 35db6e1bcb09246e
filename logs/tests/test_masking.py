"""Secret masking (logs.masking): whole texts and streams split anywhere."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from logs.masking import MASK, Masker, mask, maskable

SECRET = "hunter2-hunter2"


def feed_all(masker: Masker, pieces: list[str]) -> str:
    return "".join(masker.feed(piece) for piece in pieces) + masker.finish()


def test_every_occurrence_of_a_masked_value_is_replaced():
    assert mask(f"token={SECRET} again {SECRET}\n", [SECRET]) == f"token={MASK} again {MASK}\n"


def test_values_shorter_than_eight_characters_are_not_masked():
    assert maskable(["short", "1234567", "12345678"]) == ["12345678"]
    assert mask("password 1234567", ["1234567"]) == "password 1234567"


def test_of_two_secrets_starting_at_the_same_place_the_longer_is_masked():
    assert mask("abcdefghijkl", ["abcdefgh", "abcdefghijkl"]) == MASK


def test_a_secret_split_across_two_writes_is_masked():
    masker = Masker([SECRET])

    first = masker.feed("export TOKEN=hunter2-hun")
    second = masker.feed("ter2\nnext line\n")

    assert first == "export TOKEN="  # the possible beginning of the secret is held back
    assert first + second == f"export TOKEN={MASK}\nnext line\n"


def test_text_that_only_looks_like_the_start_of_a_secret_is_released_by_the_next_write():
    masker = Masker([SECRET])

    assert masker.feed("hunter") == ""
    assert masker.feed(" gatherer\n") == "hunter gatherer\n"


def test_the_end_of_the_stream_releases_what_was_held_back():
    masker = Masker([SECRET])

    assert masker.feed("ends with hunter2") == "ends with "
    assert masker.finish() == "hunter2"


def test_without_values_nothing_is_held_back():
    assert Masker([]).feed("hunter2-hun") == "hunter2-hun"


secrets_strategy = st.lists(st.text(alphabet="abc", min_size=8, max_size=12), min_size=1, max_size=3)
text_strategy = st.text(alphabet="abcx\n", max_size=80)


@st.composite
def texts_and_splits(draw):
    values = draw(secrets_strategy)
    # Texts built around the secrets, so that they really occur (and overlap and repeat).
    parts = draw(st.lists(st.one_of(text_strategy, st.sampled_from(values)), max_size=8))
    text = "".join(parts)
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(text)), max_size=10)))
    pieces, previous = [], 0
    for cut in [*cuts, len(text)]:
        pieces.append(text[previous:cut])
        previous = cut
    return values, text, pieces


@given(texts_and_splits())
def test_a_stream_split_anywhere_is_masked_exactly_as_the_whole_text(case):
    values, text, pieces = case

    assert feed_all(Masker(values), pieces) == mask(text, values)


@given(texts_and_splits())
def test_no_masked_value_survives_any_split(case):
    values, _, pieces = case

    shipped = feed_all(Masker(values), pieces)

    # The alphabet of secrets (a, b, c) cannot form "[MASKED]", so any survivor would be a leak.
    assert not any(value in shipped for value in values)
