"""Finetuning-data selection on hand-made debate records (arithmetic grading)."""

import pytest

from mfsi.config import MethodConfig
from mfsi.errors import ConfigError, DataError
from mfsi.selection import rationalisation_requests, select, sizes, star_examples
from mfsi.tasks import Arithmetic

TASK = Arithmetic({"train": [], "eval": []})


def record(id_, answers, majority, gold="2"):
    """A debate record; answers[m][n] is agent n's parsed round-m answer."""
    rounds, agents = len(answers), len(answers[0])
    responses = [[f"agent {n} says \\boxed{{{a}}}" for n, a in enumerate(row)] for row in answers]
    conversations = [
        [
            message
            for m in range(rounds)
            for message in (
                {"role": "user", "content": f"{id_} round {m}"},
                {"role": "assistant", "content": responses[m][n]},
            )
        ]
        for n in range(agents)
    ]
    return {
        "id": id_,
        "question": f"question {id_}",
        "gold": gold,
        "responses": responses,
        "answers": answers,
        "majorities": [majority] * rounds,
        "majority": majority,
        "correct": majority == gold,
        "conversations": conversations,
    }


# Agent 0 held "2"; agent 1 was corrected from "3"; agent 2 was corrected from an
# unparsed answer; "2.0" agrees with "2" through the task's grader.
AGREE = record("agree", [["2", "3", None], ["2.0", "2", "2"]], "2")
# Agent 2 ends on "5": no critic data for it, though its round-1 answer agrees.
DRIFT = record("drift", [["2", "2", "2"], ["2", "2", "5"]], "2")
NO_MAJORITY = record("none", [["1", "3", None], ["1", "3", None]], None)
RECORDS = [AGREE, DRIFT, NO_MAJORITY]


def method(selection="multiagent", **kw):
    kw.setdefault("shared", selection in ("single_agent", "majority"))
    return MethodConfig(selection=selection, **kw)


def run(records, m=None, w=0.5, seed=0, agents=3, **kw):
    return select(records, m or method(), agents=agents, task=TASK, seed=seed, critic_weight=w, **kw)


def ids(examples):
    return [e["id"] for e in examples]


def test_generator_data_is_round_one_answers_agreeing_with_the_majority():
    data = run(RECORDS, w=1.0)
    assert ids(data["gen0"]) == ["agree#0/gen", "drift#0/gen"]
    assert ids(data["gen1"]) == ["drift#1/gen"]  # "3" disagrees
    assert ids(data["gen2"]) == ["drift#2/gen"]  # unparsed never agrees; no majority, no data
    example = data["gen0"][0]
    assert example["messages"] == AGREE["conversations"][0][:2]
    assert example["loss_from_turn"] == 0 and example["kind"] == "gen"


def test_critic_data_is_whole_conversations_ending_on_the_majority():
    data = run(RECORDS, w=1.0)
    assert ids(data["critic1"]) == ["agree#1/critic"] and data["critic1"][0]["kind"] == "C-"
    assert ids(data["critic2"]) == ["agree#2/critic"]  # corrected from an unparsed answer
    assert data["critic0"] == []  # only C+ there, and w=1 keeps C- only
    example = data["critic1"][0]
    assert example["messages"] == AGREE["conversations"][1] and example["loss_from_turn"] == 1


def mixed(n_corrected, n_held):
    """Records in which agent 0 was corrected n_corrected times and held n_held times."""
    corrected = [record(f"c{i}", [["7"], ["2"]], "2") for i in range(n_corrected)]
    held = [record(f"h{i}", [["2"], ["2"]], "2") for i in range(n_held)]
    return corrected + held


@pytest.mark.parametrize(
    "n_corrected, n_held, w, expected",
    [
        (3, 5, 0.5, (3, 3)),  # round(3 * 0.5 / 0.5) C+
        (2, 5, 0.4, (2, 3)),  # round(2 * 0.6 / 0.4)
        (3, 5, 0.25, (3, 5)),  # 9 C+ wanted, only 5 exist: all of them
        (3, 5, 1.0, (3, 0)),  # C- only
        (3, 5, 0.0, (0, 5)),  # C+ only, all of them
        (0, 5, 0.5, (0, 0)),  # no C-: no critic data (see selection's docstring)
    ],
)
def test_critic_mix(n_corrected, n_held, w, expected):
    data = run(mixed(n_corrected, n_held), w=w, agents=1)
    kinds = [e["kind"] for e in data["critic0"]]
    assert (kinds.count("C-"), kinds.count("C+")) == expected
    assert sizes(data)["critic0"] == {"n": sum(expected), "gen": 0, "C-": expected[0], "C+": expected[1]}


def test_the_choice_of_held_conversations_is_seeded():
    chosen = {seed: ids(run(mixed(2, 6), seed=seed, agents=1)["critic0"]) for seed in range(6)}
    assert chosen[0] == ids(run(mixed(2, 6), seed=0, agents=1)["critic0"])
    assert len(set(map(tuple, chosen.values()))) > 1


def test_one_round_gives_no_critic_data():
    data = run([record("q", [["2", "2", "3"]], "2")])
    assert [len(data[f"critic{n}"]) for n in range(3)] == [0, 0, 0]
    assert ids(data["gen0"]) == ["q#0/gen"] and data["gen2"] == []


def test_generators_only():
    data = run(RECORDS, method(train_critics=False))
    assert sorted(data) == ["gen0", "gen1", "gen2"]


def test_single_agent_pools_every_agents_data():
    data = run(RECORDS, method("single_agent"), w=1.0)
    assert sorted(data) == ["critic0", "gen0"]
    assert ids(data["gen0"]) == ["agree#0/gen", "drift#0/gen", "drift#1/gen", "drift#2/gen"]
    assert ids(data["critic0"]) == ["agree#1/critic", "agree#2/critic"]
    # the C-/C+ mix is taken over the pool: 2 C- and 3 available C+ at w=0.5 -> 2 C+
    assert sizes(run(RECORDS, method("single_agent")))["critic0"] == {"n": 4, "gen": 0, "C-": 2, "C+": 2}


def test_majority_ft_is_one_model_on_agreeing_round_one_answers():
    data = run(RECORDS, method("majority"))
    assert list(data) == ["gen0"]
    assert len(data["gen0"]) == 4


def test_star_keeps_correct_answers_and_correct_rationalisations():
    records = [record("q", [["2", "3", None]], "3"), record("r", [["9", "2", "2"]], "2")]
    requests = rationalisation_requests(records, TASK)
    assert [(i, n) for i, n, _ in requests] == [("q", 1), ("q", 2), ("r", 0)]
    assert "Hint: the answer is 2" in requests[0][2][0]["content"]
    rationalised = {("q", 1): "so \\boxed{2}", ("q", 2): "\\boxed{4}"}  # ("r", 0) not generated
    data = run(records, method("star", shared=False), agents=3, rationalised=rationalised)
    assert ids(data["gen0"]) == ["q#0/gen"]  # the majority is not used, the gold answer is
    assert ids(data["gen1"]) == ["q#1/rationalised", "r#1/gen"]
    assert ids(data["gen2"]) == ["r#2/gen"]  # a wrong rationalisation is dropped
    example = data["gen1"][0]
    assert example["messages"] == [
        records[0]["conversations"][1][0],
        {"role": "assistant", "content": "so \\boxed{2}"},
    ]
    assert "Hint" not in example["messages"][0]["content"] and example["kind"] == "gen"
    assert star_examples(records, 2, TASK, rationalised) == data["gen2"]
    pooled = run(records, method("star", shared=True), rationalised=rationalised)
    assert list(pooled) == ["gen0"] and len(pooled["gen0"]) == 4
    with pytest.raises(ValueError, match="rationalis"):
        run(records, method("star", shared=True))


def test_bad_input():
    assert run(RECORDS, method("none")) == {}
    with pytest.raises(ConfigError, match="shared"):
        run(RECORDS, MethodConfig(selection="single_agent", shared=False))
    with pytest.raises(DataError, match="'agree'"):
        run(RECORDS, agents=2)
