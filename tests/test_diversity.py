"""Diversity metrics on constructed debates: known zeros, known orderings, batching = one by one."""

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mfsi.chat import cut_prompt, sequences
from mfsi.diversity import embedding_dissimilarity, model_diversity, round1_conversation


def record(question: str, round1: list[str], final: list[str]) -> dict:
    """A two-round debate record in mfsi.debate's layout (only the fields the metrics read)."""
    conversations = [
        [
            {"role": "user", "content": question},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "Others said something."},
            {"role": "assistant", "content": last},
        ]
        for first, last in zip(round1, final)
    ]
    return {"question": question, "responses": [round1, final], "conversations": conversations}


# Responses of different lengths, so batches are padded.
RECORDS = [
    record("What is 2+3*4?", ["2+12 = 14. \\boxed{14}", "\\boxed{14}", "3*4=12, so 14"], ["14", "14", "20"]),
    record("What is 7-5?", ["2", "7-5 is \\boxed{2}", "I think \\boxed{3}"], ["2", "2", "2"]),
]


def test_embedding_dissimilarity_zero_for_identical_and_positive_for_different_texts():
    same = [record("q", ["a"] * 3, ["The answer is 14."] * 3)]
    different = [record("q", ["a"] * 3, ["The answer is 14.", "I like green apples.", "Paris is in France."])]
    assert embedding_dissimilarity(same) == pytest.approx([0], abs=1e-5)
    assert embedding_dissimilarity(different)[0] > 0.3
    assert embedding_dissimilarity([record("q", ["a"], ["one agent"])]) is None
    assert embedding_dissimilarity([]) is None


def test_embedding_dissimilarity_per_question_with_any_embedder():
    # A fake embedder: text -> fixed unit vector, to check the arithmetic exactly.
    table = {"x": [1.0, 0.0], "y": [0.0, 1.0]}
    embed = lambda texts: torch.tensor([table[t] for t in texts])  # noqa: E731
    records = [record("q", ["a"] * 3, ["x", "x", "y"]), record("q", ["a"] * 3, ["x", "x", "x"])]
    # question 1: pairs (x,x)=1, (x,y)=0, (x,y)=0 -> 1 - 1/3; question 2: 0
    assert embedding_dissimilarity(records, embed) == pytest.approx([2 / 3, 0])


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny base with gen0 and gen1 = the base (LoRA B = 0) and gen2 random (non-zero)."""
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(**lora), adapter_name="gen0")
    model.add_adapter("gen1", LoraConfig(**lora))
    model.add_adapter("gen2", LoraConfig(**lora, init_lora_weights=False))
    return model.eval()


def own_nll(model, tokenizer, conversation, adapter: str) -> float:
    """Reference: mean NLL of the last assistant turn, one unpadded sequence at a time."""
    [rendered] = sequences(tokenizer, conversation)
    ids = torch.tensor([rendered["input_ids"]])
    model.set_adapter(adapter)
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    mask = torch.tensor(rendered["assistant_masks"][1:], dtype=torch.bool)
    return float(-logp[mask].gather(1, ids[0, 1:][mask, None]).mean())


def test_identical_agents_have_zero_kl_and_likelihood_diversity_equal_to_own_nll(model, tokenizer):
    scores = model_diversity(model, tokenizer, RECORDS, ["gen0", "gen1", "gen0"], batch_size=4)
    assert scores["kl_divergence"] == pytest.approx(0, abs=1e-6)
    assert scores["kl_from_base"] == pytest.approx(0, abs=1e-6)
    own = [own_nll(model, tokenizer, round1_conversation(r, k), "gen0") for r in RECORDS for k in range(3)]
    assert scores["likelihood_diversity"] == pytest.approx(sum(own) / len(own), rel=1e-5)


def test_a_different_adapter_shows_as_kl_and_does_not_depend_on_batching(model, tokenizer):
    adapters = ["gen0", "gen1", "gen2"]
    scores = model_diversity(model, tokenizer, RECORDS, adapters, batch_size=5)
    assert scores["kl_divergence"] > 1e-3
    # gen2 differs from the base on its own responses (gen0 and gen1 add zeros).
    assert scores["kl_from_base"] > 1e-4
    one_by_one = model_diversity(model, tokenizer, RECORDS, adapters, batch_size=1)
    assert one_by_one == pytest.approx(scores, rel=1e-4)


def test_one_agent_has_no_pairwise_diversity(model, tokenizer):
    scores = model_diversity(model, tokenizer, RECORDS[:1], ["gen2"])
    assert scores["likelihood_diversity"] is None and scores["kl_divergence"] is None
    assert scores["kl_from_base"] > 0


def test_base_model_without_adapters(tiny_model_dir, tokenizer):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    scores = model_diversity(base, tokenizer, RECORDS, [None, None, None])
    assert scores["kl_divergence"] == 0 and scores["kl_from_base"] == 0
    assert scores["likelihood_diversity"] > 0


def test_a_prompt_longer_than_the_context_is_cut_as_generation_cuts_it(model, tokenizer, caplog):
    """A 225k-character question: scored with its prompt cut to prompt_room tokens as
    generation cut it (the middle goes), instead of one forward over 225k positions."""
    question = "1+" * 112_500 + "1"
    [rendered] = sequences(tokenizer, round1_conversation(record(question, ["2"], ["2"]), 0))
    prompt = rendered["assistant_masks"].index(1)
    cut = cut_prompt(rendered, room=100)
    assert cut["assistant_masks"].index(1) == 100  # the prompt is 100 tokens
    for key, values in rendered.items():  # its first and last 50 tokens, then the answer
        assert cut[key] == values[:50] + values[prompt - 50 :]
    assert cut_prompt(rendered, room=10**6) == rendered

    long = record(question, ["2+1 = \\boxed{3}", "\\boxed{3}", "3"], ["3", "3", "3"])
    with caplog.at_level(logging.WARNING):
        scores = model_diversity(model, tokenizer, [long], ["gen0", "gen1", "gen2"], prompt_room=100)
    assert "3 prompts longer than the context lost their middle" in caplog.text
    assert scores["kl_divergence"] > 0 and scores["likelihood_diversity"] > 0
    # Prompts that fit are scored as before.
    adapters = ["gen0", "gen1", "gen2"]
    assert model_diversity(model, tokenizer, RECORDS, adapters, prompt_room=1000) == pytest.approx(
        model_diversity(model, tokenizer, RECORDS, adapters)
    )
