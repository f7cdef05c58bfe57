"""experiments/gpu_check.py at a tiny shape on the CPU: every check runs and passes."""

import json

from experiments import gpu_check


def test_the_gpu_check_runs_at_a_tiny_shape_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    argv = ["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--quantizations", "none,nf4"]
    argv += ["--agents", "2", "--questions", "3", "--max-new-tokens", "4", "--greedy-rows", "4"]
    argv += ["--context-length", "512", "--threads", "1", "--out", str(out)]
    assert gpu_check.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and report["config"]["shape"] == "tiny"
    for run in report["runs"].values():
        assert run["loaded"]["adapters"] == 4
        assert (
            run["train"]["steps"] == 2 and run["train"]["on_device"] and run["train"]["others_bit_identical"]
        )
        for way in ("grouped", "mixed", "mixed_auto"):  # 3 questions x 2 agents x 2 rounds x up to 4 tokens
            assert 0 < run["debate"][way]["new_tokens"] <= 48
        assert run["debate"]["mixed_auto"]["largest_batch"] == 6  # all requests of a round fit
    assert report["runs"]["none"]["greedy"] == {"rows": 3, "identical": 3}  # fp32: our decoder = generate
