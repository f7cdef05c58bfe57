"""HFBackend: mixed-adapter batches equal grouped ones; over-long prompts are cut and counted."""

import pytest
from omegaconf import OmegaConf

from mfsi.config import GenerationConfig, LoraConfig, ModelConfig
from mfsi.errors import ConfigError
from mfsi.generation import HFBackend
from mfsi.society import Society, load_base

ASK = [{"role": "user", "content": "What is 3+4*5?"}]
OTHER = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "12"},
    {"role": "user", "content": "Sure?"},
]


@pytest.fixture(scope="module")
def society(tiny_model_dir):
    society = Society(*load_base(OmegaConf.structured(ModelConfig(path=str(tiny_model_dir)))))
    for name in ("gen0", "gen1"):
        society.add(name, OmegaConf.structured(LoraConfig(r=4, alpha=64, dropout=0.0)), init=False)
    return society


def backend(society, **kw):
    cfg = OmegaConf.structured(GenerationConfig(temperature=0.0, max_new_tokens=12, **kw))
    return HFBackend(society.model, society.tokenizer, cfg, context_length=256)


def test_mixed_and_grouped_adapters_generate_the_same_greedy_text(society):
    requests = [("gen0", ASK), (None, ASK), ("gen1", ASK), ("gen1", OTHER), (None, OTHER), ("gen0", OTHER)]
    grouped = backend(society, batch_size=2).generate(requests, seed=0)
    mixed = backend(society, batch_size=6, mixed_adapters=True).generate(requests, seed=0)
    static = backend(society, batch_size=4, mixed_adapters=True, cache="static").generate(requests, seed=0)
    assert mixed == grouped == static
    assert len({grouped[0], grouped[1], grouped[2]}) == 3  # the adapters really differ


def test_prompts_longer_than_the_context_are_cut_and_counted(society):
    b = backend(society, batch_size=4)
    long = [{"role": "user", "content": "1+" * 300 + "1"}]
    texts = b.generate([(None, long), (None, ASK)], seed=0)
    assert len(texts) == 2 and b.stats.truncated == 1 and b.stats.requests == 2
    with pytest.raises(ConfigError, match="max_new_tokens"):
        HFBackend(
            society.model, society.tokenizer, OmegaConf.structured(GenerationConfig()), context_length=64
        )
