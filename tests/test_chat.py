"""Assistant turns found with any model's own chat template (no {% generation %} tags)."""

import logging

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from mfsi.chat import end_ids, render
from mfsi.errors import ConfigError
from mfsi.paths import ROOT
from mfsi.random_models import FAMILIES
from mfsi.selection import sample_examples
from mfsi.tasks import Arithmetic
from mfsi.training import IGNORE, check_encodable, encode

TASK = Arithmetic({})
ANSWER = "1+1=2. \\boxed{2}"  # the placeholder answer of sample_examples
# Where each family's answers end: the end-of-turn token generation stops at.
END = {
    "llama3": "<|eot_id|>",
    "mistral": "</s>",
    "phi3": "<|end|>",
    "qwen2": "<|im_end|>",
    "gemma2": "<end_of_turn>",
}


def loaded(folder):
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer, end_ids(model, tokenizer)


def learnt(tokenizer, encoded) -> list[str]:
    """The labelled runs of an encoded example, decoded (special tokens kept)."""
    runs, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    runs += [current] if current else []
    return [tokenizer.decode(run).strip() for run in runs]


@pytest.mark.parametrize("summarize", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_stock_templates_train_on_the_answer_and_its_end_token_in_the_generation_layout(
    family, summarize, family_model_dir
):
    tokenizer, stop = loaded(family_model_dir(family))
    generator, critic = sample_examples(TASK, summarize)
    for example in (generator, critic):
        encoded = encode(tokenizer, example, stop)
        assert learnt(tokenizer, encoded) == [ANSWER + END[family]]  # the critic not the round-1 turn
        # Laid out as generation saw it: its prompt as render(train=False) gives it, then the answer.
        prompt = render(tokenizer, example["messages"][:-1], train=False)["input_ids"]
        assert encoded["input_ids"][: len(prompt)] == prompt
        assert all(label == IGNORE for label in encoded["labels"][: len(prompt)])
        assert encoded["labels"][len(prompt) :] == encoded["input_ids"][len(prompt) :]
    check_encodable(tokenizer, stop, [generator, critic])  # the start-up check passes


def test_a_three_round_critic_learns_both_its_turns(family_model_dir):
    tokenizer, stop = loaded(family_model_dir("phi3"))  # its template ends a final turn otherwise
    _, critic = sample_examples(TASK, summarize=False)
    messages = critic["messages"]
    three_rounds = {**critic, "messages": [*messages, messages[2], {"role": "assistant", "content": "3"}]}
    assert learnt(tokenizer, encode(tokenizer, three_rounds, stop)) == [ANSWER + "<|end|>", "3<|end|>"]


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_the_tiny_models_masks_equal_its_generation_tags(rounds):
    """Its template marks assistant turns with {% generation %}: the prefix rendering must
    find exactly those tokens, so committed results keep their training tokens."""
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "models" / "tiny-arith")
    _, critic = sample_examples(TASK, summarize=False)
    messages = critic["messages"][:2] + (critic["messages"][2:] * 2)[: 2 * (rounds - 1)]
    tagged = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ours = render(tokenizer, messages, train=True, stop=[tokenizer.eos_token_id])
    assert ours["input_ids"] == list(tagged["input_ids"])
    assert ours["assistant_masks"] == list(tagged["assistant_masks"])
    for from_turn in range(rounds):
        example = {"id": "x", "messages": messages, "loss_from_turn": from_turn}
        labels = encode(tokenizer, example, [tokenizer.eos_token_id])["labels"]
        turn, old = -1, []  # the labels of the encoder that read the generation tags
        for i, (token, mask) in enumerate(zip(tagged["input_ids"], tagged["assistant_masks"])):
            turn += bool(mask and (i == 0 or not tagged["assistant_masks"][i - 1]))
            old.append(token if mask and turn >= from_turn else IGNORE)
        assert labels == old


def test_a_template_whose_renders_do_not_extend_each_other_is_refused(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # The generation prompt ends in a newline that an assistant turn does not have.
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "{% if add_generation_prompt %}<|assistant|>", "{% if add_generation_prompt %}<|assistant|>\n"
    )
    generator, _ = sample_examples(TASK, summarize=False)
    with pytest.raises(ConfigError, match="model.chat_template"):
        encode(tokenizer, generator, [tokenizer.eos_token_id])


def test_a_turn_without_an_end_token_generation_stops_at_is_warned_about(tiny_model_dir, caplog):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    generator, _ = sample_examples(TASK, summarize=False)
    stop = [tokenizer.convert_tokens_to_ids("<|system|>")]  # generation would stop at another token
    with caplog.at_level(logging.WARNING, logger="mfsi.training"):
        check_encodable(tokenizer, stop, [generator])
    assert "not a token generation stops at" in caplog.text
