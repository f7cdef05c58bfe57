"""The one chat-template rendering used by generation, training and the diversity scores.

    set_template_kwargs(tokenizer, {"enable_thinking": False}, started)  # once, at loading
    ids = prompt_ids(tokenizer, messages)          # what generation feeds the model
    rows = sequences(tokenizer, messages, stop)    # what training learns and diversity scores

Rendering with the same function on every side means a finetuned adapter sees at inference
exactly the token layout it was trained on (the official code does not).

Template arguments. Every render passes the tokenizer's `chat_template_kwargs`: the
config's model.chat_template_kwargs (Qwen3's enable_thinking) and `strftime_now` reading
the run's start time, which shadows the clock transformers gives templates, so a template
that prints today's date (Llama-3.2's "%d %b %Y", Mistral-Small-3.1's "%Y-%m-%d") renders
every prompt of a run, resumed on another day or not, as on its first day.

What is trained. An assistant turn is laid out as generation saw and wrote it: its prompt
(the conversation before it rendered with the generation prompt, tokenised as generation
tokenised it), then the agent's own text and the template's end of turn (what the template
writes after a turn's content, up to and including the first token generation stops at,
found by rendering a turn whose content is a sentinel). Only the text and the end of turn
carry loss. Whatever a template inserts into an assistant turn by itself (Qwen3's empty
<think></think> block, a date, a prefix) is neither, so it is never trained or scored, by
construction. Two details keep the layout the template's own: whitespace a template puts
between the generation prompt and the content (Mistral's " ", which a SentencePiece
decoder drops from the start of the generated text) is put back, and the text is
tokenised together with its prompt unless that would change the prompt's tokens (a
tokenizer merging across the boundary: then the prompt keeps generation's tokens and the
text is tokenised on its own, as after a special token). Several trained turns (a critic
of 3+ rounds) share one sequence when each turn's prompt extends the sequence so far;
otherwise (templates that drop earlier reasoning or trim history) each turn gets its own
sequence, laid out as generation saw it.

Reasoning. A response may think before it answers (<think> ... </think>, Qwen3 in thinking
mode; DeepSeek-R1 distills, whose generation prompt opens the block: `opens_reasoning`).
The stored response is the whole generated text; its answer is what follows the last
</think> (`final_answer`), and a response whose reasoning never ended has none.

A template that fails to render (a Jinja error, a missing variable) raises ConfigError
naming the model and the template's own error line.
"""

from __future__ import annotations

import traceback
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from mfsi.errors import ConfigError

Message = dict[str, str]
THINK, THINK_END = "<think>", "</think>"
KWARGS = "chat_template_kwargs"  # the tokenizer attribute set_template_kwargs sets
SENTINEL = "MFSI_TURN_SENTINEL"  # an assistant turn's content, to find what the template writes around it


def set_template_kwargs(
    tokenizer: PreTrainedTokenizerBase, kwargs: Mapping[str, Any], started: datetime | None = None
) -> None:
    """Fix the keyword arguments every render of this tokenizer's template gets: kwargs, and
    with `started` a strftime_now that formats that time instead of the clock's."""
    fixed = {"strftime_now": started.strftime} if started else {}
    setattr(tokenizer, KWARGS, {**kwargs, **fixed})


def end_ids(model, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn in generation: the model's generation-config
    eos ids and the tokenizer's eos (Phi-3 stops at <|end|>, Llama-3 at <|eot_id|>)."""
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(set(eos) | {tokenizer.eos_token_id} - {None})


def render_text(tokenizer: PreTrainedTokenizerBase, messages: list[Message], prompt: bool) -> str:
    """The template's text for messages, with the generation prompt when `prompt`."""
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt, **getattr(tokenizer, KWARGS, {})
        )
    except Exception as e:
        if isinstance(e, TemplateError) or _template_line(e):
            raise _failed(tokenizer, e) from None
        raise


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of text as apply_chat_template tokenises a render (no special tokens added)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> list[int]:
    """The token ids generation feeds the model to write the next assistant turn."""
    return _ids(tokenizer, render_text(tokenizer, messages, prompt=True))


def sequences(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    stop: Collection[int] | None = None,
    from_turn: int = 0,
) -> list[dict[str, list[int]]]:
    """The sequences that lay out the assistant turns numbered >= from_turn (0 = the first)
    as generation saw and wrote them (module doc): input_ids, and assistant_masks with 1 on
    each turn's text and end-of-turn tokens, up to the first of `stop` (default: the
    tokenizer's eos; pass `end_ids(model, tokenizer)`). Empty without such a turn."""
    stop = {tokenizer.eos_token_id} if stop is None else set(stop)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"][from_turn:]
    rows: list[dict[str, list[int]]] = []
    for turn in turns:
        prompt_text = render_text(tokenizer, messages[:turn], prompt=True)
        prompt = _ids(tokenizer, prompt_text)
        answer = _answer(tokenizer, messages[:turn], prompt_text, prompt, messages[turn]["content"], stop)
        last = rows[-1] if rows else None
        if last and prompt[: len(last["input_ids"])] == last["input_ids"]:  # the turn continues it
            last["assistant_masks"] += [0] * (len(prompt) - len(last["input_ids"])) + [1] * len(answer)
            last["input_ids"] = prompt + answer
        else:
            rows.append(
                {"input_ids": prompt + answer, "assistant_masks": [0] * len(prompt) + [1] * len(answer)}
            )
    return rows


def _answer(
    tokenizer: PreTrainedTokenizerBase,
    before: list[Message],
    prompt_text: str,
    prompt: list[int],
    content: str,
    stop: Collection[int],
) -> list[int]:
    """The token ids of an assistant turn's text and end of turn, after its prompt."""
    opening, end = _turn_frame(tokenizer, before, prompt_text, stop)
    joined = _ids(tokenizer, prompt_text + opening + content + end)
    if joined[: len(prompt)] == prompt:
        return joined[len(prompt) :]
    # Merged across the prompt's end: the prompt keeps generation's tokens, and the text is
    # tokenised as after a special token (no word start of its own added: SentencePiece).
    return _ids(tokenizer, tokenizer.eos_token + opening + content + end)[1:]


def _turn_frame(
    tokenizer: PreTrainedTokenizerBase, before: list[Message], prompt_text: str, stop: Collection[int]
) -> tuple[str, str]:
    """(opening, end) of an assistant turn after the conversation `before`: the whitespace the
    template puts between the generation prompt and the content (Mistral's " "; anything
    else there is the template's own insertion, left out), and what it writes after the
    content up to and including the first stop token (all of it if none is there)."""
    whole = render_text(tokenizer, [*before, {"role": "assistant", "content": SENTINEL}], prompt=False)
    at = whole.rfind(SENTINEL)
    if at < 0:
        raise ConfigError(
            f"the chat template of {tokenizer.name_or_path!r} does not show an assistant turn's content, so "
            "nothing could be trained: set model.chat_template=<a jinja file> that renders assistant turns"
        )
    opening = whole[len(prompt_text) : at] if whole.startswith(prompt_text) else ""
    after = whole[at + len(SENTINEL) :]
    ends = [after.find(t) + len(t) for t in (tokenizer.decode([i]) for i in stop) if t and t in after]
    return (opening if opening.isspace() else ""), after[: min(ends)] if ends else after


def _template_line(error: Exception) -> int | None:
    """The line of the chat template an error was raised at, if it was raised there."""
    line = getattr(error, "lineno", None)  # a syntax error
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == "<template>":
            line = frame.lineno
    return line


def _failed(tokenizer: PreTrainedTokenizerBase, error: Exception) -> ConfigError:
    line, source = _template_line(error), tokenizer.chat_template
    lines = source.splitlines() if isinstance(source, str) else []
    where = f" at line {line} ({lines[line - 1].strip()})" if line and line <= len(lines) else ""
    said = " ".join(str(error).split())  # one line
    return ConfigError(
        f"the chat template of model {tokenizer.name_or_path!r} fails to render{where}: "
        f"{type(error).__name__}: {said}; set model.chat_template=<a jinja file> whose template renders"
    )


def opens_reasoning(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the template's generation prompt opens a reasoning block for the model to close
    (DeepSeek-R1 distills end it with '<think>\\n'); such responses start inside it."""
    prompt = render_text(tokenizer, [{"role": "user", "content": "?"}], prompt=True)
    return prompt.rfind(THINK) > prompt.rfind(THINK_END)


def final_answer(text: str, opened: bool = False) -> str | None:
    """What a response says after its reasoning: the text after its last </think>, all of it
    when it has no reasoning, None when its reasoning never ended (the response opened
    <think>, or started inside it: `opened`, and was cut off before </think>)."""
    if THINK_END in text:
        return text.rsplit(THINK_END, 1)[1].lstrip()
    return None if opened or THINK in text else text


def pad(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    """Rows of token ids (or masks) as one tensor [rows, longest] filled out with `value`: on
    the right for training and scoring, on the left for generation (every prompt then ends
    at the last column, where the new tokens start)."""
    width = max(map(len, rows))
    filled = [([value] * (width - len(row)), list(row)) for row in rows]
    return torch.tensor([fill + row if left else row + fill for fill, row in filled])


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
