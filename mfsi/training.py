"""Finetune ONE LoRA adapter of the society on its examples, with PyTorch Lightning.

    from mfsi.training import train_adapter
    result = train_adapter(model, tokenizer, "critic1", examples, cfg.finetune, seed=0)
    result["losses"]  # mean training loss of each optimizer step
    result["n_examples"], result["n_skipped_too_long"], result["steps"]

`model` is a PeftModel over a (possibly 4-bit) base holding the adapters gen{n}/critic{n};
`examples` come from mfsi.selection. Only the named adapter's parameters require grad
and reach the optimizer, so the base and every other adapter stay bit-identical. The
model's active adapter, requires_grad flags, train/eval mode and gradient-checkpointing
state are restored afterwards, so generation can continue on the same object, which
never leaves its device: training runs on the model's device (finetune.trainer "auto"),
and Lightning's moves of its module (to the device at setup, to the CPU at teardown) are
turned off.

Choices:
- Conversations are tokenised with mfsi.chat.sequences, from the renders generation uses,
  with the model's own chat template: each trained turn is laid out as generation saw and
  wrote it (its prompt, then the agent's text and the template's end of turn). The loss
  covers the agent's text and end-of-turn tokens (up to where generation stops) of the
  assistant turns numbered >= loss_from_turn, nothing the template adds by itself; a
  critic example (loss_from_turn=1) does not learn the generator's round-1 answer. An
  example is one sequence, or one per trained turn where the template renders earlier
  turns otherwise later on (it drops their reasoning).
- An example with a sequence longer than finetune.max_length tokens is skipped, counted
  and logged: cutting it would drop the final answer, the part the data was selected for.
  When every example is, training stops with a ConfigError (an untrained adapter would
  pass for one).
- A SIGTERM during fit never returns as a finished training (Lightning's graceful stop
  would): it raises mfsi.console.Stopped.
- precision "auto": bf16-mixed for a model on a GPU with bf16, else 32-true. The trained adapter's
  weights are kept in fp32 whatever the base dtype (AdamW updates in half precision
  lose small steps).
- A 4-bit base needs no peft.prepare_model_for_kbit_training here: its work (freezing
  the base, input grads for checkpointing) is done below, and its fp32 re-cast of every
  non-quantised weight would change the base and the other adapters.
- Schedule: AdamW, linear warmup over ceil(warmup_ratio * steps) steps, cosine decay to 0.
"""

from __future__ import annotations

import logging
import math
import signal
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from mfsi.chat import end_ids, pad, sequences
from mfsi.console import Stopped
from mfsi.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IGNORE = -100  # label of tokens without loss (the cross-entropy ignore_index)


def encode(tokenizer, example: dict, stop: Collection[int] | None = None) -> list[dict[str, list[int]]]:
    """The example's sequences (mfsi.chat.sequences), each as input_ids and labels: the token
    itself on the agent's text and end-of-turn tokens of assistant turns >= loss_from_turn
    (up to the first of `stop`), else -100."""
    rows = sequences(tokenizer, example["messages"], stop=stop, from_turn=example["loss_from_turn"])
    if not any(any(row["assistant_masks"]) for row in rows):
        raise DataError(
            f"example {example['id']!r}: no assistant tokens to learn from (no assistant turn "
            f"numbered >= loss_from_turn={example['loss_from_turn']}, or an empty one)"
        )
    return [
        {
            "input_ids": r["input_ids"],
            "labels": [t if m else IGNORE for t, m in zip(r["input_ids"], r["assistant_masks"])],
        }
        for r in rows
    ]


def check_encodable(tokenizer, stop: Collection[int] | None, examples: list[dict]) -> None:
    """Encode examples as training will, raising what training would raise, so that a chat
    template training cannot use fails at start-up; warn when a learned turn does not end
    on a `stop` token, since generation would then never end an answer there (stop None:
    before the model's end tokens are known, only the encoding is checked)."""
    for example in examples:
        for row in encode(tokenizer, example, stop):
            labels = [label for label in row["labels"] if label != IGNORE]
            if stop is not None and labels[-1] not in stop:
                log.warning(
                    "the chat template ends an assistant turn with %r, which is not a token generation "
                    "stops at (%s): answers will run to generation.max_new_tokens",
                    tokenizer.decode(labels[-1:]),
                    tokenizer.convert_ids_to_tokens(sorted(stop)),
                )


def collate(batch: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: pad tokens are masked out of attention and loss."""
    return {
        "input_ids": pad([b["input_ids"] for b in batch], pad_id),
        "attention_mask": pad([[1] * len(b["input_ids"]) for b in batch], 0),
        "labels": pad([b["labels"] for b in batch], IGNORE),
    }


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear up to 1 over `warmup` steps, then cosine down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class AdapterModule(pl.LightningModule):
    """Causal-LM loss on the model's trainable parameters (set by `only_adapter_trainable`)."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, warmup_ratio: float):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.step_losses: list[float] = []
        self._pending: list[torch.Tensor] = []  # micro-batch losses of the current optimizer step

    def _apply(self, fn, recurse: bool = True):
        """Lightning moves its module to the training device at setup and to the CPU at
        teardown. This module's model is the society's, which generation goes on using, so
        it stays where it is: the trainer runs on the model's device (`trainer_devices`)."""
        return self

    def on_train_start(self) -> None:
        steps = self.trainer.estimated_stepping_batches
        log.info("%s: training, %d optimizer steps", self.model.active_adapter, steps)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self._pending.append(loss.detach())
        self.log("loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.step_losses.append(torch.stack(self._pending).mean().item())
        self._pending.clear()

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches
        schedule = partial(warmup_cosine, warmup=math.ceil(self.warmup_ratio * total), total=total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@contextmanager
def only_adapter_trainable(model, adapter: str, checkpointing: bool) -> Iterator[None]:
    """Make `adapter` active and the only trainable part of the PeftModel; restore on exit."""
    if adapter not in getattr(model, "peft_config", {}):
        raise ValueError(f"model has no LoRA adapter {adapter!r}")
    active, was_training = model.active_adapter, model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.set_adapter(adapter)
    model.train()  # from_pretrained gives eval mode, and Lightning keeps submodules' modes
    for name, p in model.named_parameters():
        p.requires_grad = adapter in name.split(".")  # PEFT names them ...lora_A.<adapter>.weight
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    checkpointing = checkpointing and getattr(model, "supports_gradient_checkpointing", False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # the frozen embeddings would otherwise cut the graph
    try:
        yield
    finally:
        if checkpointing:
            model.disable_input_require_grads()
            model.gradient_checkpointing_disable()
        model.set_adapter(active)
        for name, p in model.named_parameters():
            p.requires_grad = flags[name]
        model.train(was_training)


def trainer_devices(trainer_cfg: Any, device: torch.device) -> dict[str, Any]:
    """Lightning's accelerator and devices: "auto" means the model's own device, alone."""
    accelerator, devices = trainer_cfg.accelerator, trainer_cfg.devices
    if accelerator == "auto":
        accelerator = "gpu" if device.type == "cuda" else device.type
    if devices == "auto":
        devices = [device.index or 0] if device.type == "cuda" else 1
    return {"accelerator": accelerator, "devices": devices}


def resolve_precision(trainer_cfg: Any, device: torch.device) -> str:
    """'auto' -> bf16-mixed for a model on a GPU with bf16, else 32-true; anything else as given."""
    if trainer_cfg.precision != "auto":
        return trainer_cfg.precision
    gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return "bf16-mixed" if gpu else "32-true"


def placement(trainer_cfg: Any, device: torch.device) -> dict[str, Any]:
    """Lightning's accelerator, devices, strategy and precision from cfg.finetune.trainer."""
    return {
        **trainer_devices(trainer_cfg, device),
        "strategy": trainer_cfg.strategy,
        "precision": resolve_precision(trainer_cfg, device),
    }


def check_trainer(trainer_cfg: Any, device: torch.device) -> None:
    """ConfigError unless Lightning accepts cfg.finetune.trainer for a model on `device` (a
    Trainer is built, not run)."""
    try:
        pl.Trainer(
            **placement(trainer_cfg, device),
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except Exception as e:  # Lightning raises ValueError, MisconfigurationException, RuntimeError
        settings = ", ".join(f"{k}={v!r}" for k, v in trainer_cfg.items())
        raise ConfigError(f"finetune.trainer ({settings}): {e}") from None


def train_adapter(
    model,
    tokenizer,
    adapter: str,
    examples: list[dict],
    cfg: Any,
    seed: int,
    log_dir: str | None = None,
    logger: Any = None,
) -> dict[str, Any]:
    """Finetune `adapter` on `examples` with cfg = cfg.finetune; returns losses and counts.

    n_examples counts the examples trained on (after skipping the over-long ones).
    log_dir is Lightning's root directory (a temporary one by default); nothing else is
    written there unless a Lightning `logger` is given.
    """
    stop = end_ids(model, tokenizer)
    encoded = [encode(tokenizer, e, stop) for e in examples]
    longest = [max(len(row["input_ids"]) for row in rows) for rows in encoded]
    kept = [row for rows, n in zip(encoded, longest) if n <= cfg.max_length for row in rows]
    skipped = sum(n > cfg.max_length for n in longest)
    if skipped:
        log.warning(
            "%s: skipped %d of %d examples longer than finetune.max_length=%d tokens (longest %d)",
            adapter,
            skipped,
            len(encoded),
            cfg.max_length,
            max(longest),
        )
    result = {"adapter": adapter, "n_examples": len(encoded) - skipped, "n_skipped_too_long": skipped}
    if not encoded:
        log.warning("%s: no examples to train on; the adapter is left as it is", adapter)
        return {**result, "steps": 0, "losses": []}
    if not kept:  # an adapter left untrained by a setting would look like one that learned nothing
        raise ConfigError(
            f"{adapter}: all {len(encoded)} finetuning examples are longer than finetune.max_length="
            f"{cfg.max_length} tokens (the shortest has {min(longest)}): "
            "nothing to train on; raise finetune.max_length"
        )
    device = next(model.parameters()).device
    pl.seed_everything(seed, workers=True, verbose=False)
    loader = DataLoader(
        kept,
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=partial(collate, pad_id=tokenizer.pad_token_id),
    )
    module = AdapterModule(model, cfg.lr, cfg.weight_decay, cfg.warmup_ratio)
    with (
        tempfile.TemporaryDirectory() as tmp,
        only_adapter_trainable(model, adapter, cfg.gradient_checkpointing),
    ):
        trainer = pl.Trainer(
            **placement(cfg.trainer, device),
            max_epochs=cfg.epochs,
            accumulate_grad_batches=cfg.accumulate,
            gradient_clip_val=cfg.max_grad_norm or None,
            logger=logger or False,
            enable_checkpointing=False,
            enable_model_summary=False,
            log_every_n_steps=1,
            default_root_dir=log_dir or tmp,
        )
        try:
            trainer.fit(module, train_dataloaders=loader)
        except SIGTERMException:  # Lightning's graceful stop: a SystemExit with status 0
            raise Stopped(signal.SIGTERM) from None
    if trainer.received_sigterm:  # it came after the last step: fit returned, but the run stops
        raise Stopped(signal.SIGTERM)
    log.info(
        "%s: %d steps on %d examples, loss %.4f",
        adapter,
        trainer.global_step,
        result["n_examples"],
        module.step_losses[-1],
    )
    return {**result, "steps": trainer.global_step, "losses": module.step_losses}
