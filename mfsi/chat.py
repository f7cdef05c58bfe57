"""The one chat-template rendering used by generation and by training.

Rendering with the same function on both sides means a finetuned adapter sees at
inference exactly the token layout it was trained on (the official code does not).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

Message = dict[str, str]


def render(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], *, train: bool
) -> dict[str, list[int]]:
    """Token ids for a conversation.

    train=False: the prompt for the next assistant turn (generation prompt appended).
    train=True: the whole conversation plus `assistant_masks`, 1 on assistant tokens.
    """
    out = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        add_generation_prompt=not train,
        return_assistant_tokens_mask=train,
    )
    rendered = {"input_ids": list(out["input_ids"])}
    if train:
        rendered["assistant_masks"] = list(out["assistant_masks"])
    return rendered


def cut_prompt(rendered: dict[str, list[int]], room: int) -> dict[str, list[int]]:
    """rendered with its prompt cut from the left to its last `room` tokens, as generation
    cuts a prompt longer than the context leaves it. The prompt is what precedes the first
    assistant token (all of a rendering without `assistant_masks`); every field is cut alike."""
    masks = rendered.get("assistant_masks")
    prompt = masks.index(1) if masks and 1 in masks else len(rendered["input_ids"])
    cut = max(0, prompt - room)
    return {key: values[cut:] for key, values in rendered.items()}
