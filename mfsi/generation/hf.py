"""generation.backend=hf: Hugging Face's model.generate (dynamic KV cache) on the in-process
model. Works with any causal LM, including those our decoder refuses (attention other than
sdpa, sliding windows); slower, and without prefix reuse or prompt lookup."""

from __future__ import annotations

import torch

from mfsi.generation.common import LocalBackend, adapter_kwargs


class HFBackend(LocalBackend):
    def _decode(self, input_ids, real, names, rows) -> torch.Tensor:
        kwargs = adapter_kwargs(names)
        if self.cfg.temperature > 0:
            kwargs.update(temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=real,
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=self.cfg.temperature > 0,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **kwargs,
        )
        return out[:, input_ids.shape[1] :]
