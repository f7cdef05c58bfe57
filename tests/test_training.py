"""Training one LoRA adapter of a two-adapter society on the tiny random model (CPU)."""

import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mfsi.config import FinetuneConfig, ModelConfig
from mfsi.config import LoraConfig as LoraSettings
from mfsi.errors import ConfigError
from mfsi.selection import sample_examples
from mfsi.society import Society, load_base
from mfsi.tasks import Arithmetic
from mfsi.training import IGNORE, encode, resolve_precision, train_adapter, trainer_devices, warmup_cosine


def gen(id_, question, answer):
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"id": id_, "messages": messages, "loss_from_turn": 0, "kind": "gen"}


CRITIC = {
    "id": "q#0/critic",
    "messages": [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": "Others: 2"},
        {"role": "assistant", "content": "2 then"},
    ],
    "loss_from_turn": 1,
    "kind": "C-",
}
DATA = [gen("a", "1+1?", "2"), gen("b", "2+3?", "5"), gen("c", "4*4?", "16"), CRITIC]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def society(path, embedding_scale=1.0, **load):
    """The tiny base wrapped with two non-zero LoRA adapters, gen0 and critic0."""
    base = AutoModelForCausalLM.from_pretrained(path, **load)
    with torch.no_grad():
        base.get_input_embeddings().weight.mul_(embedding_scale)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)  # the random LoRA init
    model = get_peft_model(base, lora, adapter_name="gen0")
    model.add_adapter("critic0", lora)
    return model


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def finetune_cfg(**overrides):
    cfg = FinetuneConfig(lr=1e-2, epochs=1, batch_size=2, warmup_ratio=0.0)
    cfg.trainer.accelerator = "cpu"
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_loss_mask_covers_only_the_critics_own_turn(tokenizer):
    [(ids, labels)] = [row.values() for row in encode(tokenizer, CRITIC)]
    learnt = [t for t, label in zip(ids, labels) if label != IGNORE]
    assert [label for label in labels if label != IGNORE] == learnt
    assert tokenizer.decode(learnt) == "2 then<|end|>"
    # the labelled tokens are contiguous and end the conversation
    first = labels.index(learnt[0])
    assert all(label != IGNORE for label in labels[first:]) and len(labels) - first == len(learnt)
    [(_, gen_labels)] = [row.values() for row in encode(tokenizer, DATA[0])]
    assert tokenizer.decode([t for t in gen_labels if t != IGNORE]) == "2<|end|>"


def test_only_the_named_adapter_changes(tiny_model_dir, tokenizer):
    model = society(tiny_model_dir)
    model.set_adapter("critic0")
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = snapshot(model)
    result = train_adapter(model, tokenizer, "gen0", DATA, finetune_cfg(), seed=0)
    assert result["steps"] == 2 and len(result["losses"]) == 2 and result["n_examples"] == 4
    for name, p in model.named_parameters():
        if ".gen0." in name:
            assert not torch.equal(p, before[name]), f"{name} was not trained"
        else:
            assert torch.equal(p, before[name]), f"{name} changed"
    # the model is handed back as it came: active adapter, grad flags
    assert model.active_adapter == "critic0" and not model.is_gradient_checkpointing
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}


def test_loss_decreases_and_is_deterministic(tiny_model_dir, tokenizer):
    # The random tied embeddings (std 0.02) give near-zero logits that a LoRA over frozen
    # embeddings can barely sharpen; scaled up, overfitting four examples shows clearly.
    cfg = finetune_cfg(epochs=8, gradient_checkpointing=False)
    runs = [
        train_adapter(society(tiny_model_dir, embedding_scale=10), tokenizer, "critic0", DATA, cfg, seed=3)
        for _ in range(2)
    ]
    losses = runs[0]["losses"]  # two steps per epoch
    assert len(losses) == 16 and sum(losses[-2:]) < 0.7 * sum(losses[:2])
    assert runs[0]["losses"] == runs[1]["losses"]


def test_over_long_examples_are_skipped_and_counted(tiny_model_dir, tokenizer):
    long = gen("long", "x" * 200, "1")
    cfg = finetune_cfg(max_length=64, batch_size=1, accumulate=2)
    result = train_adapter(society(tiny_model_dir), tokenizer, "gen0", [long, *DATA], cfg, seed=0)
    assert result["n_skipped_too_long"] == 1 and result["n_examples"] == 4
    assert result["steps"] == 2 and len(result["losses"]) == 2  # 4 batches of 1, 2 per step
    model = society(tiny_model_dir)
    before = snapshot(model)
    # Every example too long: a stop, not an untrained adapter that looks like one that learned nothing.
    with pytest.raises(
        ConfigError, match=r"gen0: all 1 finetuning examples are longer than finetune\.max_length=64 "
    ):
        train_adapter(model, tokenizer, "gen0", [long], finetune_cfg(max_length=64), seed=0)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_nf4_base_trains_one_adapter_on_cpu(tiny_model_dir, tokenizer):
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    try:
        model = society(tiny_model_dir, quantization_config=quant, device_map="cpu")
    except Exception as e:  # bitsandbytes without CPU 4-bit support
        pytest.skip(f"bitsandbytes 4-bit unavailable on CPU: {e}")
    assert any(type(p).__name__ == "Params4bit" for p in model.parameters())
    before = snapshot(model)
    result = train_adapter(model, tokenizer, "gen0", DATA[:2], finetune_cfg(batch_size=2), seed=0)
    assert result["steps"] == 1
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".gen0." in name for name in changed)


def test_schedule_and_precision():
    assert [round(warmup_cosine(s, warmup=2, total=6), 3) for s in range(6)] == [0.5, 1, 1, 0.854, 0.5, 0.146]
    assert resolve_precision(finetune_cfg().trainer, torch.device("cpu")) == "32-true"


def test_lightning_never_moves_the_model(tiny_model_dir, tokenizer, monkeypatch):
    """Lightning moves its module to the device at setup and to the CPU after fit: the
    society's model must stay where generation uses it (on a GPU, the CPU move cost 10x)."""
    model = society(tiny_model_dir)
    moved = []
    apply = torch.nn.Module._apply

    def spy(module, fn, recurse=True):
        if module is model:
            moved.append(fn)
        return apply(module, fn, recurse)

    monkeypatch.setattr(torch.nn.Module, "_apply", spy)
    result = train_adapter(model, tokenizer, "gen0", DATA, finetune_cfg(), seed=0)
    assert result["steps"] == 2 and not moved


def test_training_runs_on_the_models_own_device_alone():
    cfg = FinetuneConfig().trainer  # accelerator and devices "auto"
    assert trainer_devices(cfg, torch.device("cpu")) == {"accelerator": "cpu", "devices": 1}
    assert trainer_devices(cfg, torch.device("cuda", 1)) == {"accelerator": "gpu", "devices": [1]}
    cfg.devices = "2"  # multi-GPU only when asked
    assert trainer_devices(cfg, torch.device("cuda", 0)) == {"accelerator": "gpu", "devices": "2"}


@pytest.mark.parametrize("family", ["qwen2", "llama3"])
def test_qlora_after_an_inference_pass_trains_as_without_one(family, family_model_dir):
    """bitsandbytes repacks 4-bit weights for a CPU kernel without autograd at the first
    inference pass (on CPUs with AVX512-BF16, like this one): training after a debate then
    crashed on Qwen2's biases and lost the gradient through Llama's base weights."""
    runs = []
    for infer_first in (False, True):
        cfg = OmegaConf.structured(
            ModelConfig(name="hf", path=str(family_model_dir(family)), quantization="nf4")
        )
        team = Society(*load_base(cfg))
        torch.manual_seed(0)
        lora = OmegaConf.structured(LoraSettings(r=4, alpha=8))
        team.add("gen0", lora)
        team.add("critic0", lora, init=False)
        if infer_first:  # as the debates before a finetuning stage do
            with torch.inference_mode():
                team.model(torch.tensor([[1, 2, 3]]))
        before = snapshot(team.model)
        examples = sample_examples(Arithmetic({}), summarize=False)
        result = train_adapter(team.model, team.tokenizer, "gen0", examples, finetune_cfg(), seed=0)
        changed = {name for name, p in team.model.named_parameters() if not torch.equal(p, before[name])}
        assert changed and all(".gen0." in name for name in changed)  # the others stay bit-identical
        runs.append((result["losses"], {name: team.model.get_parameter(name) for name in sorted(changed)}))
    (losses, trained), (losses_after, trained_after) = runs
    assert losses == losses_after
    assert trained.keys() == trained_after.keys()
    assert all(torch.equal(trained[name], trained_after[name]) for name in trained)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_model_stays_on_the_gpu_through_training(tiny_model_dir, tokenizer):
    model = society(tiny_model_dir).cuda()
    before = snapshot(model)
    cfg = finetune_cfg()
    cfg.trainer.accelerator = "auto"
    result = train_adapter(model, tokenizer, "gen0", DATA, cfg, seed=0)
    assert result["steps"] == 2
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters() if ".gen0." not in name)
