"""The task layer: splits, loaders for the official formats, prompts, and bad input."""

import json
import re
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mfsi.config import register
from mfsi.errors import DataError
from mfsi.grading import extract_boxed, normalize
from mfsi.tasks import Arithmetic, Problem, Task, load_task

FIXTURES = Path(__file__).parent / "fixtures"


def task_cfg(**overrides):
    base = {
        "name": "arithmetic",
        "n_train": 20,
        "n_eval": 10,
        "path": None,
        "hf_id": None,
        "levels": [1, 2, 3],
        "seed": 0,
    }
    return OmegaConf.create({**base, **overrides})


def ids(task, split):
    return [p.id for p in task.split(split)]


def test_arithmetic_splits_are_disjoint_sized_and_seeded():
    task = load_task(task_cfg())
    train, held_out = task.split("train"), task.split("eval")
    assert (len(train), len(held_out)) == (20, 10)
    assert not set(ids(task, "train")) & set(ids(task, "eval"))
    assert ids(load_task(task_cfg()), "train") == ids(task, "train")
    assert ids(load_task(task_cfg(seed=1)), "train") != ids(task, "train")


def test_eval_set_does_not_depend_on_n_train():
    assert ids(load_task(task_cfg(n_train=5)), "eval") == ids(load_task(task_cfg(n_train=50)), "eval")


def test_arithmetic_problems_follow_the_paper_and_gold_is_the_value():
    for problem in load_task(task_cfg(n_train=200)).split("train"):
        a, b, c, d, e, f = map(int, problem.question.replace("*", "+").replace("-", "+").split("+"))
        assert all(0 <= x <= 29 for x in (a, b, c, d, e, f))
        assert problem.question == f"{a}+{b}*{c}+{d}-{e}*{f}"
        assert int(problem.answer) == a + b * c + d - e * f


def test_unknown_split_name():
    with pytest.raises(ValueError, match="unknown split"):
        load_task(task_cfg()).split("test")


def test_load_task_accepts_the_whole_config():
    whole = OmegaConf.create({"task": task_cfg(), "agents": 3})
    assert ids(load_task(whole), "eval") == ids(load_task(task_cfg()), "eval")


def test_gsm_from_official_jsonl_folder():
    task = load_task(task_cfg(name="gsm", path=str(FIXTURES / "gsm"), n_train=10, n_eval=6))
    train, held_out = task.split("train"), task.split("eval")
    assert {p.id.split("/")[0] for p in train} == {"train"}
    assert {p.id.split("/")[0] for p in held_out} == {"test"}
    assert {"34", "1245", "-7", "150"} <= {p.answer for p in train}  # "#### 1,245" -> "1245"
    assert "1600" in {p.answer for p in held_out}
    assert task.is_correct(task.extract_answer(r"so \boxed{1,600}"), "1600")


def test_relative_data_path_is_found_from_any_working_directory(tmp_path, monkeypatch):
    # Like model.path: the working directory first, then the repository root.
    monkeypatch.chdir(tmp_path)
    relative = str((FIXTURES / "gsm").relative_to(FIXTURES.parents[1]))
    task = load_task(task_cfg(name="gsm", path=relative, n_train=10, n_eval=6))
    assert ids(task, "eval") == ids(
        load_task(task_cfg(name="gsm", path=str(FIXTURES / "gsm"), n_train=10, n_eval=6)), "eval"
    )


def test_gsm_single_file_is_split_disjointly():
    task = load_task(task_cfg(name="gsm", path=str(FIXTURES / "gsm" / "train.jsonl"), n_train=6, n_eval=4))
    assert len(task.split("train")) == 6 and len(task.split("eval")) == 4
    assert not set(ids(task, "train")) & set(ids(task, "eval"))


def test_math_directory_layout_with_level_filter():
    task = load_task(task_cfg(name="math", path=str(FIXTURES / "math"), n_train=5, n_eval=4))
    train = {p.id: p.answer for p in task.split("train")}
    assert set(train) == {
        "train/algebra/1",
        "train/algebra/2",
        "train/algebra/3",
        "train/geometry/5",
        "train/geometry/6",
    }
    assert train["train/algebra/2"] == r"\frac{5}{6}" and train["train/geometry/5"] == "25"
    assert "test/number_theory/12" not in ids(task, "eval")  # "Level ?" is not in 1-3
    assert task.is_correct(task.extract_answer(r"\boxed{\dfrac{10}{12}}"), train["train/algebra/2"])


def test_math_all_levels_and_jsonl():
    task = load_task(
        task_cfg(name="math", path=str(FIXTURES / "math.jsonl"), levels=[1, 2, 3, 4, 5], n_train=7, n_eval=4)
    )
    assert len(task.split("train")) + len(task.split("eval")) == 11


def prm800k_form(record: dict, unique_id: str) -> dict:
    """A Hendrycks record as PRM800K/MATH500 writes it: int level, subject, answer, unique_id."""
    return {
        "problem": record["problem"],
        "solution": record["solution"],
        "answer": extract_boxed(record["solution"]),
        "subject": record["type"],
        "level": int(record["level"].removeprefix("Level ")),
        "unique_id": unique_id,
    }


def hendrycks_records() -> list[dict]:
    """The 11 records of fixtures/math.jsonl with a known level."""
    lines = (FIXTURES / "math.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["level"] != "Level ?"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_math_prm800k_jsonl_with_int_levels(tmp_path):
    records = [prm800k_form(r, f"test/algebra/{i}.json") for i, r in enumerate(hendrycks_records())]
    path = write_jsonl(tmp_path / "test.jsonl", records)
    wanted = [r for r in records if r["level"] <= 3]
    task = load_task(task_cfg(name="math", path=str(path), n_train=len(wanted) - 2, n_eval=2))
    problems = task.split("train") + task.split("eval")
    assert {p.id for p in problems} == {r["unique_id"].removesuffix(".json") for r in wanted}
    assert {p.answer for p in problems} == {normalize(r["answer"]) for r in wanted}


def test_math_folder_with_train_and_test_jsonl_in_either_form(tmp_path):
    records = hendrycks_records()
    write_jsonl(tmp_path / "train.jsonl", records[:7])  # Hendrycks: "Level N", type
    write_jsonl(
        tmp_path / "test.jsonl", [prm800k_form(r, f"test/x/{i}.json") for i, r in enumerate(records[7:])]
    )
    task = load_task(task_cfg(name="math", path=str(tmp_path), levels=[1, 2, 3, 4, 5], n_train=7, n_eval=4))
    assert {p.id.split("/")[0] for p in task.split("train")} == {"train"}
    assert {p.id for p in task.split("eval")} == {f"test/x/{i}" for i in range(4)}


def test_eval_path_trains_on_the_rest_of_path(tmp_path):
    # MATH500's way: evaluate on one file, train on every other question of task.path.
    records = hendrycks_records()
    held_out = write_jsonl(
        tmp_path / "m500.jsonl", [prm800k_form(r, f"test/a/{i}.json") for i, r in enumerate(records[:3])]
    )
    cfg = task_cfg(
        name="math", path=str(FIXTURES / "math.jsonl"), levels=[1, 2, 3, 4, 5], n_train=8, n_eval=3
    )
    task = load_task(OmegaConf.merge(cfg, {"eval_path": str(held_out)}))
    assert {p.question for p in task.split("eval")} == {r["problem"].strip() for r in records[:3]}
    assert {p.question for p in task.split("train")} == {r["problem"].strip() for r in records[3:]}
    with pytest.raises(DataError, match="n_train = 9 but the train data has only 8"):
        load_task(OmegaConf.merge(cfg, {"eval_path": str(held_out), "n_train": 9}))
    with pytest.raises(DataError, match="task.eval_path='/no/such.jsonl' does not exist"):
        load_task(OmegaConf.merge(cfg, {"eval_path": "/no/such.jsonl"}))


def test_math500_preset_loads_with_its_paths_overridden(tmp_path):
    register()
    held_out = write_jsonl(
        tmp_path / "m500.jsonl",
        [prm800k_form(r, f"test/a/{i}.json") for i, r in enumerate(hendrycks_records()[:3])],
    )
    overrides = ["+experiment=math500", f"task.path={FIXTURES / 'math'}", f"task.eval_path={held_out}"]
    with initialize_config_dir(config_dir=str(FIXTURES.parents[1] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "task.n_eval=3", "task.n_train=5"])
    task = load_task(cfg)
    assert cfg.task.levels == [1, 2, 3, 4, 5] and cfg.variant == "multiagent_ft_math500"
    assert {p.id for p in task.split("eval")} == {"test/a/0", "test/a/1", "test/a/2"}
    assert len(task.split("train")) == 5


def test_prompts_ask_for_boxed_answers_and_show_other_agents():
    task = load_task(task_cfg())
    problem = task.split("eval")[0]
    [message] = task.prompt(problem)
    assert message["role"] == "user" and problem.question in message["content"]
    assert r"\boxed{answer}" in message["content"]
    follow_up = task.debate_prompt(["first answer", "second answer"])
    assert "first answer" in follow_up["content"] and "second answer" in follow_up["content"]
    request = task.summary_request(problem, ["x is 3"])[0]["content"]
    assert "x is 3" in request and problem.question in request
    assert "the summary" in task.summary_prompt("the summary")["content"]
    assert problem.answer in task.hint_prompt(problem)[0]["content"]


def test_default_prompts_are_unchanged_and_variants_change_only_their_part():
    # Byte for byte: the committed results and the embedded model were made with these.
    problem = Problem("q", "1+2*3+4-5*6", "-19")
    boxed = r"Put your final answer in the form \boxed{answer} at the end of your response."
    plain = f"What is the result of 1+2*3+4-5*6? {boxed}"
    assert Arithmetic({}).prompt(problem) == [{"role": "user", "content": plain}]
    ask = "Using {} as additional advice, give an updated answer. "
    shown = "These are solutions from other agents:\n\nOne agent solution: A\n\nOne agent solution: B\n\n"
    assert Task.debate_prompt(["A", "B"]) == {"role": "user", "content": shown + ask.format("them") + boxed}
    summary = "Here is a summary of solutions from other agents:\n\nS\n\n"
    assert Task.summary_prompt("S") == {"role": "user", "content": summary + ask.format("it") + boxed}

    # unique ID: the agent's 1-based id after the default prompt, in the user message
    assert Arithmetic({}).prompt(problem, agent=1) == [
        {"role": "user", "content": f"{plain} You are agent 2."}
    ]
    # cooperative: the same message, asking to build on the others instead
    cooperative = (
        "You are working together with these agents: build on their reasoning rather than "
        f"critiquing it, and give an updated answer. {boxed}"
    )
    assert Task.debate_prompt(["A", "B"], "cooperative")["content"] == shown + cooperative
    assert Task.summary_prompt("S", "cooperative")["content"] == summary + cooperative


# --- bad input: a clear message, nothing loaded ---------------------------------------
def test_missing_path():
    with pytest.raises(DataError, match="does not exist"):
        load_task(task_cfg(name="gsm", path="/no/such/dir"))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    shutil.copy(FIXTURES / "gsm" / "train.jsonl", tmp_path / "train.jsonl")
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write('{"question": "broken", "answer": \n')
    with pytest.raises(DataError, match=r"train\.jsonl:11: not valid JSON"):
        load_task(task_cfg(name="gsm", path=str(tmp_path)))


def test_a_bom_and_crlf_line_ends_load_as_the_plain_file(tmp_path):
    """GSM8K saved by Windows tools: a UTF-8 BOM and CRLF line ends."""
    (tmp_path / "gsm").mkdir()
    for part in ("train", "test"):
        text = (FIXTURES / "gsm" / f"{part}.jsonl").read_text()
        (tmp_path / "gsm" / f"{part}.jsonl").write_bytes(
            b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode()
        )
    windows = load_task(task_cfg(name="gsm", path=str(tmp_path / "gsm"), n_train=10, n_eval=6))
    plain = load_task(task_cfg(name="gsm", path=str(FIXTURES / "gsm"), n_train=10, n_eval=6))
    for split in ("train", "eval"):
        assert windows.split(split) == plain.split(split)


def test_the_files_read_are_known(tmp_path):
    """What the loop hashes into splits.json: every file questions came from."""
    task = load_task(task_cfg(name="gsm", path=str(FIXTURES / "gsm"), n_train=10, n_eval=6))
    assert task.files == [FIXTURES / "gsm" / "train.jsonl", FIXTURES / "gsm" / "test.jsonl"]
    math = load_task(task_cfg(name="math", path=str(FIXTURES / "math"), n_train=5, n_eval=4))
    assert math.files == sorted((FIXTURES / "math" / "train").glob("*/*.json")) + sorted(
        (FIXTURES / "math" / "test").glob("*/*.json")
    )
    assert load_task(task_cfg()).files == []  # arithmetic: generated from the seed


@pytest.mark.parametrize(
    "content,message",
    [
        (b"PK\x03\x04\x00\x00binary", ": a binary file (it holds NUL bytes), not text"),
        (
            '{"question": "caf\u00e9", "answer": "#### 1"}\n'.encode("latin-1") * 2,
            ":1: not UTF-8 text (byte 0xe9)",
        ),
        (
            b'{"question": "q", "answer": "#### 1"}\n["a", "list"]\n',
            ":2: expected a JSON object, one per line",
        ),
        (
            b'{"question": "q", "answer": "#### 1"}\n{"text": "foreign"}\n',
            ":2: missing or non-text field(s) question, answer",
        ),
    ],
    ids=["binary", "latin-1", "a JSON list", "foreign fields"],
)
def test_unreadable_data_names_the_file_and_line(tmp_path, content, message):
    shutil.copytree(FIXTURES / "gsm", tmp_path / "gsm")
    (tmp_path / "gsm" / "train.jsonl").write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'gsm' / 'train.jsonl'}{message}")):
        load_task(task_cfg(name="gsm", path=str(tmp_path / "gsm"), n_train=1, n_eval=1))


def test_an_undecodable_math_file_names_itself(tmp_path):
    shutil.copytree(FIXTURES / "math", tmp_path / "math")
    bad = tmp_path / "math" / "train" / "algebra" / "1.json"
    bad.write_bytes(b'{"problem": "\xff"}')
    with pytest.raises(DataError, match=rf"{bad}:1: not UTF-8 text \(byte 0xff\)"):
        load_task(task_cfg(name="math", path=str(tmp_path / "math")))


def test_gsm_answer_without_hashes(tmp_path):
    (tmp_path / "data.jsonl").write_text(json.dumps({"question": "q", "answer": "42"}) + "\n")
    with pytest.raises(DataError, match=r"data\.jsonl:1: answer does not end in '#### <number>'"):
        load_task(task_cfg(name="gsm", path=str(tmp_path / "data.jsonl")))


def test_math_file_missing_solution(tmp_path):
    shutil.copytree(FIXTURES / "math", tmp_path / "math")
    bad = tmp_path / "math" / "train" / "algebra" / "1.json"
    bad.write_text(json.dumps({"problem": "p", "level": "Level 1", "type": "Algebra"}))
    with pytest.raises(DataError, match=r"1\.json: missing or non-text field\(s\) solution"):
        load_task(task_cfg(name="math", path=str(tmp_path / "math")))


def test_math_level_that_is_neither_text_nor_int(tmp_path):
    record = {**hendrycks_records()[0], "level": 2.5}
    with pytest.raises(
        DataError, match=r"bad\.jsonl:1: field level must be 'Level N' or an integer, got 2\.5"
    ):
        load_task(task_cfg(name="math", path=str(write_jsonl(tmp_path / "bad.jsonl", [record]))))


def test_not_enough_questions():
    with pytest.raises(DataError, match="n_eval = 50 but the test data has only 6"):
        load_task(task_cfg(name="gsm", path=str(FIXTURES / "gsm"), n_eval=50))
    with pytest.raises(DataError, match="n_train \\+ task.n_eval = 30 but only 10"):
        load_task(task_cfg(name="gsm", path=str(FIXTURES / "gsm" / "train.jsonl"), n_train=20))


def test_unknown_task():
    with pytest.raises(DataError, match="unknown task 'chess'"):
        load_task(task_cfg(name="chess"))


def test_offline_without_path_says_how_to_provide_data(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="task.path="):
        load_task(task_cfg(name="math", hf_id="EleutherAI/hendrycks_math"))
