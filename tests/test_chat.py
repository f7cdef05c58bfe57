"""The one chat rendering: what each family's published template trains (exactly the agent's
text and the end of its turn, laid out as generation saw it), template arguments and fixed
dates, reasoning, and templates that fail."""

import logging
from datetime import datetime

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mfsi.chat import (
    end_ids,
    final_answer,
    opens_reasoning,
    pad,
    prompt_ids,
    render_text,
    sequences,
    set_template_kwargs,
)
from mfsi.errors import ConfigError
from mfsi.paths import ROOT
from mfsi.selection import sample_examples
from mfsi.tasks import Arithmetic
from mfsi.testing.random_models import FAMILIES, TEMPLATES
from mfsi.training import IGNORE, check_encodable, encode

TASK = Arithmetic({})
ANSWER = "1+1=2. \\boxed{2}"  # the placeholder answer of sample_examples
# Where each family's answers end: the end-of-turn token generation stops at.
END = {
    "llama3": "<|eot_id|>",
    "llama3.2": "<|eot_id|>",
    "mistral": "</s>",
    "mistral3.1": "</s>",
    "phi3": "<|end|>",
    "phi4mini": "<|end|>",
    "qwen2": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "r1qwen": "<｜end▁of▁sentence｜>",
    "gemma2": "<end_of_turn>",
    "gemma3": "<end_of_turn>",
}
THOUGHT = "<think>\nOne and one.\n</think>\n\n" + ANSWER  # a Qwen3 response in thinking mode


def loaded(folder, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    set_template_kwargs(tokenizer, kwargs)
    return tokenizer, end_ids(model, tokenizer)


def learnt(tokenizer, row) -> list[str]:
    """The labelled runs of an encoded sequence, decoded (special tokens kept)."""
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    return [tokenizer.decode(run) for run in [*runs, current] if run]


def laid_out_as_generated(tokenizer, row, messages) -> bool:
    """The sequence starts with the prompt generation fed for the last turn, without loss."""
    prompt = prompt_ids(tokenizer, messages[:-1])
    return row["input_ids"][: len(prompt)] == prompt and set(row["labels"][: len(prompt)]) == {IGNORE}


def answered(example: dict, text: str) -> dict:
    """example with its trained (last) turn's text replaced."""
    return {**example, "messages": [*example["messages"][:-1], {"role": "assistant", "content": text}]}


@pytest.mark.parametrize("summarize", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_published_templates_train_the_answer_and_its_end_token_in_the_generation_layout(
    family, summarize, family_model_dir
):
    tokenizer, stop = loaded(family_model_dir(family))
    for example in sample_examples(TASK, summarize):
        [row] = encode(tokenizer, example, stop)
        # Mistral v0.2 puts " " before an answer (a SentencePiece word start): part of the turn.
        assert [t.strip() for t in learnt(tokenizer, row)] == [ANSWER + END[family]]  # not the round-1 turn
        assert laid_out_as_generated(tokenizer, row, example["messages"])
    check_encodable(tokenizer, stop, sample_examples(TASK, summarize))  # the start-up check passes


@pytest.mark.parametrize("thinking", [True, False])
def test_qwen3_never_trains_the_think_block_its_template_inserts(thinking, family_model_dir):
    """Thinking mode: the template writes an empty think block into the last assistant turn
    (never generated, never trained); enable_thinking=false: the generation prompt holds it
    (prompt, not trained). Either way the agent's own text is learnt, reasoning included."""
    tokenizer, stop = loaded(family_model_dir("qwen3"), **({} if thinking else {"enable_thinking": False}))
    generator, critic = sample_examples(TASK, summarize=False)
    assert "<think>" in render_text(tokenizer, generator["messages"], prompt=False)  # the scaffolding
    prompt = render_text(tokenizer, generator["messages"][:1], prompt=True)
    assert prompt.endswith("<think>\n\n</think>\n\n") != thinking
    for example in (generator, critic, answered(generator, THOUGHT), answered(critic, THOUGHT)):
        [row] = encode(tokenizer, example, stop)
        assert learnt(tokenizer, row) == [example["messages"][-1]["content"] + "<|im_end|>"]
        assert laid_out_as_generated(tokenizer, row, example["messages"])
    assert not opens_reasoning(tokenizer)


@pytest.mark.parametrize("family", ["qwen3", "r1qwen"])
def test_a_critic_whose_template_drops_earlier_reasoning_gets_a_sequence_per_turn(family, family_model_dir):
    """A three-round critic of a reasoning model: its round-3 prompt shows its round-2 turn
    without the reasoning, so each trained turn is laid out, alone, as generation saw it."""
    tokenizer, stop = loaded(family_model_dir(family))
    thought = THOUGHT if family == "qwen3" else THOUGHT.removeprefix("<think>\n")  # R1's prompt opens it
    _, critic = sample_examples(TASK, summarize=False)
    first, ask = critic["messages"][:2], critic["messages"][2]
    messages = [
        *first,
        ask,
        {"role": "assistant", "content": thought},
        ask,
        {"role": "assistant", "content": "3"},
    ]
    rows = encode(tokenizer, {**critic, "messages": messages}, stop)
    assert [learnt(tokenizer, row) for row in rows] == [[thought + END[family]], ["3" + END[family]]]
    assert laid_out_as_generated(tokenizer, rows[0], messages[:4])
    assert laid_out_as_generated(tokenizer, rows[1], messages)
    assert "One and one" not in tokenizer.decode(rows[1]["input_ids"])  # the template dropped it
    assert opens_reasoning(tokenizer) == (family == "r1qwen")


def test_a_three_round_critic_learns_both_its_turns_in_one_sequence(family_model_dir):
    tokenizer, stop = loaded(family_model_dir("phi3"))  # its template ends a final turn otherwise
    _, critic = sample_examples(TASK, summarize=False)
    messages = critic["messages"]
    three_rounds = {**critic, "messages": [*messages, messages[2], {"role": "assistant", "content": "3"}]}
    [row] = encode(tokenizer, three_rounds, stop)
    assert learnt(tokenizer, row) == [ANSWER + "<|end|>", "3<|end|>"]


@pytest.mark.parametrize("text", ["\n" + ANSWER, " " + ANSWER, ANSWER + "\n\n"])
@pytest.mark.parametrize("family", ["phi3", "gemma3", "llama3"])
def test_whitespace_around_an_answer_is_learnt_after_the_prompt_generation_fed(
    family, text, family_model_dir
):
    """Phi-3's and Gemma's prompts end in a newline that a newline starting the answer merges
    with into one token: the prompt keeps generation's tokens, and the answer is learnt whole."""
    tokenizer, stop = loaded(family_model_dir(family))
    generator, _ = sample_examples(TASK, summarize=False)
    example = answered(generator, text)
    [row] = encode(tokenizer, example, stop)
    assert laid_out_as_generated(tokenizer, row, example["messages"])
    prompt = prompt_ids(tokenizer, example["messages"][:-1])
    assert tokenizer.decode(row["input_ids"]) == tokenizer.decode(prompt) + text + END[family]
    assert row["labels"][len(prompt) :] == row["input_ids"][len(prompt) :]


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_the_tiny_models_masks_equal_its_generation_tags(rounds):
    """Its template marks assistant turns with {% generation %}: the sequences must hold
    exactly those tokens, so committed results keep their training tokens."""
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "models" / "tiny-arith")
    _, critic = sample_examples(TASK, summarize=False)
    messages = critic["messages"][:2] + (critic["messages"][2:] * 2)[: 2 * (rounds - 1)]
    tagged = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    [ours] = sequences(tokenizer, messages, stop=[tokenizer.eos_token_id])
    assert ours["input_ids"] == list(tagged["input_ids"])
    assert ours["assistant_masks"] == list(tagged["assistant_masks"])
    for from_turn in range(rounds):
        example = {"id": "x", "messages": messages, "loss_from_turn": from_turn}
        [row] = encode(tokenizer, example, [tokenizer.eos_token_id])
        turn, old = -1, []  # the labels of the encoder that read the generation tags
        for i, (token, mask) in enumerate(zip(tagged["input_ids"], tagged["assistant_masks"])):
            turn += bool(mask and (i == 0 or not tagged["assistant_masks"][i - 1]))
            old.append(token if mask and turn >= from_turn else IGNORE)
        assert row["labels"] == old


def test_a_generation_prompt_unlike_the_turns_it_starts_is_trained_as_generation_saw_it(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # The generation prompt ends in a newline that a rendered assistant turn does not have.
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "{% if add_generation_prompt %}<|assistant|>", "{% if add_generation_prompt %}<|assistant|>\n"
    )
    generator, _ = sample_examples(TASK, summarize=False)
    [row] = encode(tokenizer, generator, [tokenizer.eos_token_id])
    assert learnt(tokenizer, row) == [ANSWER + "<|end|>"]
    assert laid_out_as_generated(tokenizer, row, generator["messages"])


@pytest.mark.parametrize(
    ("family", "shown"),
    [("llama3.2", "Today Date: %d %b %Y\n"), ("mistral3.1", "The current date is %Y-%m-%d.")],
)
def test_dated_templates_render_the_run_start_in_their_own_format(family, shown, family_model_dir):
    """strftime_now, given as a render argument, shadows the clock transformers gives every
    template, whatever format the template asks for."""
    tokenizer, _ = loaded(family_model_dir(family))
    messages = sample_examples(TASK, summarize=False)[0]["messages"][:1]
    assert datetime.now().strftime(shown) in render_text(tokenizer, messages, prompt=True)  # the clock's
    started = datetime(2025, 1, 31, 23, 59)
    set_template_kwargs(tokenizer, {}, started)
    assert started.strftime(shown) in render_text(tokenizer, messages, prompt=True)


def test_a_template_that_fails_to_render_names_the_model_and_its_own_line(family_model_dir):
    """llama.cpp's Phi-4-mini template iterates over `tools`, which transformers passes as None."""
    tokenizer, stop = loaded(family_model_dir("phi4mini"))
    tokenizer.chat_template = (TEMPLATES / "phi4-mini-instruct-llama-cpp.jinja").read_text()
    with pytest.raises(ConfigError) as failed:
        check_encodable(tokenizer, None, sample_examples(TASK, summarize=False))
    message = str(failed.value)
    assert str(family_model_dir("phi4mini")) in message and "model.chat_template=" in message
    assert "line 10 ({% for tool in tools %})" in message and "'NoneType' object is not iterable" in message
    assert "\n" not in message


def test_the_answer_of_a_response_follows_its_reasoning():
    assert final_answer(ANSWER) == ANSWER  # no reasoning: all of it
    assert final_answer(THOUGHT) == ANSWER
    assert final_answer("sum.\n</think>\n\n" + ANSWER, opened=True) == ANSWER  # R1: the prompt opened it
    assert final_answer("<think>\nOne and one make") is None  # cut off inside the reasoning
    assert final_answer("One and one make", opened=True) is None
    assert final_answer("<think>a</think>b</think>\n c") == "c"


def test_a_turn_without_an_end_token_generation_stops_at_is_warned_about(tiny_model_dir, caplog):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    generator, _ = sample_examples(TASK, summarize=False)
    stop = [tokenizer.convert_tokens_to_ids("<|system|>")]  # generation would stop at another token
    with caplog.at_level(logging.WARNING, logger="mfsi.training"):
        check_encodable(tokenizer, stop, [generator])
    assert "not a token generation stops at" in caplog.text


def test_pad_fills_token_rows_out_on_either_side():
    """One helper pads training's batches and the diversity scorer's (right) and generation's (left)."""
    assert pad([[1, 2, 3], [4]], 0).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad([[1, 2, 3], [4]], 9, left=True).tolist() == [[1, 2, 3], [9, 9, 4]]
    assert pad([(5, 6)], 0).dtype == torch.int64
