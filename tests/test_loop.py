"""The finetuning loop end to end on the shipped tiny model: files, methods, kill and resume."""

import shutil
from pathlib import Path

import pytest

from mfsi import loop, resume, rundir, training
from mfsi.errors import ConfigError, DataError
from mfsi.selection import agrees
from mfsi.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]


def test_one_iteration_writes_the_run_directory(finished_run):
    run_dir, summary = finished_run
    for name in (
        "config.yaml",
        "splits.json",
        "metrics.jsonl",
        "summary.json",
        "accuracy_by_iteration.png",
        "iter_0/debate_eval.jsonl",
        "iter_0/debate_train.jsonl",
        "iter_1/data/sizes.json",
        "iter_1/data.done.json",
        "iter_1/adapters/gen0.done.json",
        "iter_1/debate_eval.jsonl",
        "iter_1/debate_eval.done.json",
        "config_history.jsonl",
    ):
        assert (run_dir / name).is_file(), name
    rows = rundir.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]
    for key in (
        "accuracy",
        "stderr",
        "accuracy_by_round",
        "agent_accuracy",
        "consensus",
        "parse_failure_rate",
        "embedding_dissimilarity",
        "likelihood_diversity",
        "kl_divergence",
        "kl_from_base",
    ):
        assert key in rows[1], key
    assert rows[0]["kl_from_base"] == 0 and rows[1]["data_sizes"]
    # Per question, in the eval split's order: what the report's paired tests compare.
    records = rundir.read_jsonl(run_dir / "iter_1/debate_eval.jsonl")
    assert [r["id"] for r in records] == rundir.read_json(run_dir / "splits.json")["eval"]
    per_question = rows[1]["per_question"]
    assert per_question["correct"] == [int(r["correct"]) for r in records]
    assert sum(per_question["correct"]) / len(records) == rows[1]["accuracy"]
    assert sum(per_question["agreeing"]) / (3 * len(records)) == pytest.approx(rows[1]["consensus"])
    dissimilarity = per_question["embedding_dissimilarity"]
    assert sum(dissimilarity) / len(records) == pytest.approx(rows[1]["embedding_dissimilarity"], abs=1e-5)
    assert rows[0]["questions"] == rows[1]["questions"]  # the same eval questions each iteration
    assert summary["final"]["iteration"] == 1


def test_each_generator_learns_only_its_own_agreeing_answers(finished_run, make):
    run_dir, _ = finished_run
    task = load_task(make().task)
    records = rundir.read_jsonl(run_dir / "iter_0/debate_train.jsonl")
    sizes = rundir.read_json(run_dir / "iter_1/data/sizes.json")
    for n in range(3):
        agreeing = [r for r in records if agrees(task, r["answers"][0][n], r["majority"])]
        data = rundir.read_jsonl(run_dir / f"iter_1/data/gen{n}.jsonl")
        assert sizes[f"gen{n}"]["n"] == len(data) == len(agreeing)
        assert [e["messages"] for e in data] == [r["conversations"][n][:2] for r in agreeing]
        if data:  # trained and saved in PEFT format, then used by that agent
            assert (run_dir / f"iter_1/adapters/gen{n}/adapter_config.json").is_file()
    assert sum(s["n"] for s in sizes.values()) > 0


class Killed(Exception):
    """Stands in for a SIGKILL at a chosen point."""


def test_killed_between_stages_and_inside_training_resumes_to_the_same_files(
    finished_run, make, snapshot, tmp_path, monkeypatch
):
    reference_dir, _ = finished_run
    with monkeypatch.context() as patch:  # killed after the debates, before selection
        patch.setattr(loop, "selection_stage", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            loop.run(make(), tmp_path)
    assert (tmp_path / "iter_0/debate_train.jsonl").exists() and not (tmp_path / "iter_1").exists()

    seen: list[str] = []
    step = training.AdapterModule.training_step

    def dies_in_second_adapter(self, batch, batch_idx):
        if self.model.active_adapter not in seen:
            seen.append(self.model.active_adapter)
        if len(seen) == 2:
            raise Killed()
        return step(self, batch, batch_idx)

    with monkeypatch.context() as patch:  # killed inside the second adapter's training
        patch.setattr(training.AdapterModule, "training_step", dies_in_second_adapter)
        with pytest.raises(Killed):
            loop.run(make(), tmp_path)
    assert len(list((tmp_path / "iter_1/adapters").glob("*.done.json"))) == 1  # one adapter finished

    loop.run(make(), tmp_path)
    assert snapshot(tmp_path) == snapshot(reference_dir)


def test_a_finished_run_is_not_redone(finished_run, make):
    run_dir, summary = finished_run

    def stamps():
        return {
            p: p.stat().st_mtime_ns
            for p in run_dir.rglob("*.json*")
            if p.name not in (resume.HISTORY, "summary.json")
        }

    before, starts = stamps(), len(rundir.read_jsonl(run_dir / resume.HISTORY))
    assert loop.run(make(), run_dir)["final"] == summary["final"]
    assert stamps() == before
    assert len(rundir.read_jsonl(run_dir / resume.HISTORY)) == starts + 1  # each start is recorded


def test_resume_with_a_changed_config_names_the_difference(finished_run, make):
    run_dir, _ = finished_run
    with pytest.raises(ConfigError, match=r"finetune.critic_weight: 0.5 -> 0.7"):
        loop.run(make("finetune.critic_weight=0.7"), run_dir)


def test_a_run_made_before_a_config_key_existed_resumes_when_it_holds_its_default(
    finished_run, make, tmp_path
):
    run_dir, _ = finished_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / resume.HISTORY).unlink()  # a run made before the history, and before debate.agent_ids
    config = (old / "config.yaml").read_text()
    assert "  agent_ids: false\n" in config
    (old / "config.yaml").write_text(config.replace("  agent_ids: false\n", ""))
    resume.check_resume(make(), old)  # the default is what that run did
    with pytest.raises(ConfigError, match=r"debate.agent_ids: False -> True"):
        resume.check_resume(make("debate.agent_ids=true"), old)


def test_a_run_made_when_the_batched_backend_was_named_mfsi_resumes(finished_run, make, tmp_path):
    run_dir, _ = finished_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / resume.HISTORY).unlink()  # a run made before the rename (and the history)
    config = (old / "config.yaml").read_text()
    assert "  backend: batched\n" in config
    (old / "config.yaml").write_text(config.replace("  backend: batched\n", "  backend: mfsi\n"))
    assert resume.check_resume(make(), old) == {"generation.backend": ["mfsi", "batched"]}


def test_unique_ids_and_cooperative_prompts_are_debated_and_trained_on(make, tmp_path):
    loop.run(make("+ablation=unique_id", "debate.style=cooperative"), tmp_path)
    assert set(rundir.read_json(tmp_path / "iter_1/data/sizes.json")) == {"gen0", "critic0"}
    for split in ("train", "eval"):
        for record in rundir.read_jsonl(tmp_path / f"iter_0/debate_{split}.jsonl"):
            for n, conversation in enumerate(record["conversations"]):
                assert conversation[0]["content"].endswith(f"You are agent {n + 1}.")
                assert "build on their reasoning" in conversation[2]["content"]
    data = rundir.read_jsonl(tmp_path / "iter_1/data/gen0.jsonl")  # all agents' data, with their ids
    assert {e["messages"][0]["content"][-2] for e in data} > {"1"}
    assert rundir.read_jsonl(tmp_path / "metrics.jsonl")[-1]["variant"] == "unique_id"


@pytest.mark.parametrize(
    "method,adapters",
    [("single_agent_ft", {"gen0", "critic0"}), ("majority_ft", {"gen0"}), ("star", {"gen0"})],
)
def test_baselines_train_one_shared_pair(method, adapters, make, tmp_path):
    # STaR asks one agent once and the tiny model ignores hints: ~20% of questions give
    # data, so 8 give none with probability 0.8^8 = 17%; 40 make that 1e-4 (at little cost).
    more = ["task.n_train=40"] if method == "star" else []
    summary = loop.run(make(f"method={method}", *more), tmp_path)
    sizes = rundir.read_json(tmp_path / "iter_1/data/sizes.json")
    assert set(sizes) == adapters
    assert summary["final"]["iteration"] == 1
    if method == "star":  # wrong answers re-asked with the true answer as a hint
        assert (tmp_path / "iter_0/rationalisations.jsonl").exists()


def test_without_critics_only_generators_are_trained(make, tmp_path):
    loop.run(make("method.train_critics=false", "iterations=1"), tmp_path)
    assert set(rundir.read_json(tmp_path / "iter_1/data/sizes.json")) == {"gen0", "gen1", "gen2"}


def test_nothing_to_learn_stops_clearly_and_keeps_iteration_0(tiny_model_dir, make, tmp_path):
    # A random model parses no answer, so no question has a majority and no data exists.
    with pytest.raises(DataError, match="nothing to learn"):
        loop.run(make(f"model.path={tiny_model_dir}", "generation.max_new_tokens=8"), tmp_path)
    assert len(rundir.read_jsonl(tmp_path / "metrics.jsonl")) == 1


def test_transfer_finetunes_on_one_task_and_evaluates_on_another(make, tmp_path):
    gsm = ROOT / "tests" / "fixtures" / "gsm"
    cfg = make("+experiment=transfer", "task=arithmetic", f"eval_task.path={gsm}", "eval_task.n_eval=3")
    loop.run(cfg, tmp_path)
    rows = rundir.read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["iteration"], r["task"], r["n"]) for r in rows] == [(0, "gsm", 3), (1, "gsm", 3)]
    assert rundir.read_json(tmp_path / "iter_1/data/sizes.json")  # trained on arithmetic answers
    trained_on = {r["question"] for r in rundir.read_jsonl(tmp_path / "iter_0/debate_train.jsonl")}
    asked = {r["question"] for r in rundir.read_jsonl(tmp_path / "iter_1/debate_eval.jsonl")}
    gsm_questions = {line["question"] for line in rundir.read_jsonl(gsm / "test.jsonl")}
    assert asked <= gsm_questions and not trained_on & gsm_questions


def test_prompt_lookup_drafts_are_counted_in_the_metrics(make, tmp_path):
    loop.run(make("method=debate", "generation.lookup_tokens=8"), tmp_path)
    row = rundir.read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert 0 < row["accepted_tokens"] <= row["drafted_tokens"]


def test_a_chat_template_that_fails_to_render_stops_the_run_before_the_weights_load(
    make, tmp_path, monkeypatch
):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}\n{{ raise_exception('no roles') }}")
    monkeypatch.setattr(loop, "load_model", lambda *args: pytest.fail("the weights were loaded"))
    with pytest.raises(
        ConfigError,
        match=r"models/tiny-arith.* at line 2 \(.*\): TemplateError: no roles; set model\.chat_template=",
    ):
        loop.run(make(f"model.chat_template={bad}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_start_time_is_recorded_once_and_a_damaged_one_is_refused(make, tmp_path):
    loop.run(make("method=base"), tmp_path)
    started = (tmp_path / "started.txt").read_text()
    loop.run(make("method=base"), tmp_path)  # a resume keeps the first start's time
    assert (tmp_path / "started.txt").read_text() == started and resume.start_time(tmp_path).year >= 2025
    (tmp_path / "started.txt").write_text("yesterday")
    with pytest.raises(DataError, match="started.txt is damaged"):
        loop.run(make("method=base"), tmp_path)
