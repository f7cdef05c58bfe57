"""Local backends: our decoder equals model.generate (in fp32 and in bf16), mixed-adapter
batches equal grouped ones, sampling is seeded and top-p is the nucleus, prompt lookup
changes no output and no distribution, a growing KV cache and memory-sized batches write
the same, prefixes are reused across debate rounds (with summaries, with the Llama-3
template); over-long prompts lose their middle and are counted."""

import collections
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from mfsi.config import Config, GenerationConfig, LoraConfig, ModelConfig, TaskConfig, validate
from mfsi.debate import run_debate
from mfsi.errors import ConfigError
from mfsi.generation import BACKENDS, BatchedBackend
from mfsi.generation.batched import Prefix, Prefixes, PromptLookup, compaction, decode_attention, unique_rows
from mfsi.generation.common import Footprint, ReasoningBudget, split
from mfsi.society import Society, load_base
from mfsi.tasks import load_task

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "tiny-arith"

ASK = [{"role": "user", "content": "What is 3+4*5?"}]
OTHER = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "12"},
    {"role": "user", "content": "Sure?"},
]


@pytest.fixture(scope="module")
def society(tiny_model_dir):
    society = Society(*load_base(OmegaConf.structured(ModelConfig(path=str(tiny_model_dir)))))
    torch.manual_seed(0)  # random adapters that differ whatever ran before
    for name in ("gen0", "gen1"):
        society.add(name, OmegaConf.structured(LoraConfig(r=4, alpha=64, dropout=0.0)), init=False)
    return society


def make(model, tokenizer, cfg, context_length: int):
    """The backend cfg.backend names, as the loop's make_backend builds it."""
    return BACKENDS[cfg.backend](model, tokenizer, cfg, context_length)


def backend(society, **kw):
    cfg = OmegaConf.structured(GenerationConfig(**{"temperature": 0.0, "max_new_tokens": 12, **kw}))
    return make(society.model, society.tokenizer, cfg, context_length=256)


def test_mixed_and_grouped_adapters_generate_the_same_greedy_text(society):
    requests = [("gen0", ASK), (None, ASK), ("gen1", ASK), ("gen1", OTHER), (None, OTHER), ("gen0", OTHER)]
    grouped = backend(society, batch_size=2).generate(requests, seed=0)
    mixed = backend(society, batch_size=6, mixed_adapters=True).generate(requests, seed=0)
    chunked = backend(society, batch_size=4, mixed_adapters=True, prefill_chunk=3).generate(requests, seed=0)
    hf = backend(society, batch_size=6, mixed_adapters=True, backend="hf").generate(requests, seed=0)
    drafted = backend(society, batch_size=6, mixed_adapters=True, lookup_tokens=4).generate(requests, seed=0)
    assert mixed == grouped == chunked == hf == drafted
    assert len({grouped[0], grouped[1], grouped[2]}) == 3  # the adapters really differ


def test_a_prompt_asked_again_is_prefilled_once_and_sampled_independently(society, monkeypatch):
    requests = [(None, ASK), ("gen0", ASK), (None, ASK), (None, OTHER), (None, ASK)]
    alone = [backend(society).generate([r], seed=0)[0] for r in requests]
    assert backend(society, batch_size=5, mixed_adapters=True).generate(requests, seed=0) == alone
    prefilled = []
    forward = BatchedBackend._forward
    monkeypatch.setattr(
        BatchedBackend,
        "_forward",
        lambda self, ids, *a, **kw: prefilled.append(ids.shape) or forward(self, ids, *a, **kw),
    )
    sampled = backend(society, batch_size=5, temperature=1.0).generate([(None, ASK)] * 5, seed=0)
    assert prefilled[0][0] == 1 and len(set(sampled)) > 1  # one prompt row, five different samples


def test_unique_rows_tells_prompts_apart_by_adapter():
    ids = torch.tensor([[1, 2], [3, 4], [1, 2], [1, 2]])
    first, copies = unique_rows(ids, ["a", "a", "b", "a"])
    assert torch.equal(ids[first][copies], ids)
    assert first.tolist() == [0, 1, 2] and copies.tolist() == [0, 1, 2, 0]
    first, copies = unique_rows(ids, None)
    assert first.tolist() == [0, 1] and copies.tolist() == [0, 1, 0, 0]


def test_compaction_moves_only_rows_past_the_end_into_finished_places():
    done = torch.tensor([False, True, False, True, False, False])
    assert compaction(done).tolist() == [0, 4, 2, 5]
    assert compaction(torch.tensor([True, False])).tolist() == [1]


def test_prompt_lookup_drafts_what_followed_the_latest_occurrence_of_the_last_tokens():
    lookup = PromptLookup(tokens=8, ngram=2, min_keep=0.5)
    context = torch.tensor(
        [
            [7, 8, 1, 7, 8, 2, 3, 7, 8, 0],  # "7 8" follows itself twice: copy after the latest
            [1, 2, 3, 4, 5, 6, 1, 2, 9, 9],  # known tokens end at 8: the draft stops there
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 4],  # "8 9" never came before: no draft
        ]
    )
    drafts = lookup.drafts(context, ends=torch.tensor([9, 8, 10]), k=4)
    assert drafts.tolist() == [[2, 3, 7, 8], [3, 4, 5, 6], [-1, -1, -1, -1]]
    assert lookup.drafts(context, ends=torch.tensor([9, 8, 10]), k=1).tolist() == [[2], [3], [-1]]
    assert lookup.drafts(context[2:], ends=torch.tensor([10]), k=4).shape == (1, 0)


def test_prompt_lookup_drafts_more_tokens_the_more_of_them_are_kept():
    lookup = PromptLookup(tokens=8, ngram=3, min_keep=0.5)
    assert lookup.length() == 1  # the prior: half kept, 0.5**1 >= 0.5 > 0.5**2
    lookup.update(torch.tensor([[4, 5, 6, -1], [4, 5, -1, -1]]), kept=torch.tensor([3, 0]))
    assert (lookup.kept, lookup.missed) == (4, 2)  # the second row missed its first draft
    assert lookup.length() == 1  # alpha 2/3: 0.67 >= 0.5 > 0.44
    lookup.update(torch.tensor([[4] * 8]), kept=torch.tensor([8]))
    assert lookup.length() == 4  # alpha 12/14: 0.86**4 = 0.54
    lookup.kept = 1000
    assert lookup.length() == 8  # at most `tokens`
    lookup.missed = 1001
    assert lookup.length() == 0  # alpha just below 0.5: not even one
    assert PromptLookup(tokens=0, ngram=3, min_keep=0.5).length() == 0


@pytest.fixture(scope="module")
def shipped():
    """The shipped model and 24 arithmetic questions: its answers end at different lengths."""
    model, tokenizer = load_base(OmegaConf.structured(ModelConfig(path=str(SHIPPED))))
    task = load_task(OmegaConf.structured(TaskConfig(n_train=0, n_eval=24, seed=0)))
    requests = [(None, task.prompt(p)) for p in task.split("eval")]
    return model, tokenizer, requests


def generate(shipped, seed: int = 0, **kw) -> list[str]:
    model, tokenizer, requests = shipped
    cfg = OmegaConf.structured(GenerationConfig(max_new_tokens=96, batch_size=24, **kw))
    return make(model, tokenizer, cfg, context_length=1024).generate(requests, seed=seed)


def test_our_decoder_writes_what_model_generate_writes(shipped):
    # Rows finish at different steps, so finished rows leave the batch on the way; the
    # prompts (~60 tokens) are prefilled in 4 chunks under left padding.
    ours = generate(shipped, temperature=0.0, prefill_chunk=16)
    assert ours == generate(shipped, temperature=0.0, backend="hf")
    assert len({len(text) for text in ours}) > 5


def test_the_next_debate_round_extends_the_kept_conversations_and_writes_the_same(shipped):
    model, tokenizer, _ = shipped
    task = load_task(OmegaConf.structured(TaskConfig(n_train=0, n_eval=16, seed=0)))

    def debate(prefix_cache_mb: int):
        cfg = GenerationConfig(max_new_tokens=96, batch_size=16, prefix_cache_mb=prefix_cache_mb)
        backend = make(model, tokenizer, OmegaConf.structured(cfg), context_length=1024)
        records = run_debate(task, task.split("eval"), backend, [(None, None)] * 3, 2, False, seed=0)
        return [r["responses"] for r in records], backend.stats

    kept, on = debate(2048)
    recomputed, off = debate(0)
    assert kept == recomputed  # sampled at T=1: the same draws from the same distributions
    assert off.reused == 0 and on.reused > 0
    assert on.prefilled + on.reused >= off.prefilled > on.prefilled
    assert 0 < debate(1)[1].reused < on.reused  # 1 MB keeps one ~0.8 MB conversation per call


def test_prompt_lookup_writes_what_one_token_per_step_writes(shipped):
    # Greedy, the same logits give the same tokens: so drafts, their cache columns, masks
    # and positions, and rows advancing by different counts must all be right. Round 2 of
    # a debate, where critics quote the others, keeps many drafts.
    model, tokenizer, _ = shipped
    task = load_task(OmegaConf.structured(TaskConfig(n_train=0, n_eval=8, seed=0)))

    def debate(**kw):
        cfg = OmegaConf.structured(GenerationConfig(max_new_tokens=96, batch_size=24, temperature=0.0, **kw))
        backend = make(model, tokenizer, cfg, context_length=1024)
        records = run_debate(task, task.split("eval"), backend, [(None, None)] * 3, 2, False, seed=0)
        return [r["responses"] for r in records], backend.stats

    drafted, stats = debate(lookup_tokens=8)
    assert drafted == debate()[0]
    assert 0 < stats.accepted < stats.drafted


def test_prompt_lookup_samples_from_the_same_distribution(shipped):
    # A draft is kept only where sampling agrees, so answers are distributed as with one
    # token per step; keeping every draft unchecked moves them far (total variation ~1).
    model, tokenizer, _ = shipped
    task = load_task(OmegaConf.structured(TaskConfig(n_train=0, n_eval=2, seed=0)))
    question = task.prompt(task.split("eval")[1])  # its round-2 answers spread over 3 values

    def sample(conversation, copies: int, seed: int, **kw) -> tuple[list[str], object]:
        cfg = OmegaConf.structured(GenerationConfig(max_new_tokens=112, batch_size=copies, **kw))
        backend = make(model, tokenizer, cfg, context_length=1024)
        return backend.generate([(None, conversation)] * copies, seed=seed), backend.stats

    own, *others = sample(question, 3, seed=1)[0]
    critic = question + [{"role": "assistant", "content": own}, task.debate_prompt(others)]
    texts, stats = sample(critic, 240, seed=0, lookup_tokens=8)
    drafted = collections.Counter(map(task.extract_answer, texts))
    plain = collections.Counter(map(task.extract_answer, sample(critic, 240, seed=0)[0]))
    assert len(plain) >= 3 and stats.accepted > stats.drafted / 2
    variation = sum(((drafted - plain) + (plain - drafted)).values()) / 240 / 2
    assert variation < 0.15  # measured 0.017; between two seeds without lookup 0.058


def test_prompt_lookup_settings_are_checked():
    bad_settings = (
        dict(lookup_tokens=-1),
        dict(lookup_ngram=0),
        dict(lookup_min_keep=0.0),
        dict(lookup_tokens=4, backend="hf"),  # model.generate cannot check drafts this way
    )
    for bad in bad_settings:
        cfg = OmegaConf.structured(Config(generation=GenerationConfig(**bad)))
        with pytest.raises(ConfigError, match="lookup"):
            validate(cfg)


def test_the_old_decoder_key_names_the_new_one():
    cfg = OmegaConf.structured(Config(generation=GenerationConfig(decoder="hf")))
    with pytest.raises(ConfigError, match="generation.backend=hf"):
        validate(cfg)


def test_the_old_backend_name_names_the_new_one():
    for old in (dict(backend="mfsi"), dict(decoder="mfsi")):
        cfg = OmegaConf.structured(Config(generation=GenerationConfig(**old)))
        with pytest.raises(ConfigError, match="use generation.backend=batched"):
            validate(cfg)


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus(shipped):
    sampled = generate(shipped, seed=0)
    assert sampled == generate(shipped, seed=0)
    assert sampled != generate(shipped, seed=1)
    # A nucleus too small for a second token leaves the most likely one: greedy decoding.
    assert generate(shipped, top_p=1e-6) == generate(shipped, temperature=0.0)


@pytest.mark.parametrize(
    "setting,reason",
    [(dict(_attn_implementation="eager"), "attention eager"), (dict(sliding_window=32), "sliding window 32")],
)
def test_our_decoder_refuses_models_it_cannot_drive(tiny_model_dir, setting, reason):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    for name, value in setting.items():
        setattr(config, name, value)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, config=config)
    _, tokenizer = load_base(OmegaConf.structured(ModelConfig(path=str(tiny_model_dir))))
    cfg = OmegaConf.structured(GenerationConfig(max_new_tokens=8))
    with pytest.raises(ConfigError, match=f"{reason}.*backend=hf"):
        make(model, tokenizer, cfg, context_length=64)
    cfg.backend = "hf"
    assert make(model, tokenizer, cfg, context_length=64).generate([(None, ASK)], seed=0)


def test_prompts_longer_than_the_context_lose_their_middle_and_are_counted(society):
    b = backend(society, batch_size=4)
    long = [{"role": "user", "content": "Question: " + "1+" * 300 + "1? Answer it."}]
    whole = b.count(long)
    kept = b._prompt(long)
    assert len(kept) == b.room == 256 - 12 < whole
    assert kept == b._render(long)[:122] + b._render(long)[whole - 122 :]  # beginning and end stay
    texts = b.generate([(None, long), (None, ASK)], seed=0)
    assert len(texts) == 2 and b.stats.truncated == 2 and b.stats.requests == 2
    with pytest.raises(ConfigError, match="max_new_tokens"):
        make(society.model, society.tokenizer, OmegaConf.structured(GenerationConfig()), context_length=64)


def test_decode_attention_is_sdpa_for_one_new_position_with_grouped_heads():
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 4, 1, 8), torch.randn(3, 2, 6, 8), torch.randn(3, 2, 6, 8)
    mask = torch.rand(3, 1, 1, 6) > 0.3
    mask[..., -1] = True  # every row sees at least its own position
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), attn_mask=mask
    ).transpose(1, 2)
    got, _ = decode_attention(None, query, key, value, mask, scaling=8**-0.5)
    assert got.shape == (3, 1, 4, 8)
    torch.testing.assert_close(got, expected)


def test_decode_attention_keeps_bf16_scores_in_fp32():
    # Scores of a realistic spread (std ~3): matmuls in bf16 round them before the softmax,
    # which doubled the error over sdpa's (1.1e-2 against 5.3e-3 measured, relative to fp64).
    torch.manual_seed(0)
    query = torch.randn(8, 8, 1, 64) * 3 / 64**0.25
    key, value = torch.randn(8, 2, 256, 64) / 64**0.25, torch.randn(8, 2, 256, 64)
    mask = torch.rand(8, 1, 1, 256) > 0.1
    module = SimpleNamespace(num_key_value_groups=4)

    def attend(*inputs) -> torch.Tensor:
        return decode_attention(module, *inputs, mask, scaling=1.0)[0].double()

    exact = attend(query.double(), key.double(), value.double())
    rounded = [x.bfloat16() for x in (query, key, value)]
    floor = (attend(*(x.float() for x in rounded)) - exact).norm() / exact.norm()  # fp32 maths, bf16 inputs
    error = (attend(*rounded) - exact).norm() / exact.norm()
    assert error < 1.25 * floor


def test_bf16_greedy_output_matches_model_generate_on_a_gqa_model(family_model_dir):
    # Random Llama-3 (grouped-query attention) in bf16: 24 of 32 rows matched before the
    # decode steps' scores were kept in fp32, 32 after; model.generate at batch 16 against
    # batch 32 matches 32 on this CPU.
    config = ModelConfig(path=str(family_model_dir("llama3")), dtype="bfloat16")
    model, tokenizer = load_base(OmegaConf.structured(config))
    task = load_task(OmegaConf.structured(TaskConfig(n_train=0, n_eval=32, seed=0)))
    requests = [(None, task.prompt(p)) for p in task.split("eval")]

    def greedy(backend_name):
        cfg = GenerationConfig(max_new_tokens=48, batch_size=32, temperature=0.0, backend=backend_name)
        return make(model, tokenizer, OmegaConf.structured(cfg), 1024).generate(requests, seed=0)

    ours, theirs = greedy("batched"), greedy("hf")
    assert sum(a == b for a, b in zip(ours, theirs)) >= 30


def stored(n: int) -> Prefix:
    """Keys and values of n positions (one layer, one head, dimension 1): 8n bytes."""
    return Prefix([torch.zeros(1, n, 1)], [torch.zeros(1, n, 1)])


def test_prefix_store_finds_the_longest_common_prefix_among_the_two_calls_before():
    store = Prefixes(limit_mb=1)
    store.add("a", [1, 2, 3, 4, 5], stored(5))
    assert store.find("a", [1, 2, 3, 9]) is None  # not in the call that stored it
    store.roll()
    assert store.find("a", [1, 2, 3, 9, 9])[1] == 3  # departs after 3 tokens
    assert store.find("a", [1, 2, 3, 4, 5, 6, 7])[1] == 5  # continues it
    assert store.find("a", [1, 2, 3])[1] == 2  # a prompt's last token is always prefilled
    assert store.find("b", [1, 2, 3, 4]) is None and store.find("a", [7, 1, 2]) is None
    store.roll()  # e.g. the summaries between two debate rounds
    assert store.find("a", [1, 2, 3, 9])[1] == 3
    store.roll()
    assert store.find("a", [1, 2, 3, 9]) is None  # three calls later it is gone


def test_prefix_store_makes_room_with_conversations_already_extended():
    store = Prefixes(limit_mb=80 / 2**20)  # two 40-byte conversations
    for first in (1, 6, 11):
        store.add("a", [first, 0, 0, 0, 0], stored(5))
    assert [e.ids[0] for e in store.entries] == [1, 6]  # full: the third is not kept
    store.roll()
    assert store.find("a", [1, 0, 7])[1] == 2
    store.add("a", [11, 0, 0, 0, 0], stored(5))  # the extended one makes room
    assert [e.ids[0] for e in store.entries] == [6, 11]
    assert store.find("a", [1, 0, 7]) is None and store.find("a", [6, 0, 7])[1] == 2


@pytest.mark.parametrize("summarize", [False, True])
def test_the_next_round_reuses_the_last_with_the_llama3_template(family_model_dir, summarize):
    # The template trims answers and the decoded answer re-tokenises otherwise than the tokens
    # generated: whole-conversation keys found nothing here (0 tokens reused), with or
    # without summaries; with summaries the call in between also rolled them away.
    model, tokenizer = load_base(OmegaConf.structured(ModelConfig(path=str(family_model_dir("llama3")))))
    task = load_task(OmegaConf.structured(TaskConfig(n_train=0, n_eval=4, seed=0)))
    # One row per batch: a batch prefills from one column for all its rows, so rows of other
    # lengths would recompute part of what the store found for them (not counted as reused).
    cfg = OmegaConf.structured(GenerationConfig(max_new_tokens=16, batch_size=1))
    b = make(model, tokenizer, cfg, context_length=1024)
    run_debate(task, task.split("eval"), b, [(None, None)] * 3, 2, summarize, seed=0)
    round_one = sum(len(b._render(task.prompt(p))) for p in task.split("eval")) * 3
    assert b.stats.reused >= round_one - 12  # at least round 1's prompts, but their last token


def test_a_growing_kv_cache_writes_what_a_preallocated_one_writes(shipped):
    # Rows of different lengths: the cache grows 8 positions at a time, rows leave the
    # batch between growths, and with prompt-lookup drafts rows write at their own columns.
    model, tokenizer, requests = shipped

    def run(**kw):
        cfg = GenerationConfig(max_new_tokens=96, batch_size=24, temperature=0.0, **kw)
        b = make(model, tokenizer, OmegaConf.structured(cfg), context_length=1024)
        return b.generate(requests, seed=0), b.stats.peak_cache_bytes

    reserved, most = run(cache_growth=96)
    grown, peak = run(cache_growth=8)
    assert grown == reserved and peak < most
    assert run(cache_growth=8, lookup_tokens=4)[0] == reserved


def test_auto_batches_take_as_many_rows_as_the_memory_budget_fits(shipped):
    model, tokenizer, requests = shipped
    footprint = Footprint.of(model)
    assert footprint.cached == 2 * 4 * 4 * 32 * 4  # keys and values x layers x heads x dim x fp32
    assert [len(b) for b in split([9, 8, 5, 5, 2], lambda width: 10 // width)] == [1, 1, 2, 1]
    assert [len(b) for b in split([9, 8, 5], lambda width: 2)] == [2, 1]

    def run(**kw):
        cfg = GenerationConfig(max_new_tokens=96, temperature=0.0, batch_size="auto", **kw)
        b = make(model, tokenizer, OmegaConf.structured(cfg), context_length=1024)
        return b.generate(requests, seed=0), b.stats.largest_batch

    assert run() == (generate(shipped, temperature=0.0), len(requests))  # a few MB: all in one
    assert run(memory_fraction=1e-9)[1] == 1  # a budget too small for any row: one at a time


def test_batch_size_and_cache_settings_are_checked():
    model = ModelConfig(path="models/tiny-arith")
    assert (
        validate(OmegaConf.structured(Config(model=model, generation=GenerationConfig(batch_size="auto"))))
        is None
    )
    for key, bad in [("batch_size", "big"), ("batch_size", 0), ("memory_fraction", 0.0), ("cache_growth", 0)]:
        cfg = OmegaConf.structured(Config(generation=GenerationConfig(**{key: bad})))
        with pytest.raises(ConfigError, match=f"generation.{key}"):
            validate(cfg)


def test_a_reasoning_budget_cuts_only_responses_still_reasoning_at_it():
    """ids: 7 = <think>, 8 = </think>, 0 = pad; a budget of 3 new tokens."""
    new = torch.tensor(
        [
            [7, 1, 2, 3, 4, 0],  # opened its reasoning, not closed by token 3: cut
            [7, 1, 8, 3, 4, 0],  # closed it in time: kept
            [1, 2, 3, 4, 5, 6],  # no reasoning: kept
            [1, 2, 0, 0, 0, 0],  # shorter than the budget: kept
        ]
    )
    budget = ReasoningBudget(tokens=3, think=7, think_end=8, opened=False)
    assert budget.unfinished(new).tolist() == [True, False, False, False]
    assert budget.cut(new, pad=0).tolist() == [[7, 1, 2, 0, 0, 0], *new[1:].tolist()]
    opened = ReasoningBudget(tokens=3, think=7, think_end=8, opened=True)  # the prompt opened it (R1)
    assert opened.unfinished(new).tolist() == [True, False, True, True]
    assert opened.cut(new, pad=0)[2].tolist() == [1, 2, 3, 0, 0, 0]
