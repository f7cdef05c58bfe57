"""Batched multiagent debate (Du et al. 2023, with summarisation), one record per question.

    records = run_debate(task, problems, backend, roles(3, False, society.adapters),
                         rounds=2, summarize=True, seed=0, style="critical", agent_ids=False,
                         share="answer")

Round 1: agent n's generator answers the question (told "You are agent n+1." first with
agent_ids, the unique-ID ablation). Round m > 1: its critic answers again, seeing its own
conversation so far plus one user message holding the other agents' round m-1 responses,
summarised by the base model (adapter None) or concatenated, and asking it to weigh them
as advice (style="critical") or to build on them (style="cooperative"). Every
agent of a round sees a snapshot of the previous round, never a same-round answer (the
official code updates agents in place and leaks). Each round is one batched backend call
over all questions x agents, plus one call for the summaries.

Reasoning models: a response is the whole generated text, its reasoning included; its
answer is parsed from what follows its reasoning (mfsi.chat.final_answer), and a response
whose reasoning never ended has no answer (it never votes, as an unparsed one). The other
agents and the summariser see the others' answers without their reasoning, and the agents
the summary without the summariser's (share="answer", as the reasoning-model templates
themselves drop reasoning from history), or the whole texts (share="full"); an agent's own
earlier turns are rendered by its template.

Prompts are built from pieces (mfsi.fitting) and cut by `backend.fit` when too long for
the context: the question and the instructions stay, the middles of the other agents'
answers (or of their summary) go first, then those of the agent's own earlier answers.

A record: {"id", "question", "gold", "responses"[m][n], "answers"[m][n] (parsed or None),
"majorities"[m], "majority" (= majorities[-1]), "correct", "conversations"[n] (each
agent's whole debate, uncut), "summaries"[m-1][n] (rounds m > 1 with summarisation:
{"request": the messages sent to the summariser, "summary"}; empty otherwise)}.
"""

from __future__ import annotations

import zlib
from functools import partial

from mfsi.chat import Message, final_answer
from mfsi.fitting import Piece, reply
from mfsi.tasks import BOXED, Problem, Task
from mfsi.voting import majority

# A lone agent has no one to debate with: it is asked to check its own answer instead.
REFLECT: Message = {
    "role": "user",
    "content": f"Can you double-check that your answer is correct? Give your final answer again. {BOXED}",
}


def seed_for(*parts) -> int:
    """A stable seed from parts such as (run seed, iteration, split): same inputs, same seed."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def shared(text: str, share: str, opened: bool = False) -> str:
    """What the other agents see of a response: all of it (share="full") or its answer
    without the reasoning (share="answer"; nothing when the reasoning never ended)."""
    return text if share == "full" else final_answer(text, opened) or ""


def followups(
    task: Task,
    problems: list[Problem],
    previous: list[list[str]],
    backend,
    summarize: bool,
    seed: int,
    style: str = "critical",
    share: str = "answer",
) -> tuple[list[list[Piece]], list[list[dict]]]:
    """The round m>1 user message for each (question, agent), from round m-1's responses as
    `shared` shows them, and for each question the summariser's requests and summaries (none
    without summarising)."""
    opened = backend.opens_reasoning
    seen = [[shared(r, share, opened) for r in prev] for prev in previous]
    others = [[tuple(r for k, r in enumerate(prev) if k != n) for n in range(len(prev))] for prev in seen]
    if not summarize or len(previous[0]) < 2:  # a lone agent has no others to summarise
        debate_prompt = partial(task.debate_prompt, style=style)
        asks = [
            [Piece(debate_prompt, o, rank=1) if o else Piece.fixed(REFLECT) for o in per_q]
            for per_q in others
        ]
        return asks, [[] for _ in problems]
    requests = [
        backend.fit([Piece(partial(task.summary_request, p), o, rank=1)])
        for p, per_q in zip(problems, others)
        for o in per_q
    ]
    summaries = backend.generate([(None, r) for r in requests], seed=seed, desc="summaries")
    agents = len(previous[0])
    asked = [{"request": r, "summary": s} for r, s in zip(requests, summaries)]
    asked = [asked[q * agents : (q + 1) * agents] for q in range(len(problems))]
    asks = [
        [
            Piece(lambda t: task.summary_prompt(t[0], style), (shared(a["summary"], share, opened),), rank=1)
            for a in per_q
        ]
        for per_q in asked
    ]
    return asks, asked


def run_debate(
    task: Task,
    problems: list[Problem],
    backend,
    roles: list[tuple[str | None, str | None]],
    rounds: int,
    summarize: bool,
    seed: int,
    style: str = "critical",
    agent_ids: bool = False,
    share: str = "answer",
) -> list[dict]:
    """Debate every problem with len(roles) agents for `rounds` rounds; see the module doc."""
    agents = len(roles)
    if not problems:
        return []
    conversations = [  # [q][n]
        [[Piece.fixed(task.prompt(p, n if agent_ids else None))] for n in range(agents)] for p in problems
    ]
    responses: list[list[list[str]]] = [[] for _ in problems]  # [q][m][n]
    summaries: list[list[list[dict]]] = [[] for _ in problems]  # [q][m-1][n]
    for m in range(rounds):
        if m > 0:
            previous = [r[m - 1] for r in responses]  # the snapshot every agent of round m sees
            asks, asked = followups(
                task, problems, previous, backend, summarize, seed_for(seed, m, "summaries"), style, share
            )
            conversations = [[c + [a] for c, a in zip(cs, ask)] for cs, ask in zip(conversations, asks)]
            for q, per_q in enumerate(asked):
                if per_q:
                    summaries[q].append(per_q)
        role = 0 if m == 0 else 1  # generator answers round 1, critic the rest
        requests = [(roles[n][role], backend.fit(c)) for cs in conversations for n, c in enumerate(cs)]
        texts = backend.generate(requests, seed=seed_for(seed, m), desc=f"debate round {m + 1}/{rounds}")
        for q in range(len(problems)):
            answered = texts[q * agents : (q + 1) * agents]
            responses[q].append(answered)
            conversations[q] = [c + [Piece(reply, (t,), rank=2)] for c, t in zip(conversations[q], answered)]
    return [
        record(
            task,
            p,
            r,
            [[m for piece in c for m in piece.messages()] for c in cs],
            s,
            seed,
            backend.opens_reasoning,
        )
        for p, r, cs, s in zip(problems, responses, conversations, summaries)
    ]


def parse(task: Task, text: str, opened: bool = False) -> str | None:
    """The answer of a response: parsed from what follows its reasoning; None when nothing
    parses or the reasoning never ended."""
    final = final_answer(text, opened)
    return None if final is None else task.extract_answer(final)


def record(
    task: Task,
    problem: Problem,
    responses: list[list[str]],
    conversations,
    summaries,
    seed: int,
    opened: bool = False,
) -> dict:
    """Parse every response (`opened`: responses start inside their reasoning), vote at every
    round, grade the final majority."""
    answers = [[parse(task, t, opened) for t in per_round] for per_round in responses]
    key = f"{seed}/{problem.id}"
    majorities = [majority(a, task.equivalent, key=f"{key}/{m}") for m, a in enumerate(answers)]
    return {
        "id": problem.id,
        "question": problem.question,
        "gold": problem.answer,
        "responses": responses,
        "answers": answers,
        "majorities": majorities,
        "majority": majorities[-1],
        "correct": task.is_correct(majorities[-1], problem.answer),
        "conversations": conversations,
        "summaries": summaries,
    }
