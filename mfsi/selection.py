"""Finetuning data from debate records, without ground truth (except the STaR baseline).

    datasets = select(records, cfg.method, agents=cfg.agents, task=task, seed=seed,
                      critic_weight=cfg.finetune.critic_weight)
    sizes(datasets)  # {"gen0": {"n": 41, "gen": 41, "C-": 0, "C+": 0}, "critic0": {...}}

A debate record is one question: id, question, gold, responses[m][n], answers[m][n]
(parsed, None when unparseable), majorities[m], majority (final round), correct and
conversations[n] (agent n's whole chat). An example is

    {"id": "<question id>#<agent>/<gen|critic|rationalised>", "messages": [...],
     "loss_from_turn": 0 | 1, "kind": "gen" | "C-" | "C+"}

where loss_from_turn is the first assistant turn that carries loss: a critic
conversation starts with the generator's round-1 answer, which the critic must not learn.

Rules: an answer agrees with the majority when both are
parsed and task.equivalent says so, so unparsed answers never agree and a question
without a majority gives no data. Generator data is each agent's round-1 (prompt,
answer) that agrees. Critic data (debates of 2+ rounds) is each agent's whole
conversation whose final answer agrees: C- when its first answer did not (corrected),
C+ when it did (held). The critic set keeps every C- and adds round(|C-|(1-w)/w) C+
drawn with a seeded RNG (all C+ when there are fewer), so C- make up a share w of it;
w=1 gives C- only, w=0 all C+ and no C-.

Empty C- with 0 < w < 1: the critic set is empty and that critic keeps its weights for
this iteration (logged). The rule above gives 0 C+ there, and taking all C+ instead
would make the set jump from 2 examples at |C-| = 1 to every held conversation at
|C-| = 0, training a critic almost only to repeat itself, which is exactly what w exists
to limit. Set w=0 to train critics on held conversations alone.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Any

from mfsi.chat import Message, final_answer
from mfsi.errors import ConfigError, DataError
from mfsi.tasks import Problem, Task

log = logging.getLogger(__name__)

Record = dict[str, Any]
Example = dict[str, Any]

# Selections whose meaning fixes whether one generator/critic pair plays every agent.
NEEDS_SHARED = {"multiagent": False, "single_agent": True, "majority": True}


def agrees(task: Task, answer: str | None, majority: str | None) -> bool:
    return answer is not None and majority is not None and task.equivalent(answer, majority)


def _example(record: Record, agent: int, tag: str, messages: list[Message], kind: str) -> Example:
    return {
        "id": f"{record['id']}#{agent}/{tag}",
        "messages": [dict(m) for m in messages],
        "loss_from_turn": 1 if kind in ("C-", "C+") else 0,
        "kind": kind,
    }


def generator_examples(records: list[Record], agent: int, task: Task) -> list[Example]:
    """D_G(agent): round-1 (prompt, answer) pairs whose answer agrees with the majority."""
    return [
        _example(r, agent, "gen", r["conversations"][agent][:2], "gen")
        for r in records
        if agrees(task, r["answers"][0][agent], r["majority"])
    ]


def critic_examples(records: list[Record], agent: int, task: Task) -> tuple[list[Example], list[Example]]:
    """(C-, C+) for agent: whole conversations whose final answer agrees with the majority."""
    corrected, held = [], []
    for r in records:
        answers = [round_answers[agent] for round_answers in r["answers"]]
        if len(answers) < 2 or not agrees(task, answers[-1], r["majority"]):
            continue
        if agrees(task, answers[0], r["majority"]):
            held.append(_example(r, agent, "critic", r["conversations"][agent], "C+"))
        else:
            corrected.append(_example(r, agent, "critic", r["conversations"][agent], "C-"))
    return corrected, held


def sample_examples(task: Task, summarize: bool) -> list[Example]:
    """A generator and a critic example shaped as the selection makes them, with placeholder
    text: encoded at start-up to check, before any debate, that training can use the
    model's chat template."""
    problem = Problem("start-up check", "What is 1+1?", "2")
    answer = {"role": "assistant", "content": "1+1=2. \\boxed{2}"}
    others = task.summary_prompt(answer["content"]) if summarize else task.debate_prompt([answer["content"]])
    first = [*task.prompt(problem), answer]
    record = {"id": problem.id}
    return [
        _example(record, 0, "gen", first, "gen"),
        _example(record, 0, "critic", [*first, others, answer], "C-"),
    ]


def mix_critic(corrected: list[Example], held: list[Example], w: float, rng: random.Random) -> list[Example]:
    """All C- plus round(|C-|(1-w)/w) C+ chosen by rng (all C+ at w=0; none if C- is empty)."""
    if w == 0:
        return list(held)
    k = min(len(held), round(len(corrected) * (1 - w) / w))
    keep = sorted(rng.sample(range(len(held)), k))  # file order stays the debate order
    return corrected + [held[i] for i in keep]


def rationalisation_requests(records: list[Record], task: Task) -> list[tuple[str, int, list[Message]]]:
    """STaR: (question id, agent, hint prompt) for every round-1 answer that is wrong.

    The loop generates one response per request (with the adapter playing that agent)
    and passes {(question id, agent): text} to `star_examples` / `select`.
    """
    return [
        (r["id"], agent, task.hint_prompt(Problem(r["id"], r["question"], r["gold"])))
        for r in records
        for agent, answer in enumerate(r["answers"][0])
        if not task.is_correct(answer, r["gold"])
    ]


def star_examples(
    records: list[Record],
    agent: int,
    task: Task,
    rationalised: dict[tuple[str, int], str],
    opened: bool = False,
) -> list[Example]:
    """STaR (uses the gold answer): correct round-1 answers, plus rationalisations that
    reach the gold answer (read after their reasoning; `opened`: responses start inside it,
    mfsi.chat.final_answer), trained under the ORIGINAL prompt (the hint is not shown)."""
    examples = []
    for r in records:
        if task.is_correct(r["answers"][0][agent], r["gold"]):
            examples.append(_example(r, agent, "gen", r["conversations"][agent][:2], "gen"))
            continue
        text = rationalised.get((r["id"], agent))
        final = None if text is None else final_answer(text, opened)
        if final is not None and task.is_correct(task.extract_answer(final), r["gold"]):
            messages = [r["conversations"][agent][0], {"role": "assistant", "content": text}]
            examples.append(_example(r, agent, "rationalised", messages, "gen"))
    return examples


def _check(records: list[Record], agents: int) -> None:
    for r in records:
        if any(len(round_answers) != agents for round_answers in r["answers"]):
            raise DataError(
                f"debate record {r['id']!r} does not have {agents} agents' answers in every round"
            )


def select(
    records: list[Record],
    method: Any,
    *,
    agents: int,
    task: Task,
    seed: int,
    critic_weight: float = 0.5,
    rationalised: dict[tuple[str, int], str] | None = None,
    opened: bool = False,
) -> dict[str, list[Example]]:
    """Finetuning sets by adapter name for method.selection (cfg.method), as described above.

    method.shared=True pools all agents' data into gen0/critic0 (which play every agent);
    otherwise agent n's data goes to gen{n}/critic{n}. Critic sets exist only for the
    multiagent and single_agent selections with method.train_critics. Every adapter the
    method trains is a key, possibly with an empty list (nothing to learn this time).
    star needs `rationalised` (see rationalisation_requests; `opened`: responses start inside
    their reasoning, mfsi.chat.opens_reasoning); "none" selects nothing.
    """
    if method.selection == "none":
        return {}
    if NEEDS_SHARED.get(method.selection, method.shared) != method.shared:
        raise ConfigError(
            f"method.selection={method.selection} needs method.shared={NEEDS_SHARED[method.selection]}"
        )
    if method.selection == "star" and rationalised is None:
        raise ValueError("star selection needs the rationalised responses for rationalisation_requests()")
    _check(records, agents)
    groups = [list(range(agents))] if method.shared else [[n] for n in range(agents)]
    with_critics = method.train_critics and method.selection in ("multiagent", "single_agent")
    datasets: dict[str, list[Example]] = {}
    for slot, members in enumerate(groups):
        if method.selection == "star":
            datasets[f"gen{slot}"] = [
                e for n in members for e in star_examples(records, n, task, rationalised, opened)
            ]
        else:
            datasets[f"gen{slot}"] = [e for n in members for e in generator_examples(records, n, task)]
        if with_critics:
            corrected, held = [], []
            for n in members:
                c_minus, c_plus = critic_examples(records, n, task)
                corrected, held = corrected + c_minus, held + c_plus
            name = f"critic{slot}"
            datasets[name] = mix_critic(corrected, held, critic_weight, random.Random(f"{seed}/{name}"))
            if not corrected and held and 0 < critic_weight < 1:
                log.warning(
                    "%s: no corrected (C-) conversations, so no critic data (w=%s)", name, critic_weight
                )
            log.info(
                "%s: %d examples from %d C- and %d C+ (w=%s)",
                name,
                len(datasets[name]),
                len(corrected),
                len(held),
                critic_weight,
            )
    return datasets


def sizes(datasets: dict[str, list[Example]]) -> dict[str, dict[str, int]]:
    """Examples per adapter, in total (n = |D_G| or |D_C|) and by kind (gen, C-, C+)."""
    table = {}
    for name, examples in datasets.items():
        kinds = Counter(e["kind"] for e in examples)
        table[name] = {"n": len(examples), "gen": kinds["gen"], "C-": kinds["C-"], "C+": kinds["C+"]}
    return table
