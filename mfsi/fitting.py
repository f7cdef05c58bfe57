"""Fitting a conversation into the context: what a cut keeps and what goes.

    pieces = [Piece.fixed(task.prompt(problem)), Piece(reply, (own,), rank=2),
              Piece(task.debate_prompt, others, rank=1)]
    messages, cut = fit(pieces, count=backend.count, room=backend.room)

A conversation is built from pieces: message(s) made from texts that may be shortened.
Rank 0 is never cut (the system prompt, the question, the instructions around the texts).
When the conversation takes more than `room` tokens, the middles of the rank-1 texts go
first (in a debate: the other agents' answers), all cut to one common length, the longest
that fits; if cutting them to nothing is not enough, rank 2 follows (the agent's own
earlier answers), and so on. A cut text keeps its beginning and its end around CUT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mfsi.chat import Message

CUT = " [...] "


@dataclass(frozen=True)
class Piece:
    """Message(s) made from texts by `make`; `rank` orders which texts are cut first (0: never)."""

    make: Callable[[Sequence[str]], Message | list[Message]]
    texts: tuple[str, ...] = ()
    rank: int = 0

    @staticmethod
    def fixed(messages: Message | list[Message]) -> Piece:
        return Piece(lambda _: messages)

    def messages(self, limit: int | None = None) -> list[Message]:
        """The messages, each text cut to at most `limit` characters (None: whole)."""
        made = self.make(tuple(shorten(t, limit) for t in self.texts))
        return made if isinstance(made, list) else [made]


def reply(texts: Sequence[str]) -> Message:
    """An assistant turn: the piece of an answer, `Piece(reply, (text,), rank)`."""
    return {"role": "assistant", "content": texts[0]}


def shorten(text: str, limit: int | None) -> str:
    """text with its middle replaced by CUT when it is longer than `limit` characters: the
    first and last limit/2 characters stay."""
    if limit is None or len(text) <= limit:
        return text
    head, tail = (limit + 1) // 2, limit // 2
    return text[:head] + CUT + text[len(text) - tail :]


def fit(
    pieces: Sequence[Piece], count: Callable[[list[Message]], int], room: int
) -> tuple[list[Message], int]:
    """The conversation, cut as little as the module doc says to take at most `room` tokens
    by `count`, and how many tokens went. If every ranked text cut to nothing is still too
    long, that is returned: the backend then cuts its tokens."""
    limits: dict[int, int] = {}

    def build() -> list[Message]:
        return [m for p in pieces for m in p.messages(limits.get(p.rank))]

    whole = count(build())
    if whole <= room:
        return build(), 0
    for rank in sorted({p.rank for p in pieces if p.rank and p.texts}):
        limits[rank] = 0
        if count(build()) > room:
            continue  # these texts are not enough: all of their middles go, then the next rank's
        fits, too_long = 0, max(len(t) for p in pieces if p.rank == rank for t in p.texts)
        while too_long - fits > 1:
            limits[rank] = (fits + too_long) // 2
            if count(build()) <= room:
                fits = limits[rank]
            else:
                too_long = limits[rank]
        limits[rank] = fits
        break
    messages = build()
    return messages, whole - count(messages)
