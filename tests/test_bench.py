"""The debate benchmark script runs both patterns on the same debate and writes its JSON."""

from __future__ import annotations

import json
import sys

from experiments import bench_debate


def test_benchmark_compares_both_patterns_on_the_same_debate(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(tiny_model_dir), "--questions", "3", "--agents", "2", "--rounds", "2"]
    argv += ["--max-new-tokens", "4", "--batch-size", "4", "--repeats", "3", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench_debate.main()
    result = json.loads(out.read_text())
    for name in ("batched", "official"):
        run = result[name]
        assert list(run["by_round"]) == ["debate round 1/2", "debate round 2/2"]
        assert sum(r["new_tokens"] for r in run["by_round"].values()) == run["new_tokens"] > 0
        assert run["new_tokens"] <= 3 * 2 * 2 * 4  # questions x agents x rounds x max_new_tokens
        assert sorted(run["seconds_of_runs"])[1] == run["seconds"]  # the median of 3 runs
    assert result["speedup"] == result["batched"]["tokens_per_s"] / result["official"]["tokens_per_s"]
