"""Regenerate the embedded default model, models/tiny-arith, from nothing (2-core CPU: 15-21 min).

    python -m experiments.make_tiny_model --out models/tiny-arith             # the shipped model
    python -m experiments.make_tiny_model --out /tmp/t --steps 4 --eval-n 8   # smoke test

A 0.9M-parameter character-level Llama (mfsi/testing/charlm.py) learns the arithmetic task
a+b*c+d-e*f from generated data, speaking exactly the prompts the pipeline sends: every
conversation is built with the task layer's prompt builders (Arithmetic.prompt,
Task.debate_prompt) and rendered with mfsi.chat.sequences, the loss on the last assistant
turn only. Answers are a short chain, e.g. "4*25=100, 27*8=8*27=216, 3+100=103, 103+6=109,
109-216=-(216-109)=-(116-9)=-107. \\boxed{-107}": a product is written with its smaller
factor first (465 facts to learn instead of 900), a subtraction in easy steps (see
`difference`), the rest in one.

Stage 1: single-turn questions; half of the answers are placed, by their position ids, up
to 800 positions after their question, the distance a debate round puts between them.
Stage 2 (the last part of the same schedule): most batches are debate turns built from
the model's OWN sampled solutions (T=1, right and wrong): [question, own solution, debate
prompt with others' solutions] -> the correct solution; the rest stay single-turn. Some
other answers are swapped for the correct solution (stage2_correct_peer), so that using a
right peer is often what the target rewards.

What made training reliable on 2 CPU cores (measured, seeds 0 and 1): batches of 16,
Adam's beta2 = 0.98 and the canonical products; without beta2 = 0.98 two seeds with an
earlier answer format ended at 45% and 6% greedy accuracy.

Everything is seeded; the run is a fixed number of steps (--minutes only caps wall time,
at the cost of reproducibility). Written next to the model: training_log.jsonl
(accuracy vs time), recipe.json (the settings) and eval.json (the final evaluation).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

from mfsi.chat import Message, sequences
from mfsi.config import GenerationConfig
from mfsi.debate import run_debate
from mfsi.generation import BatchedBackend
from mfsi.metrics import debate_metrics, mean
from mfsi.tasks import Arithmetic, Problem, arithmetic_expression
from mfsi.testing.charlm import build_tokenizer, llama_config

CONF = Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny.yaml"
TASK = Arithmetic({"train": [], "eval": []})  # prompts and grading only; questions come from here


@dataclass
class Recipe:
    """Every number of the run; saved as recipe.json next to the model."""

    seed: int = 0
    hidden: int = 128  # 0.87M parameters with the ~100-symbol vocabulary
    layers: int = 4
    heads: int = 4
    ffn: int = 384
    stage1_steps: int = 2400
    stage2_steps: int = 1000
    refreshes: int = 1  # stage 2 re-samples the model's own solutions this many times
    uses_per_sample_set: int = 8  # debate conversations drawn from each problem's 5 own samples
    batch: int = 16  # 8 and 32 learned less in the same time
    debate_batch: int = 8  # debate conversations are ~4x longer than single turns
    lr: float = 2e-3  # 4e-3 diverged
    beta2: float = 0.98  # Adam's; 0.999 made the outcome a lottery over seeds
    warmup: int = 50
    lr_floor: float = 0.1  # the cosine ends at this fraction of lr
    weight_decay: float = 0.01
    stage2_debate_share: float = 0.65  # of stage-2 steps, own-sample debate batches
    # In a debate round the question stands 300-900 positions before the answer, a distance
    # single-turn training never shows: this share of single-turn answers is placed (by
    # position ids) up to position_gap positions after its question.
    gap_share: float = 0.5
    position_gap: int = 800
    # Each other answer of a stage-2 turn is the correct solution with this probability:
    # the model's own samples are rarely right, so without it copying a right peer is
    # seldom what the target rewards.
    stage2_correct_peer: float = 0.3  # 0: round 2 lowered accuracy by 4.6 points, 0.3: by 0.7
    five_agent_share: float = 0.25  # debate turns showing 4 others (5 agents), else 2
    log_every: int = 300  # steps between accuracy checks
    log_n: int = 100  # held-out questions per accuracy check
    eval_n: int = 1000  # held-out questions in the final evaluation
    eval_seed: int = 1_000_003  # held-out questions come from their own generator
    minutes: float | None = None  # optional wall-clock cap on training
    threads: int = 2  # torch CPU threads; 1 is faster when other jobs share the cores


# --- data -----------------------------------------------------------------------------
def difference(x: int, y: int) -> list[str]:
    """The intermediate forms of x-y, each easy to write left to right: y's hundreds come
    off first (343-288=143-88=55), and a negative result is the positive difference
    negated (245-575=-(575-245)=-(375-45)=-330). Subtracting a 3-digit number in one go
    was the tiny model's most common mistake."""
    if x < y:
        return [f"-({y}-{x})"] + [f"-({form})" for form in difference(y, x)]
    return [f"{x - y // 100 * 100}-{y % 100}"] if y >= 100 else []


def solution(expression: str) -> str:
    """The step-by-step answer: products, then left to right."""
    a, b, c, d, e, f = map(int, re.findall(r"\d+", expression))

    def step(x: int, op: str, y: int, value: int) -> str:
        forms = [f"{y}*{x}"] if op == "*" and x > y else difference(x, y) if op == "-" else []
        return f"{x}{op}{y}=" + "=".join([*forms, str(value)])

    s = a + b * c + d
    steps = [
        step(b, "*", c, b * c),
        step(e, "*", f, e * f),
        step(a, "+", b * c, a + b * c),
        step(a + b * c, "+", d, s),
        step(s, "-", e * f, s - e * f),
    ]
    return ", ".join(steps) + f". \\boxed{{{s - e * f}}}"


def question(rng: random.Random, held_out: set[str]) -> Problem:
    while True:
        expression, value = arithmetic_expression(rng)
        if expression not in held_out:
            return Problem(f"arith/{expression}", expression, str(value))


def held_out_questions(n: int, seed: int) -> list[Problem]:
    rng, seen = random.Random(seed), {}
    while len(seen) < n:
        p = question(rng, set())
        seen.setdefault(p.question, p)
    return list(seen.values())


def debate_conversation(p: Problem, own: str, others: list[str]) -> list[Message]:
    """Round 2 as the pipeline sends it, answered with the correct solution."""
    return [
        *TASK.prompt(p),
        {"role": "assistant", "content": own},
        TASK.debate_prompt(others),
        {"role": "assistant", "content": solution(p.question)},
    ]


Example = tuple[list[int], list[int], list[int]]  # token ids, labels, position ids


def last_turn(tokenizer: PreTrainedTokenizerBase, messages: list[Message], gap: int = 0) -> Example:
    """Token ids, labels (-100 except on the final assistant turn: earlier assistant turns
    are context, an own first answer may be wrong) and position ids, which jump by `gap`
    where the final turn starts, as if a debate's worth of text stood before it."""
    turns = sum(m["role"] == "assistant" for m in messages)
    [r] = sequences(tokenizer, messages, from_turn=turns - 1)
    ids, mask = r["input_ids"], r["assistant_masks"]
    start = len(mask)
    while start > 0 and mask[start - 1]:
        start -= 1
    turn = max(start - 1, 0)  # the turn's role token, <|assistant|>
    positions = [*range(turn), *range(turn + gap, len(ids) + gap)]
    return ids, [-100] * start + ids[start:], positions


def collate(examples: list[Example], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _, _ in examples)
    ids = [x + [pad] * (width - len(x)) for x, _, _ in examples]
    labels = [y + [-100] * (width - len(y)) for _, y, _ in examples]
    positions = [z + list(range(z[-1] + 1, z[-1] + 1 + width - len(z))) for _, _, z in examples]
    # Right padding under a causal mask: no real token sees a pad, so no attention mask is
    # needed, which lets SDPA take its faster causal path (7-16% per step on the CPU).
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "position_ids": torch.tensor(positions),
    }


# --- evaluation -----------------------------------------------------------------------
def evaluate(
    backend: BatchedBackend, problems: list[Problem], seed: int, rounds: int = 2, agents: int = 3
) -> dict:
    """The pipeline's own concatenation debate (mfsi.debate) with the bare model as every
    agent: per round, the agents' accuracy, parse rate and the majority's accuracy.
    single_accuracy is round 1's agent accuracy (independent samples)."""
    records = run_debate(TASK, problems, backend, [(None, None)] * agents, rounds, summarize=False, seed=seed)
    result = {"n": len(problems), "agents": agents, "rounds": rounds}
    majority_by_round = debate_metrics(records, TASK)["accuracy_by_round"]
    for m in range(rounds):
        answers = [(a, r["gold"]) for r in records for a in r["answers"][m]]
        result[f"round{m + 1}_agent_accuracy"] = mean(TASK.is_correct(a, gold) for a, gold in answers)
        result[f"round{m + 1}_parse_rate"] = mean(a is not None for a, _ in answers)
        result[f"round{m + 1}_majority"] = majority_by_round[m]
    result["single_accuracy"] = result["round1_agent_accuracy"]
    result["parse_rate"] = result["round1_parse_rate"]
    return result


# --- training -------------------------------------------------------------------------
def own_samples(backend: BatchedBackend, problems: list[Problem], k: int, seed: int) -> list[list[str]]:
    """k sampled round-1 solutions per problem, as the pipeline would sample them."""
    flat = backend.generate([(None, TASK.prompt(p)) for p in problems for _ in range(k)], seed, "own samples")
    return [flat[i * k : (i + 1) * k] for i in range(len(problems))]


def train(out: Path, recipe: Recipe, device: str = "cpu") -> float:
    """Build, train and save the model and tokenizer in `out`; returns training minutes."""
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    conf = yaml.safe_load(CONF.read_text())
    context = conf["model"]["context_length"]
    gen_cfg = GenerationConfig(**conf["generation"])
    tokenizer = build_tokenizer()
    shape = dict(hidden=recipe.hidden, layers=recipe.layers, heads=recipe.heads, ffn=recipe.ffn)
    model = LlamaForCausalLM(llama_config(len(tokenizer), context=context, **shape)).to(device)
    backend = BatchedBackend(model, tokenizer, gen_cfg, context_length=context)
    held_out = held_out_questions(recipe.eval_n, recipe.eval_seed)
    exclude = {p.question for p in held_out}
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, recipe.beta2)
    )
    total = recipe.stage1_steps + recipe.stage2_steps

    def lr_at(step: int) -> float:  # linear warmup, one cosine over both stages
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, total - recipe.warmup)
        return recipe.lr_floor + (1 - recipe.lr_floor) / 2 * (1 + math.cos(math.pi * progress))

    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "training_log.jsonl").open("w")
    pool: list[tuple[Problem, list[str]]] = []
    refresh_at = {
        recipe.stage1_steps + i * recipe.stage2_steps // recipe.refreshes for i in range(recipe.refreshes)
    }
    start, running = time.time(), []
    bar = tqdm(range(total), desc="train")
    for step in bar:
        stage = 1 if step < recipe.stage1_steps else 2
        if step in refresh_at:  # stage 2 data: the current model's own samples
            model.eval()
            chunk = recipe.stage2_steps // recipe.refreshes
            uses = recipe.uses_per_sample_set  # each use draws a different subset of the 5
            n = max(1, round(chunk * recipe.stage2_debate_share * recipe.debate_batch / uses))
            problems = [question(rng, exclude) for _ in range(n)]
            pool = list(zip(problems, own_samples(backend, problems, 5, seed=recipe.seed + step)))
            model.train()
        if stage == 2 and rng.random() < recipe.stage2_debate_share:
            examples = []
            for _ in range(recipe.debate_batch):
                p, samples = rng.choice(pool)
                n_others = 4 if rng.random() < recipe.five_agent_share else 2
                own, *others = rng.sample(samples, 1 + n_others)
                right = solution(p.question)
                others = [right if rng.random() < recipe.stage2_correct_peer else o for o in others]
                example = last_turn(tokenizer, debate_conversation(p, own, others))
                if len(example[0]) <= context:  # a rambling sample can overflow the context
                    examples.append(example)
        else:
            examples = []
            for _ in range(recipe.batch):
                p = question(rng, exclude)
                conv = [*TASK.prompt(p), {"role": "assistant", "content": solution(p.question)}]
                gap = rng.randrange(recipe.position_gap + 1) if rng.random() < recipe.gap_share else 0
                examples.append(last_turn(tokenizer, conv, gap))
        if not examples:  # every sampled conversation overflowed (only in tiny smoke runs)
            continue
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_at(step)
        batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", stage=stage)
        last = step == total - 1
        too_long = recipe.minutes is not None and time.time() - start > 60 * recipe.minutes
        if (step + 1) % recipe.log_every == 0 or last or too_long:
            model.eval()
            check = evaluate(backend, held_out[: recipe.log_n], seed=recipe.seed, rounds=1, agents=1)
            model.train()
            record = {
                "step": step + 1,
                "stage": stage,
                "minutes": round((time.time() - start) / 60, 2),
                "loss": round(sum(running) / len(running), 4),
                "accuracy": check["single_accuracy"],
                "parse_rate": check["parse_rate"],
                "n": check["n"],
            }
            running = []
            tqdm.write(json.dumps(record))
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if too_long:
            tqdm.write(f"stopping at step {step + 1}: --minutes {recipe.minutes} reached")
            break
    log_file.close()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
    return (time.time() - start) / 60


def evaluate_folder(out: Path, recipe: Recipe, device: str = "cpu") -> dict:
    """Evaluate the saved files (exactly what ships) on the held-out questions, with the
    generation settings of conf/model/tiny.yaml; merge the result into eval.json."""
    torch.set_num_threads(recipe.threads)
    conf = yaml.safe_load(CONF.read_text())
    gen_cfg = GenerationConfig(**conf["generation"])
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).to(device).eval()
    backend = BatchedBackend(model, tokenizer, gen_cfg, context_length=conf["model"]["context_length"])
    start = time.time()
    result = evaluate(backend, held_out_questions(recipe.eval_n, recipe.eval_seed), seed=recipe.seed)
    path = out / "eval.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    result = {**previous, **result}
    result.update(
        temperature=gen_cfg.temperature,
        top_p=gen_cfg.top_p,
        max_new_tokens=gen_cfg.max_new_tokens,
        eval_minutes=round((time.time() - start) / 60, 1),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--steps", type=int, help="total steps, split between the stages as in the recipe")
    parser.add_argument("--minutes", type=float, help="wall-clock cap on training (not reproducible)")
    parser.add_argument("--eval-n", type=int, default=Recipe.eval_n)
    parser.add_argument("--threads", type=int, default=Recipe.threads)
    parser.add_argument("--device", default="cpu", help="the shipped model was made on the CPU")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="change a recipe field")
    parser.add_argument("--eval-only", action="store_true", help="re-evaluate the model in --out")
    args = parser.parse_args()
    recipe = Recipe(seed=args.seed, minutes=args.minutes, eval_n=args.eval_n, threads=args.threads)
    for assignment in args.set:
        name, value = assignment.split("=", 1)
        setattr(recipe, name, type(getattr(recipe, name))(value))
    if args.steps is not None:
        stage2 = round(args.steps * recipe.stage2_steps / (recipe.stage1_steps + recipe.stage2_steps))
        recipe.stage1_steps, recipe.stage2_steps = args.steps - stage2, stage2
        recipe.log_every = min(recipe.log_every, args.steps)
    recipe.log_n = min(recipe.log_n, recipe.eval_n)
    if not args.eval_only:
        minutes = train(args.out, recipe, args.device)
        (args.out / "eval.json").write_text(json.dumps({"train_minutes": round(minutes, 1)}) + "\n")
    evaluate_folder(args.out, recipe, args.device)


if __name__ == "__main__":
    main()
