"""generation.backend=vllm: vLLM's engine in this process on the shipped tiny model (fp32),
its bare base and two adapters. Greedy, it writes what our decoder writes; sampling is
seeded per request; the loop serves each iteration's new adapters. Every test here shares
one engine (it takes about a minute to start on a CPU); -m "not engine" skips them."""

import pytest
import torch
from omegaconf import OmegaConf

from mfsi import loop, rundir
from mfsi.config import LoraConfig
from mfsi.generation import BatchedBackend, make_backend
from mfsi.society import Society, load_base
from mfsi.tasks import load_task
from mfsi.testing.random_models import build

pytest.importorskip("vllm", reason="vLLM is not installed (VLLM=none, or macOS: README, Set-up)")
vllm_backend = pytest.importorskip("mfsi.generation.vllm")
pytestmark = pytest.mark.engine

ENGINE = ["agents=2", "debate.rounds=1", "generation.backend=vllm"]  # every test here: one engine
OTHER = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "12"},
    {"role": "user", "content": "Sure?"},
]


@pytest.fixture(scope="module")
def small(make):
    """small(*overrides): conftest's small run with this module's engine."""
    return lambda *overrides: make(*ENGINE, *overrides)


@pytest.fixture(scope="module", autouse=True)
def one_engine():
    yield
    vllm_backend.shutdown()  # before other modules start engines of their own


@pytest.fixture(scope="module")
def requests(small):
    task = load_task(small().task)
    questions = [task.prompt(p) for p in task.split("eval")] + [OTHER]
    return [(adapter, q) for q in questions for adapter in (None, "gen0", "gen1", "critic0", "critic1")]


def ours(society, cfg, requests, seed=0) -> list[str]:
    return BatchedBackend.create(cfg, society).generate(requests, seed=seed)


def test_greedy_output_is_our_decoders_for_the_base_and_each_adapter(served_society, requests, small):
    cfg = small("generation.temperature=0")
    with make_backend(cfg, served_society) as generator:
        texts = generator.generate(requests, seed=0)
    # Every LoRA slot of the engine (2 per agent) holds an adapter: the base model's rows
    # must still get none (see VllmBackend._calls).
    assert texts == ours(served_society, cfg, requests)
    assert len(set(texts[:5])) == 5  # the adapters really differ
    stats = generator.stats
    assert stats.requests == len(requests) and set(stats.by_adapter.values()) == {5}
    assert stats.new_tokens > len(requests) and stats.prefilled + stats.reused > 10 * len(requests)


def test_sampling_is_seeded_per_request_whatever_else_is_in_the_call(served_society, requests, small):
    with make_backend(small(), served_society) as generator:
        texts = generator.generate(requests, seed=1)
        assert generator.generate(requests, seed=1) == texts
        assert generator.generate(requests[:4], seed=1) == texts[:4]
        again = generator.generate([requests[1]] * 8, seed=2)  # agents sharing gen0
    assert len(set(texts)) == len(texts) and len(set(again)) == 8


def test_new_weights_under_an_old_name_are_served(served_society, requests, small, tmp_path):
    cfg = small("generation.temperature=0")
    with make_backend(cfg, served_society) as generator:
        before = generator.generate(requests[:3], seed=0)
    torch.manual_seed(7)
    served_society.add("gen0", OmegaConf.structured(LoraConfig(dropout=0.0)), init=False)
    served_society.save("gen0", tmp_path / "gen0")  # the next iteration's folder
    with make_backend(cfg, served_society) as generator:
        after = generator.generate(requests[:3], seed=0)
    assert after[1] != before[1] and after[::2] == before[::2]  # only gen0 changed
    assert after == ours(served_society, cfg, requests[:3])


def test_one_iteration_serves_the_adapters_it_trains_as_our_decoder_does(small, tmp_path):
    # Greedy, both runs agree on every debate, so they select the same data and train the
    # same adapters (at a learning rate that changes answers): iteration 1 then differs
    # unless vLLM serves the new weights.
    runs = {}
    for backend in ("batched", "vllm"):
        cfg = small("generation.temperature=0", "finetune.lr=0.01", f"generation.backend={backend}")
        loop.run(cfg, tmp_path / backend)
        runs[backend] = [
            [
                r["responses"]
                for r in rundir.read_jsonl(tmp_path / backend / f"iter_{i}" / "debate_eval.jsonl")
            ]
            for i in (0, 1)
        ]
    assert runs["vllm"] == runs["batched"]
    assert runs["vllm"][0] != runs["vllm"][1]  # the adapters changed the answers


def test_shutdown_between_stages_frees_the_engine(served_society, requests, small):
    with make_backend(small("generation.vllm_release=shutdown"), served_society) as generator:
        assert generator.generate(requests[:1], seed=0)
        assert vllm_backend._running is not None
    assert vllm_backend._running is None


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_a_real_family_with_its_stock_template_writes_what_our_decoder_writes(family, small, tmp_path):
    # Random weights of the real architecture (grouped-query attention; Qwen2's q/k/v biases)
    # with its published chat template and stop tokens: the prompt, the adapter and the end
    # of an answer are what they will be on the 7-8B models. Their head size, 128 (vLLM's
    # CPU attention has no kernel for the 16 of the tiny shape).
    shape = {"hidden": 256, "layers": 2, "heads": 2, "kv_heads": 1, "ffn": 512, "vocab": None}
    cfg = small(f"model.path={build(family, tmp_path / family, shape=shape)}", "generation.temperature=0")
    society = Society(*load_base(cfg.model))
    torch.manual_seed(0)
    society.add("gen0", OmegaConf.structured(LoraConfig(dropout=0.0)), init=False)
    society.save("gen0", tmp_path / "gen0")
    task = load_task(cfg.task)
    questions = [task.prompt(p) for p in task.split("eval")[:3]] + [OTHER]
    requests = [(adapter, q) for q in questions for adapter in (None, "gen0")]
    with make_backend(cfg, society) as generator:
        texts = generator.generate(requests, seed=0)
    assert texts == ours(society, cfg, requests)
    assert texts[::2] != texts[1::2]  # the adapter changes answers, so the test can tell
