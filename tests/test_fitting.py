"""Cutting conversations to the context: ranks in order, one common length, middles out."""

from mfsi.fitting import CUT, Piece, fit, reply, shorten

QUESTION = {"role": "user", "content": "Q" * 50}


def ask(texts):
    return {"role": "user", "content": "Others: " + " | ".join(texts) + " Update your answer."}


def characters(messages) -> int:
    return sum(len(m["content"]) for m in messages)


def conversation(own: str, others: tuple[str, ...]) -> list[Piece]:
    return [Piece.fixed([QUESTION]), Piece(reply, (own,), rank=2), Piece(ask, others, rank=1)]


def test_shorten_keeps_the_beginning_and_the_end():
    assert shorten("abcdefghij", 4) == "ab" + CUT + "ij"
    assert shorten("abcdefghij", 5) == "abc" + CUT + "ij"
    assert shorten("abc", 4) == "abc" and shorten("abc", None) == "abc"
    assert shorten("abc", 0) == CUT


def test_a_conversation_that_fits_is_not_cut():
    pieces = conversation("A" * 30, ("B" * 30, "C" * 30))
    messages, cut = fit(pieces, characters, room=10_000)
    assert cut == 0 and messages == [m for p in pieces for m in p.messages()]


def test_the_others_answers_lose_their_middles_to_one_common_length_first():
    own, long, short = "A" * 100, "B" * 60 + "b" * 60, "C" * 20
    pieces = conversation(own, (long, short))
    whole = characters([m for p in pieces for m in p.messages()])
    messages, cut = fit(pieces, characters, room=whole - 50)
    assert messages[0] == QUESTION and messages[1]["content"] == own  # own answer kept whole
    shown = messages[2]["content"]
    assert shown.startswith("Others: BBB") and shown.endswith("| " + short + " Update your answer.")
    kept = shown[len("Others: ") : shown.index(" | ")]
    assert kept.startswith("B" * 10) and kept.endswith("b" * 10) and CUT in kept  # middle out
    assert characters(messages) <= whole - 50 and cut == whole - characters(messages)
    # The longest that fits: one character more would not.
    longer = [
        Piece.fixed([QUESTION]),
        Piece(reply, (own,), 2),
        Piece(ask, (shorten(long, len(kept) - len(CUT) + 1), short), 1),
    ]
    assert characters([m for p in longer for m in p.messages()]) > whole - 50


def test_own_answers_are_cut_only_when_the_others_cut_to_nothing_are_not_enough():
    own, others = "A" * 100, ("B" * 100, "C" * 100)
    pieces = conversation(own, others)
    messages, _ = fit(pieces, characters, room=len(QUESTION["content"]) + 120)
    assert messages[2] == ask((CUT, CUT))
    assert CUT in messages[1]["content"] and messages[1]["content"].startswith("AAA")
    assert characters(messages) == len(QUESTION["content"]) + 120  # own answer: 68 of its 100 characters
    # Not even that fits: everything ranked is cut to nothing and the rest is left to the backend.
    messages, _ = fit(pieces, characters, room=10)
    assert messages == [QUESTION, reply((CUT,)), ask((CUT, CUT))]
