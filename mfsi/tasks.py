"""Tasks: questions, prompts, answer extraction and grading.

    from mfsi.tasks import load_task
    task = load_task(cfg.task)            # or the whole composed config
    train, held_out = task.split("train"), task.split("eval")
    messages = task.prompt(train[0])      # round-1 chat messages
    pred = task.extract_answer(response)  # None when nothing parseable
    task.is_correct(pred, train[0].answer)

Splits are disjoint and a function of (data, seed, sizes): the eval questions are drawn
first, so changing n_train never changes the eval set. Data is never substituted: with
no task.path and no reachable hub, loading stops with a message saying what to provide.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfsi import grading, rundir
from mfsi.errors import DataError
from mfsi.paths import find

log = logging.getLogger(__name__)

Message = dict[str, str]
BOXED = "Put your final answer in the form \\boxed{answer} at the end of your response."
AGENT_ID = "You are agent {id}."  # the unique-ID ablation (debate.agent_ids)
# What a round m>1 message asks of an agent, by debate.style ({them}: the others' solutions,
# or their summary). critical: Du et al.'s debate, the others' answers are advice to weigh
# against one's own; cooperative: the paper's cooperative variant, build on them together.
DEBATE_ASKS = {
    "critical": "Using {them} as additional advice, give an updated answer.",
    "cooperative": "You are working together with these agents: build on their reasoning rather "
    "than critiquing it, and give an updated answer.",
}


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str  # gold answer, as the task's grader reads it


class Task:
    """Prompts and splits shared by every task; subclasses say how answers are graded."""

    name = "task"
    instruction = "{question}"

    def __init__(self, splits: dict[str, list[Problem]], files: list[Path] = ()):
        self._splits = splits
        self.files = list(files)  # the local data files read (question ids are positions in them)

    def split(self, name: str) -> list[Problem]:
        if name not in self._splits:
            raise ValueError(f"unknown split {name!r}: expected 'train' or 'eval'")
        return list(self._splits[name])

    # --- prompts --------------------------------------------------------------------
    def prompt(self, problem: Problem, agent: int | None = None) -> list[Message]:
        """Round 1: the question, asking for a boxed final answer. With `agent` (0-based) the
        message first tells that agent its id (the unique-ID ablation); in the user message,
        since some chat templates (Mistral, Gemma) have no system role."""
        text = f"{self.instruction.format(question=problem.question)} {BOXED}"
        if agent is not None:
            text = f"{text} {AGENT_ID.format(id=agent + 1)}"
        return [{"role": "user", "content": text}]

    def hint_prompt(self, problem: Problem) -> list[Message]:
        """STaR rationalisation: the round-1 prompt plus the true answer as a hint."""
        text = self.prompt(problem)[0]["content"]
        return [{"role": "user", "content": f"{text} (Hint: the answer is {problem.answer}.)"}]

    @staticmethod
    def debate_prompt(others: list[str], style: str = "critical") -> Message:
        """Round m>1 without summarisation: the other agents' round m-1 answers verbatim."""
        shown = "".join(f"\n\nOne agent solution: {text}" for text in others)
        return {
            "role": "user",
            "content": f"These are solutions from other agents:{shown}\n\n"
            f"{DEBATE_ASKS[style].format(them='them')} {BOXED}",
        }

    @staticmethod
    def summary_request(problem: Problem, others: list[str]) -> list[Message]:
        """What the summariser (the base model) is asked, to condense the other answers."""
        shown = "".join(f"\n\nOne agent solution: {text}" for text in others)
        return [
            {
                "role": "user",
                "content": f"Problem: {problem.question}\n\nHere are solutions from different "
                f"agents:{shown}\n\nSummarise the different solutions, the reasoning of each "
                "and the final answer each reached.",
            }
        ]

    @staticmethod
    def summary_prompt(summary: str, style: str = "critical") -> Message:
        """Round m>1 with summarisation: the summary of the other agents' answers."""
        return {
            "role": "user",
            "content": f"Here is a summary of solutions from other agents:\n\n{summary}\n\n"
            f"{DEBATE_ASKS[style].format(them='it')} {BOXED}",
        }

    # --- grading --------------------------------------------------------------------
    def extract_answer(self, text: str) -> str | None:
        raise NotImplementedError

    def equivalent(self, a: str | None, b: str | None) -> bool:
        raise NotImplementedError

    def is_correct(self, pred: str | None, gold: str) -> bool:
        """An unparsed prediction (None) is wrong."""
        return pred is not None and self.equivalent(pred, gold)


class NumericTask(Task):
    """Answers are numbers, compared exactly after normalisation ('18.00' == '18')."""

    def extract_answer(self, text: str) -> str | None:
        return grading.extract_number(text)

    def equivalent(self, a: str | None, b: str | None) -> bool:
        return grading.numbers_equal(a, b)


class Arithmetic(NumericTask):
    name = "arithmetic"
    instruction = "What is the result of {question}?"


class GSM(NumericTask):
    name = "gsm"
    instruction = "Solve this math problem, explaining your reasoning. {question}"


class MATH(Task):
    name = "math"
    instruction = "Solve this problem, explaining your reasoning step by step. {question}"

    def extract_answer(self, text: str) -> str | None:
        boxed = grading.extract_boxed(text)
        return grading.normalize(boxed) if boxed is not None else None

    def equivalent(self, a: str | None, b: str | None) -> bool:
        return grading.math_equal(a, b)


# --- data -----------------------------------------------------------------------------
def arithmetic_expression(rng: random.Random) -> tuple[str, int]:
    """a+b*c+d-e*f with a..f uniform in 0..29, and its value."""
    a, b, c, d, e, f = (rng.randint(0, 29) for _ in range(6))
    return f"{a}+{b}*{c}+{d}-{e}*{f}", a + b * c + d - e * f


def _arithmetic_pool(n: int, seed: int) -> list[Problem]:
    rng, pool = random.Random(seed), {}
    while len(pool) < n:
        expression, value = arithmetic_expression(rng)
        pool.setdefault(expression, Problem(f"arith/{expression}", expression, str(value)))
    return list(pool.values())


def read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line (LF or CRLF, a UTF-8 BOM dropped); a line
    that is not a JSON object names file and line, a binary file names the file."""
    for number, record in rundir.json_lines(path):
        if isinstance(record, DataError):
            raise record
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, one per line")
        yield number, record


def _require(record: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if not isinstance(record.get(k), str)]
    if missing:
        raise DataError(f"{where}: missing or non-text field(s) {', '.join(missing)}")


def _gsm_problem(record: dict, id_: str, where: str) -> Problem:
    _require(record, ("question", "answer"), where)
    if "####" not in record["answer"]:
        raise DataError(f"{where}: answer does not end in '#### <number>'")
    value = grading.to_number(record["answer"].rsplit("####", 1)[1])
    if value is None:
        raise DataError(f"{where}: the text after '####' is not a number")
    return Problem(id_, record["question"].strip(), grading.format_number(value))


def _math_level(record: dict, where: str) -> int | None:
    """The difficulty: "Level 3" (Hendrycks) or 3 (PRM800K/MATH500); None for "Level ?"."""
    level = record.get("level")
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if not isinstance(level, str) or not level.startswith("Level"):
        raise DataError(f"{where}: field level must be 'Level N' or an integer, got {level!r}")
    level = level.removeprefix("Level").strip()
    return int(level) if level.isdigit() else None


def _math_problem(record: dict, id_: str, where: str, levels: list[int]) -> Problem | None:
    """A MATH problem at one of the wanted levels, else None.

    Gold is the solution's last \\boxed answer (the `answer` field of PRM800K files when the
    solution has none); PRM800K's `unique_id` (test/algebra/1.json) becomes the id.
    """
    _require(record, ("problem", "solution"), where)
    if _math_level(record, where) not in levels:
        return None
    answer = grading.extract_boxed(record["solution"]) or record.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        log.warning("%s: solution has no \\boxed answer; skipped", where)
        return None
    if isinstance(record.get("unique_id"), str):
        id_ = record["unique_id"].removesuffix(".json")
    return Problem(id_, record["problem"].strip(), grading.normalize(answer))


def parse_problem(task: str, record: dict, id_: str, where: str, levels: list[int]) -> Problem | None:
    """One record of a gsm or math file as a Problem (None: filtered out or no answer)."""
    return _gsm_problem(record, id_, where) if task == "gsm" else _math_problem(record, id_, where, levels)


def local_files(path: str, key: str = "task.path") -> dict[str, list[Path]]:
    """{'train'|'test'|'all': data files} of a JSONL file or a directory."""
    root = find(path) or Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{key}={path!r} does not exist")
    if root.is_file():
        return {"all": [root]}
    parts: dict[str, list[Path]] = {}
    for part in ("train", "test"):
        if (root / f"{part}.jsonl").is_file():
            parts[part] = [root / f"{part}.jsonl"]
        elif (root / part).is_dir():  # MATH layout: part/subject/id.json
            parts[part] = sorted((root / part).glob("*/*.json"))
    if not parts:
        raise DataError(
            f"{key}={path!r} holds no data: expected train.jsonl/test.jsonl, "
            "train/<subject>/*.json and test/<subject>/*.json, or a .jsonl file"
        )
    return parts


def read_files(files: dict[str, list[Path]]) -> dict[str, list[tuple[dict, str, str]]]:
    """{part: [(record, id, where)]} of local_files: an id is the line's number in its part's
    file, or part/subject/name of a MATH-layout file."""
    parts: dict[str, list] = {}
    for part, paths in files.items():
        parts[part] = []
        for path in paths:
            if part != "all" and path.suffix == ".json":
                parts[part].append((_read_json(path), f"{part}/{path.parent.name}/{path.stem}", str(path)))
            else:
                prefix = path.stem if part == "all" else part
                parts[part] += [(r, f"{prefix}/{n}", f"{path}:{n}") for n, r in read_jsonl(path)]
    return parts


def read_local(path: str, key: str = "task.path") -> dict[str, list[tuple[dict, str, str]]]:
    """{'train'|'test'|'all': [(record, id, where)]} from a JSONL file or a directory."""
    return read_files(local_files(path, key))


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(rundir.read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a JSON object")
    return record


def _hub_parts(cfg: Any) -> dict[str, list[tuple[dict, str, str]]]:
    how = {
        "gsm": "task.path=<folder with GSM8K's train.jsonl and test.jsonl>",
        "math": "task.path=<MATH folder with train/<subject>/*.json and test/..., or a JSONL file>",
    }[cfg.name]
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    if offline or not cfg.hf_id:
        raise DataError(f"no data for task={cfg.name}: the hub is offline; pass {how}")
    try:
        import datasets

        configs = ["main"] if cfg.name == "gsm" else datasets.get_dataset_config_names(cfg.hf_id)
        parts: dict[str, list] = {"train": [], "test": []}
        for config in configs:
            loaded = datasets.load_dataset(cfg.hf_id, config)
            for part in parts:
                parts[part] += [
                    (dict(r), f"{part}/{config}/{i}", f"{cfg.hf_id}[{config}/{part}][{i}]")
                    for i, r in enumerate(loaded[part])
                ]
        return parts
    except Exception as e:  # no network, unknown id, changed schema
        raise DataError(f"could not load {cfg.hf_id} from the hub ({e}); pass {how}") from None


def _draw(pools: dict[str, list[Problem]], n_train: int, n_eval: int, seed: int) -> dict[str, list[Problem]]:
    """Eval first, then train: from separate test/train pools, or disjointly from one pool.

    A train question that is also a test question (same text) is dropped from train."""
    if "train" in pools and "test" in pools:
        tested = {p.question for p in pools["test"]}
        train = [p for p in pools["train"] if p.question not in tested]
        if len(train) < len(pools["train"]):
            log.info(
                "%d train questions are also test questions: left out of train",
                len(pools["train"]) - len(train),
            )
        pools = {**pools, "train": train}
    rng = random.Random(seed)
    shuffled = {k: rng.sample(v, len(v)) for k, v in sorted(pools.items())}
    if "all" in shuffled or "test" not in shuffled or "train" not in shuffled:
        pool = [p for v in shuffled.values() for p in v]
        if n_train + n_eval > len(pool):
            raise DataError(
                f"task.n_train + task.n_eval = {n_train + n_eval} but only {len(pool)} questions exist"
            )
        return {"eval": pool[:n_eval], "train": pool[n_eval : n_eval + n_train]}
    for part, n, key in (("test", n_eval, "n_eval"), ("train", n_train, "n_train")):
        if n > len(shuffled[part]):
            raise DataError(f"task.{key} = {n} but the {part} data has only {len(shuffled[part])} questions")
    return {"eval": shuffled["test"][:n_eval], "train": shuffled["train"][:n_train]}


def _every(parts: dict[str, list]) -> list:
    return [record for records in parts.values() for record in records]


def load_task(cfg: Any) -> Task:
    """Build the configured task with its train/eval splits. Accepts cfg.task or cfg."""
    cfg = cfg.task if "task" in cfg else cfg
    if cfg.name == "arithmetic":
        # Generation order is already random: eval first, so n_train never changes it.
        pool = _arithmetic_pool(cfg.n_train + cfg.n_eval, cfg.seed)
        return Arithmetic({"eval": pool[: cfg.n_eval], "train": pool[cfg.n_eval :]})
    if cfg.name not in ("gsm", "math"):
        raise DataError(f"unknown task {cfg.name!r}: expected arithmetic, gsm or math")
    files = local_files(cfg.path) if cfg.path else {}
    raw = read_files(files) if cfg.path else _hub_parts(cfg)
    if cfg.get("eval_path"):  # e.g. MATH500: eval on that file, train on the rest of task.path
        eval_files = local_files(cfg.eval_path, key="task.eval_path")
        raw = {"train": _every(raw), "test": _every(read_files(eval_files))}
        files = {**files, "eval": _every(eval_files)}
    pools = {
        part: [p for r, i, w in records if (p := parse_problem(cfg.name, r, i, w, list(cfg.levels)))]
        for part, records in raw.items()
    }
    task_class = GSM if cfg.name == "gsm" else MATH
    return task_class(_draw(pools, cfg.n_train, cfg.n_eval, cfg.seed), files=_every(files))
