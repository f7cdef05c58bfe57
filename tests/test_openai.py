"""The openai backend against a small local HTTP server that speaks chat completions: order,
served names and seeds; retries after 429 (Retry-After), 5xx and timeouts; errors that stop;
the cache that spares a rerun the finished requests; the key. Then against a real `vllm
serve` of the shipped tiny model and two adapters on 127.0.0.1 (marked engine): greedy, it
writes what our decoder writes, and a debate runs through it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from omegaconf import OmegaConf

from mfsi import loop, rundir
from mfsi.config import GenerationConfig
from mfsi.errors import ConfigError, GenerationError
from mfsi.generation import BatchedBackend, OpenAIBackend
from mfsi.generation.openai import CACHE
from mfsi.society import resolve
from mfsi.tasks import load_task

ASK = [{"role": "user", "content": "What is 3+4*5?"}]
OTHER = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "12"},
    {"role": "user", "content": "Sure?"},
]


class Endpoint(ThreadingHTTPServer):
    """Answers POST /v1/chat/completions with "<model>|<last message>|<seed>", after the
    scripted failures in `failures` ((status, headers, seconds to wait) each, in turn)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.failures: list[tuple[int, dict, float]] = []
        self.bodies: list[dict] = []  # every request received, failed or not
        self.headers_seen: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server: Endpoint = self.server
        with server.lock:
            server.bodies.append(body)
            server.headers_seen.append(dict(self.headers))
            status, headers, wait = server.failures.pop(0) if server.failures else (200, {}, 0.0)
        time.sleep(wait)
        if body["model"] == "unknown":
            status = 404
        if status == 200:
            text = f"{body['model']}|{body['messages'][-1]['content']}|{body.get('seed')}"
            reply = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": len(text), "total_tokens": 7 + len(text)},
            }
        else:
            reply = {"error": {"message": f"scripted {status}", "type": "error", "code": status}}
        data = json.dumps(reply).encode()
        try:
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = Endpoint()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def backend(endpoint, cache=None, served_base="tiny", **kw) -> OpenAIBackend:
    settings = {"base_url": endpoint.url, "api_key_env": None, "temperature": 0.0, "max_new_tokens": 16}
    settings |= {"served_adapters": "{adapter}", **kw}
    cfg = OmegaConf.structured(GenerationConfig(**settings))
    return OpenAIBackend(cfg, served_base=served_base, cache=cache)


def test_answers_come_in_order_from_each_adapters_served_model_with_a_seed_each(endpoint):
    requests = [(None, ASK), ("gen0", ASK), ("critic1", OTHER), (None, ASK), ("gen0", OTHER)]
    generator = backend(endpoint, concurrency=3, served_adapters="tiny-{adapter}")
    texts = generator.generate(requests, seed=5)
    assert generator.stats.requests == 5 and generator.stats.new_tokens == sum(map(len, texts))
    models = ["tiny", "tiny-gen0", "tiny-critic1", "tiny", "tiny-gen0"]
    asked = ["What is 3+4*5?", "What is 3+4*5?", "Sure?", "What is 3+4*5?", "Sure?"]
    assert [t.split("|")[:2] for t in texts] == [[m, a] for m, a in zip(models, asked)]
    seeds = [t.split("|")[2] for t in texts]
    assert len(set(seeds)) == 5 and texts == generator.generate(requests, seed=5)  # seeded per request
    assert texts[0] != generator.generate(requests, seed=6)[0]
    assert all(b["max_tokens"] == 16 and b["temperature"] == 0.0 for b in endpoint.bodies)
    unseeded = backend(endpoint, request_seeds=False).generate([(None, ASK)], seed=5)
    assert unseeded == ["tiny|What is 3+4*5?|None"]
    assert not any("chat_template_kwargs" in b for b in endpoint.bodies)  # OpenAI's API would refuse it
    cfg = OmegaConf.structured(GenerationConfig(base_url=endpoint.url, api_key_env=None))
    OpenAIBackend(cfg, "tiny", template_kwargs={"enable_thinking": False}).generate([(None, ASK)], seed=5)
    assert endpoint.bodies[-1]["chat_template_kwargs"] == {"enable_thinking": False}  # vLLM's server takes it


def test_rate_limits_server_errors_and_timeouts_are_retried(endpoint):
    endpoint.failures = [(429, {"Retry-After": "0.2"}, 0.0), (503, {}, 0.0), (200, {}, 3.0)]
    start = time.perf_counter()
    texts = backend(endpoint, timeout=1.0, retries=3).generate([(None, ASK)], seed=0)
    assert texts[0].startswith("tiny|What is") and len(endpoint.bodies) == 4
    assert time.perf_counter() - start >= 0.2 + 1.0  # waited as told, then gave the slow one up


def test_errors_retrying_cannot_fix_stop_with_what_the_server_said(endpoint):
    with pytest.raises(GenerationError, match=r"404 for model 'unknown'.*scripted 404"):
        backend(endpoint, served_base="unknown").generate([(None, ASK)], seed=0)
    with pytest.raises(ConfigError, match="served_adapters names no served adapters"):
        backend(endpoint, served_adapters=None).generate([("gen0", ASK)], seed=0)
    endpoint.failures = [(500, {}, 0.0)] * 3
    with pytest.raises(GenerationError, match="500"):
        backend(endpoint, retries=2).generate([(None, ASK)], seed=0)
    endpoint.server_close()  # nothing listens any more
    with pytest.raises(GenerationError, match="after 1 retries"):
        backend(endpoint, retries=1, timeout=1.0).generate([(None, ASK)], seed=0)


def test_a_rerun_sends_only_the_requests_the_cache_lacks(endpoint, tmp_path):
    cache = tmp_path / "api_cache.jsonl"
    requests = [(None, ASK), (None, ASK), ("gen0", OTHER), ("gen1", ASK)]
    endpoint.failures = [(200, {}, 0.0)] * 3 + [(400, {}, 0.0)]  # the fourth request is refused
    with pytest.raises(GenerationError, match="400"):
        backend(endpoint, cache=cache, concurrency=1).generate(requests, seed=1)
    assert len(cache.read_text().splitlines()) == 3
    sent = len(endpoint.bodies)
    rerun = backend(endpoint, cache=cache)
    texts = rerun.generate(requests, seed=1)
    assert len(endpoint.bodies) == sent + 1 and rerun.sent == 1  # only the refused one again
    assert texts == backend(endpoint).generate(requests, seed=1)  # as an uninterrupted call
    assert texts[0] != texts[1]  # the same question twice: two requests, two seeds


def test_the_key_comes_from_the_named_environment_variable(endpoint, monkeypatch):
    monkeypatch.delenv("MFSI_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="MFSI_TEST_KEY"):
        backend(endpoint, api_key_env="MFSI_TEST_KEY")
    monkeypatch.setenv("MFSI_TEST_KEY", "sk-test")
    backend(endpoint, api_key_env="MFSI_TEST_KEY").generate([(None, ASK)], seed=0)
    assert {k.lower(): v for k, v in endpoint.headers_seen[-1].items()}["authorization"] == "Bearer sk-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(served_society, tmp_path_factory):
    """`vllm serve` of the shipped tiny model ("tiny") with its adapters (served under their
    names), on 127.0.0.1; its base URL. Stopped (with every process it
    started) after the module."""
    pytest.importorskip("vllm", reason="vLLM is not installed (VLLM=none, or macOS: README, Set-up)")
    port, log = free_port(), tmp_path_factory.mktemp("server") / "vllm.log"
    adapters = [f"{name}={folder}" for name, folder in served_society.folders.items()]
    # Without chunked prefill a CPU engine can seed each request (see mfsi/generation/vllm.py).
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--model", str(resolve("models/tiny-arith")), "--served-model-name"]
    command += ["tiny", "--dtype", "float32", "--max-model-len", "1024", "--kv-cache-memory-bytes", "256M"]
    # One LoRA slot more than adapters: vLLM's CPU build gives rows without an adapter the one
    # in the last slot when both share a batch (seen in 0.32); slots fill from the
    # first, so the last stays empty.
    command += ["--enable-lora", "--max-loras", str(len(adapters) + 1), "--max-lora-rank", "16"]
    command += ["--lora-modules", *adapters]
    command += ["--no-enable-chunked-prefill"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, f"vllm serve exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vllm serve did not start:\n{log.read_text()[-3000:]}"
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(2)
        yield f"{url}/v1"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and the engine processes it started
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.engine
def test_a_served_model_and_its_adapters_answer_as_our_decoder(server, served_society, make):
    task = load_task(make("task.n_eval=2").task)
    questions = [task.prompt(p) for p in task.split("eval")]
    requests = [(adapter, q) for q in questions for adapter in (None, *served_society.adapters)]
    generator = OpenAIBackend(
        OmegaConf.structured(
            GenerationConfig(
                base_url=server,
                api_key_env=None,
                served_adapters="{adapter}",
                temperature=0.0,
                max_new_tokens=48,
            )
        ),
        served_base="tiny",
    )
    texts = generator.generate(requests, seed=0)
    local = BatchedBackend(served_society.model, served_society.tokenizer, generator.cfg, 1024)
    assert texts == local.generate(requests, seed=0)
    assert len(set(texts[:5])) == 5  # each adapter served under its own name
    assert generator.stats.new_tokens == local.stats.new_tokens


@pytest.mark.engine
def test_a_debate_of_served_adapters_runs_through_the_loop_and_a_rerun_asks_nothing(
    server, served_society, make, tmp_path
):
    served = ["generation.backend=openai", f"generation.base_url={server}", "generation.api_key_env=null"]
    cfg = make(
        "method=debate", "agents=2", "task.n_eval=6", "logger=none", "generation.temperature=0", *served
    )
    cfg.generation.served_base, cfg.generation.served_adapters = "tiny", "{adapter}"
    loop.run(cfg, tmp_path)
    records = rundir.read_jsonl(tmp_path / "iter_0" / "debate_eval.jsonl")
    # Each agent's generator answered round 1 and its critic round 2.
    asked = [
        (f"{role}{n}", r["conversations"][n][:turns])
        for r in records
        for role, turns in (("gen", 1), ("critic", 3))
        for n in range(2)
    ]
    local = BatchedBackend(served_society.model, served_society.tokenizer, cfg.generation, 1024)
    assert [text for r in records for round in r["responses"] for text in round] == local.generate(
        asked, seed=0
    )
    row = rundir.read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert row["n"] == 6 and row["embedding_dissimilarity"] is not None
    assert row["kl_divergence"] is None  # no local weights
    assert len((tmp_path / CACHE).read_text().splitlines()) == 6 * 2 * 2  # questions x agents x rounds
    (tmp_path / "iter_0" / "debate_eval.jsonl").unlink()  # as if killed before the stage ended
    (tmp_path / "metrics.jsonl").unlink()
    cfg.generation.base_url = "http://127.0.0.1:9/v1"  # nothing listens: every answer from the cache
    loop.run(cfg, tmp_path)
    assert rundir.read_jsonl(tmp_path / "iter_0" / "debate_eval.jsonl") == records
