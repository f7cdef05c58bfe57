"""generation.backend=hf: Hugging Face's model.generate (dynamic KV cache) on the in-process
model. Works with any causal LM, including those our decoder refuses (attention other than
sdpa, sliding windows); slower, and without prefix reuse or prompt lookup."""

from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from mfsi.generation.common import LocalBackend, ReasoningBudget, adapter_kwargs


class OverBudget(StoppingCriteria):
    """Stops the rows past generation.max_reasoning_tokens whose reasoning is still open."""

    def __init__(self, budget: ReasoningBudget, prompt_width: int):
        self.budget, self.width = budget, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.width :]
        if new.shape[1] < self.budget.tokens:
            return torch.zeros(len(new), dtype=torch.bool, device=new.device)
        return self.budget.unfinished(new)


class HFBackend(LocalBackend):
    def _decode(self, input_ids, real, names, rows) -> torch.Tensor:
        kwargs = adapter_kwargs(names)
        if self.budget:
            kwargs["stopping_criteria"] = StoppingCriteriaList([OverBudget(self.budget, input_ids.shape[1])])
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
