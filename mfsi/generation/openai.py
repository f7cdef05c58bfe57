"""generation.backend=openai: any OpenAI-compatible chat-completions endpoint.

    python run.py model=gpt35 method=debate             # OpenAI's API, key in OPENAI_API_KEY
    python run.py method=debate generation.backend=openai generation.base_url=http://127.0.0.1:8000/v1 \
        generation.api_key_env=null                     # e.g. `vllm serve` of the run's model

A request is one chat completion of its conversation (the server applies its own chat
template, with model.chat_template_kwargs when set, as vLLM's server takes them) by the
model served for its adapter: generation.served_base (default model.path)
for None, generation.served_adapters with {adapter} replaced for gen{n}/critic{n} (what
`vllm serve --lora-modules gen0=<folder> ...` serves; the loop then debates with them).
Up to generation.concurrency requests are in flight; the `openai` client gives each attempt
generation.timeout seconds and retries it up to generation.retries times after a connection
error, a timeout, 408, 409, 429 or 5xx, waiting as the server's Retry-After says or with
exponential backoff (0.5 s doubling to 8 s, jittered). Other errors (a wrong URL, key or
model name) stop the run with the server's message. Each request carries its own seed
(`request_seeds`; generation.request_seeds=false sends none, for servers that fail on them).

Finished responses are appended, as they arrive, to a cache in the run directory
(api_cache.jsonl, keyed by the request and its seed): a stage interrupted and rerun sends
only the requests it has no response for. Generation only: no weights are local, so
nothing trains (methods with finetuning are refused by the config check).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from mfsi import rundir
from mfsi.errors import ConfigError, GenerationError
from mfsi.generation.common import Backend, Request, Stats, request_seeds

log = logging.getLogger(__name__)

CACHE = "api_cache.jsonl"


def api_key(cfg) -> str:
    """The key from the environment variable generation.api_key_env names (cfg: generation)."""
    if cfg.api_key_env is None:
        return "none"  # the endpoint checks no key, but the client needs a value
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ConfigError(
            f"generation.api_key_env={cfg.api_key_env!r}: that environment variable is not set; export "
            "it with your API key (or set generation.api_key_env=null for an endpoint that needs none)"
        )
    return key


class ResponseCache:
    """Finished responses by request (a JSON line each, appended and flushed as they come);
    path None keeps nothing."""

    def __init__(self, path: Path | None):
        self.path, self.responses = path, {}
        if path is not None and path.exists():
            for entry in rundir.read_jsonl(path, skip_damaged=True):  # a line cut short: asked again
                if isinstance(entry, dict) and "key" in entry and "response" in entry:
                    self.responses[entry["key"]] = entry["response"]

    @staticmethod
    def key(body: dict, seed: int) -> str:
        """Identical requests of one call (agents sharing a model) differ by their seeds."""
        return hashlib.sha256(json.dumps([body, seed], sort_keys=True).encode()).hexdigest()

    def add(self, key: str, response: dict) -> None:
        if self.path is None:
            return
        self.responses[key] = response
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "response": response}) + "\n")


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible endpoint (module doc)."""

    @classmethod
    def preflight(cls, cfg) -> None:
        api_key(cfg.generation)  # the model is not local: nothing of it to read

    @classmethod
    def create(cls, cfg, society, run_dir: Path | None = None) -> OpenAIBackend:
        cache = run_dir / CACHE if run_dir is not None and cfg.generation.cache else None
        return cls(
            cfg.generation,
            served_base=cfg.generation.served_base or cfg.model.path,
            cache=cache,
            template_kwargs=OmegaConf.to_container(cfg.model.chat_template_kwargs),
        )

    def __init__(self, cfg, served_base: str, cache: Path | None = None, template_kwargs: dict | None = None):
        import openai  # imported here: only this backend needs it

        self.cfg, self.served_base = cfg, served_base
        self.template_kwargs = template_kwargs or {}
        self.client = openai.OpenAI(
            base_url=cfg.base_url, api_key=api_key(cfg), timeout=cfg.timeout, max_retries=cfg.retries
        )
        self.cache = ResponseCache(cache)
        self.stats = Stats()
        self.sent = 0  # requests answered by the endpoint (not from the cache)

    def served(self, adapter: str | None) -> str:
        """The model name the endpoint serves an adapter (None: the base model) under."""
        if adapter is None:
            return self.served_base
        if self.cfg.served_adapters is None:
            raise ConfigError(f"adapter {adapter!r}: generation.served_adapters names no served adapters")
        return self.cfg.served_adapters.format(adapter=adapter)

    def generate(self, requests: Sequence[Request], seed: int, desc: str = "generate") -> list[str]:
        seeds = request_seeds(seed, len(requests))
        bodies = [self._body(adapter, messages, s) for (adapter, messages), s in zip(requests, seeds)]
        keys = [ResponseCache.key(body, s) for body, s in zip(bodies, seeds)]
        answered = {k: self.cache.responses[k] for k in keys if k in self.cache.responses}
        if answered:
            log.info("%s: %d of %d responses from the cache", desc, len(answered), len(requests))
        missing = {k: body for k, body in zip(keys, bodies) if k not in answered}
        pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency)
        try:
            futures = {pool.submit(self._complete, body): k for k, body in missing.items()}
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc, leave=False):
                answered[futures[future]] = future.result()
                self.cache.add(futures[future], answered[futures[future]])
                self.sent += 1
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error: no new requests
        texts = []
        for (adapter, _), k in zip(requests, keys):
            response = answered[k]
            texts.append(response["text"])
            self.stats.new_tokens += response["completion_tokens"]
            self.stats.prefilled += response["prompt_tokens"]
            self.stats.by_adapter[adapter or "__base__"] += 1
        self.stats.requests += len(requests)
        return texts

    def _body(self, adapter: str | None, messages: list, seed: int) -> dict:
        body = {
            "model": self.served(adapter),
            "messages": messages,
            "max_tokens": self.cfg.max_new_tokens,
            "temperature": self.cfg.temperature,
            "top_p": self.cfg.top_p,
        }
        if self.template_kwargs:  # a field of vLLM's server, passed to its chat template
            body["extra_body"] = {"chat_template_kwargs": self.template_kwargs}
        return {**body, "seed": seed} if self.cfg.request_seeds else body

    def _complete(self, body: dict) -> dict:
        """One chat completion: its text and token counts."""
        import openai

        where = self.cfg.base_url or "OpenAI's API"
        try:
            completion = self.client.chat.completions.create(**body)
        except openai.APIStatusError as e:  # refused, or still failing after the retries
            raise GenerationError(
                f"{where} answered {e.status_code} for model {body['model']!r}: {e.message}"
            ) from None
        except openai.APIConnectionError as e:  # unreachable, or timed out, after the retries
            raise GenerationError(
                f"{where}: {e.message} (after {self.cfg.retries} retries of {self.cfg.timeout:g} s "
                "each; see generation.base_url, generation.timeout, generation.retries)"
            ) from None
        usage = completion.usage
        return {
            "text": completion.choices[0].message.content or "",
            "completion_tokens": usage.completion_tokens if usage else 0,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
        }
