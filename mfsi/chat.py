"""The one chat-template rendering used by generation and by training.

Rendering with the same function on both sides means a finetuned adapter sees at
inference exactly the token layout it was trained on (the official code does not).

Assistant turns are found with any model's own template, without `{% generation %}`
tags (which the published templates of Llama-3, Mistral, Phi-3, Qwen2.5 and Gemma lack):
the conversation is rendered prefix by prefix. An assistant turn's prompt is what
generation feeds the model (the conversation before it, with the generation prompt), and
its tokens are what the template adds after that prompt when the turn is rendered, up to
and including the first token generation stops at. A template whose renders do not
extend each other that way is refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Collection

from transformers import PreTrainedTokenizerBase

from mfsi.errors import ConfigError

Message = dict[str, str]


def end_ids(model, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn in generation: the model's generation-config
    eos ids and the tokenizer's eos (Phi-3 stops at <|end|>, Llama-3 at <|eot_id|>)."""
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(set(eos) | {tokenizer.eos_token_id} - {None})


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    *,
    train: bool,
    stop: Collection[int] | None = None,
    from_turn: int = 0,
) -> dict[str, list[int]]:
    """Token ids for a conversation.

    train=False: the prompt for the next assistant turn (generation prompt appended).
    train=True: the conversation up to its last assistant turn, laid out as generation
    produced it, plus `assistant_masks`: 1 on the tokens of the assistant turns numbered
    >= from_turn (0 = the first), each its answer and end-of-turn tokens up to the first
    of `stop` (default: the tokenizer's eos; pass `end_ids(model, tokenizer)`).
    """
    if not train:
        return {"input_ids": _ids(tokenizer, messages, prompt=True)}
    stop = {tokenizer.eos_token_id} if stop is None else set(stop)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"][from_turn:]
    if not turns:
        ids = _ids(tokenizer, messages, prompt=False)
        return {"input_ids": ids, "assistant_masks": [0] * len(ids)}
    answers = [_answer(tokenizer, messages, i, stop) for i in turns]
    prompt, answer = answers[-1]
    ids = prompt + answer
    mask = [0] * len(ids)
    for i, (prompt, answer) in zip(turns, answers):
        end = len(prompt) + len(answer)
        if ids[:end] != prompt + answer:  # an earlier turn is rendered otherwise later on
            raise _not_extending(
                tokenizer, f"assistant turn {i} is rendered differently once the conversation goes on"
            )
        mask[len(prompt) : end] = [1] * len(answer)
    return {"input_ids": ids, "assistant_masks": mask}


def _ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message], prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=prompt
    )
    return list(out["input_ids"])


def _answer(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], turn: int, stop: Collection[int]
) -> tuple[list[int], list[int]]:
    """(prompt, answer) ids of the assistant message messages[turn]: the prompt generation
    sees, and what the template adds after it for that turn, cut after the first stop token
    (Phi-3's template, for one, appends <|endoftext|> after <|end|> to a final turn)."""
    prompt = _ids(tokenizer, messages[:turn], prompt=True)
    whole = _ids(tokenizer, messages[: turn + 1], prompt=False)
    if whole[: len(prompt)] != prompt:
        raise _not_extending(
            tokenizer, f"the render up to assistant turn {turn} does not start with its prompt"
        )
    answer = whole[len(prompt) :]
    end = next((k + 1 for k, token in enumerate(answer) if token in stop), len(answer))
    return prompt, answer[:end]


def _not_extending(tokenizer: PreTrainedTokenizerBase, what: str) -> ConfigError:
    return ConfigError(
        f"the chat template of {tokenizer.name_or_path!r} cannot be trained on: {what}. Training "
        "and the diversity metrics need the conversation rendered with add_generation_prompt=True "
        "before each assistant turn to be a prefix of the conversation rendered with that turn; "
        "set model.chat_template=<a jinja file> whose renders extend each other"
    )


def cut_prompt(rendered: dict[str, list[int]], room: int) -> dict[str, list[int]]:
    """rendered with its prompt cut to `room` tokens by dropping its middle, as generation cuts
    a prompt still too long for the context: the first room // 2 tokens (the system prompt,
    the question) and the last ones (the latest instruction, the generation prompt) stay.
    The prompt is what precedes the first assistant token (all of a rendering without
    `assistant_masks`); every field is cut alike."""
    masks = rendered.get("assistant_masks")
    prompt = masks.index(1) if masks and 1 in masks else len(rendered["input_ids"])
    if prompt <= room:
        return rendered
    head, tail = room // 2, prompt - (room - room // 2)
    return {key: values[:head] + values[tail:] for key, values in rendered.items()}
