"""LoRA adapters without a model: configuration, catalog, line checks, LoRA settings, the spool on the fake engine."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from spoolbatch.cli import app
from spoolbatch.commands import models as model_commands
from spoolbatch.commands.submit import validate
from spoolbatch.config import AdapterSource, Config, EngineSettings, load_config
from spoolbatch.engines.adapters import (
    Adapter,
    AdapterCatalog,
    LoraIds,
    LoraSettings,
    adapter_order,
    check_adapter,
    lora_settings,
)
from spoolbatch.engines.fake import FakeEngine
from spoolbatch.errors import ConfigError, RequestError
from spoolbatch.format.endpoints import CHAT, EMBEDDINGS
from spoolbatch.format.lines import BadLine, LineParser
from spoolbatch.format.types import Request
from spoolbatch.format.validation import parse_spec
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import assert_exactly_once, chat_line, drop, read_jsonl, wait_for, write_jsonl
from .tiny_lora import write_fake_adapter

BASE = "m"


def line(i: int, model: str, **body: Any) -> dict[str, Any]:
    """A chat line whose prompt repeats every three lines (so adapters answer the same prompts)."""
    record = chat_line(i, model, **body)
    record["body"]["messages"][0]["content"] = f"question {i // 3}"
    return record


@pytest.fixture
def loras(tmp_path: Path) -> Path:
    """A folder of two adapters of ``m`` (sql, chat), a broken one (no weights), and clutter."""
    root = tmp_path / "loras"
    write_fake_adapter(root / "sql")
    write_fake_adapter(root / "chat", rank=24)
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (root / "not-an-adapter").mkdir()
    write_fake_adapter(root / ".hidden")
    return root


@pytest.fixture
def lconfig(config: Config, loras: Path) -> Config:
    """The fake-engine config with the adapter folder of ``m`` and one named adapter of another model."""
    other = write_fake_adapter(loras.parent / "other-lora")
    return config.replace(adapters=(AdapterSource(str(loras), BASE), AdapterSource(str(other), "n", "n-lora")))


def drain(config: Config) -> Daemon:
    daemon = Daemon(config, echo=False)
    while daemon.loop_once().worked:
        pass
    return daemon


# --- configuration and catalog -----------------------------------------------------------------------
def test_adapters_tables_are_read_from_config_toml(spool: Spool) -> None:
    (spool.root / "config.toml").write_text(
        'max_loras = 2\nmax_lora_rank = 32\n'
        '[[adapters]]\nname = "sql"\npath = "loras/sql"\nbase = "m"\n'
        '[[adapters]]\npath = "/srv/loras"\nbase = "m"\n')
    config = load_config(spool.root, env={})
    assert config.adapters == (AdapterSource(str(spool.root / "loras/sql"), "m", "sql"),
                               AdapterSource("/srv/loras", "m"))
    settings = config.engine_settings()
    assert (settings.adapters, settings.max_loras, settings.max_lora_rank, settings.max_cpu_loras) == \
        (config.adapters, 2, 32, None)


@pytest.mark.parametrize(("toml", "words"), [
    ('[[adapters]]\nname = "a"\npath = "x"\n', "base must be a non-empty string"),
    ('[[adapters]]\nname = "a"\npath = "x"\nbase = "m"\nrank = 8\n', "give path, base"),
    ('[[adapters]]\nname = "m"\npath = "x"\nbase = "m"\n', "its base model's name"),
    ('adapters = "x"\n', "must be [[adapters]] tables"),
    ('max_loras = 4\nmax_cpu_loras = 2\n', "'max_cpu_loras' (2) must be at least 'max_loras' (4)"),
    ('max_lora_rank = 0\n', "'max_lora_rank' must be at least 1"),
])
def test_bad_adapters_settings_are_one_line_errors(spool: Spool, toml: str, words: str) -> None:
    (spool.root / "config.toml").write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(spool.root, env={})
    assert words in err.value.message


def test_a_folder_of_adapters_names_each_sub_folder(loras: Path) -> None:
    catalog = AdapterCatalog([AdapterSource(str(loras), BASE),
                              AdapterSource(str(loras / "chat"), "n", "sql")])  # "sql" again: the folder's wins
    assert [(a.name, a.base) for a in catalog.adapters()] == [("broken", "m"), ("chat", "m"), ("sql", "m")]
    assert catalog.get("missing") is None
    write_fake_adapter(loras / "late")  # copied in while the engine runs: found at its first use
    assert catalog.get("late") == Adapter("late", str(loras / "late"), BASE)
    assert AdapterCatalog([AdapterSource(str(loras / "nowhere"), BASE)]).adapters() == []


def test_check_adapter_says_what_is_wrong(loras: Path) -> None:
    assert check_adapter(Adapter("chat", str(loras / "chat"), BASE)) == 24
    cases = {"broken": "no adapter_model.safetensors or adapter_model.bin",
             "not-an-adapter": "no adapter_config.json"}
    for name, words in cases.items():
        with pytest.raises(RequestError) as err:
            check_adapter(Adapter(name, str(loras / name), BASE))
        assert err.value.code == "adapter_not_available" and words in err.value.message
    (loras / "sql" / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING", "r": 8}')
    with pytest.raises(RequestError, match="not LORA"):
        check_adapter(Adapter("sql", str(loras / "sql"), BASE))


def test_lora_settings_start_at_vllms_defaults_and_rise_to_fit(loras: Path) -> None:
    known = AdapterCatalog([AdapterSource(str(loras), BASE)]).adapters()
    sql = [a for a in known if a.name == "sql"]
    plain = EngineSettings()
    # chat has rank 24: every known adapter of the base fits, rounded up to a rank vLLM takes
    assert lora_settings(plain, sql, known) == LoraSettings(max_loras=1, max_lora_rank=32, max_cpu_loras=3)
    assert lora_settings(plain, known, known).max_loras == 3
    many = [Adapter(f"a{i}", str(loras / "sql"), BASE) for i in range(20)]
    assert lora_settings(plain, many, []).max_loras == 8  # raised up to AUTO_MAX_LORAS, no further
    configured = EngineSettings(max_loras=12, max_lora_rank=64, max_cpu_loras=40)
    assert lora_settings(configured, sql, known) == LoraSettings(12, 64, 40)
    running = LoraSettings(2, 16, 2)
    assert not running.fits(lora_settings(plain, known, known)) and running.fits(LoraSettings(8, 16, 8))


def test_lora_ids_are_stable_per_adapter_and_new_when_its_weights_change(loras: Path) -> None:
    ids = LoraIds()
    sql, chat = Adapter("sql", str(loras / "sql"), BASE), Adapter("chat", str(loras / "chat"), BASE)
    assert [ids.id_for(sql), ids.id_for(chat), ids.id_for(sql)] == [1, 2, 1]
    weights = loras / "sql" / "adapter_model.safetensors"
    stat = weights.stat()
    import os

    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # replaced by a retrained adapter
    assert ids.id_for(sql) == 3


def test_adapter_order_puts_the_base_first_then_each_adapter_together() -> None:
    models = ["b", "m", "a", "b", "m", "a"]
    assert adapter_order(models, "m") == [1, 4, 2, 5, 0, 3]


# --- lines -------------------------------------------------------------------------------------------
def parse_all(parser: LineParser, records: list[dict[str, Any]]) -> list[Request | BadLine | None]:
    return [parser.parse(orjson.dumps(r), n) for n, r in enumerate(records, start=1)]


def test_a_job_mixes_its_base_model_and_its_adapters() -> None:
    parser = LineParser(adapters={"sql": "m", "chat": "m", "n-lora": "n"})
    out = parse_all(parser, [line(0, "sql"), line(1, "m"), line(2, "chat"), line(3, "sql")])
    assert all(isinstance(r, Request) for r in out)
    assert parser.model == "m"  # a first line naming an adapter makes the job its base model's
    assert [r.spec.model for r in out if isinstance(r, Request)] == ["sql", "m", "chat", "sql"]


def test_unknown_names_and_other_models_are_refused_per_line() -> None:
    parser = LineParser(adapters={"sql": "m", "n-lora": "n"})
    records = [line(0, "m"), line(1, "sqll"), line(2, "n-lora"), line(3, "n"),
               {"custom_id": "e", "method": "POST", "url": EMBEDDINGS, "body": {"model": "sql", "input": "x"}}]
    out = parse_all(parser, records)
    codes = [r.code if isinstance(r, BadLine) else "ok" for r in out]
    assert codes == ["ok", "model_not_found", "model_mismatch", "model_mismatch", "unsupported_parameter"]
    assert "neither this job's model 'm' nor one of its adapters" in out[1].message  # type: ignore[union-attr]
    assert "adapter 'n-lora' adapts 'n'" in out[2].message  # type: ignore[union-attr]
    # without adapters of its model a job refuses another name as before
    plain = parse_all(LineParser(adapters={"sql": "m"}), [line(0, "x"), line(1, "y")])
    assert isinstance(plain[1], BadLine) and plain[1].code == "model_mismatch"


def test_submit_refuses_a_file_with_two_base_models_naming_the_line(spool: Spool, loras: Path, tmp_path: Path) -> None:
    other = write_fake_adapter(tmp_path / "n-lora")
    (spool.root / "config.toml").write_text(f'[[adapters]]\npath = "{loras}"\nbase = "m"\n'
                                            f'[[adapters]]\nname = "n-lora"\npath = "{other}"\nbase = "n"\n')
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [line(0, "sql"), line(1, "m"), line(2, "chat"), line(3, "n")])
    found = validate(mixed, load_config(spool.root, env={}))
    assert (found.model, found.requests) == ("m", 3)
    assert [(b.line, b.code) for b in found.bad] == [(4, "model_mismatch")]
    result = CliRunner().invoke(app, ["submit", str(mixed), "--spool", str(spool.root)])
    assert result.exit_code == 5, result.output
    assert "1 bad line(s)" in result.output and "mixed.jsonl:4: model 'n' differs from this job's model 'm'" \
        in result.output
    assert not spool.inbox_entries()


# --- the fake engine ---------------------------------------------------------------------------------
def request(model: str, text: str = "hello", url: str = CHAT) -> Request:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    return Request("c", 1, url, body, parse_spec(url, body))


def test_the_fake_engine_answers_each_adapter_differently(loras: Path) -> None:
    engine = FakeEngine(created=0, adapters=AdapterCatalog([AdapterSource(str(loras), BASE)]))
    engine.load(BASE)
    texts = [f"prompt {i}" for i in range(8)]
    answers = {m: [o.body["choices"][0]["message"]["content"] for o in engine.run([request(m, t) for t in texts])]
               for m in (BASE, "sql", "chat")}
    assert answers["sql"] != answers[BASE] and answers["chat"] != answers["sql"]
    assert answers["sql"] == [o.body["choices"][0]["message"]["content"]  # type: ignore[index]
                              for o in engine.run([request("sql", t) for t in texts])]
    broken, = engine.run([request("broken")])
    assert broken.error_code == "adapter_not_available" and "no adapter_model.safetensors" in str(broken.error_message)


# --- the spool ---------------------------------------------------------------------------------------
def test_a_mixed_job_runs_on_one_model_with_each_line_on_its_adapter(spool: Spool, lconfig: Config) -> None:
    models = ["m", "sql", "chat"]
    records = [line(i, models[i % 3]) for i in range(24)]
    records.insert(7, line(100, "sqll"))  # an unknown adapter: that line alone
    records.insert(12, line(101, "broken"))  # an adapter whose folder does not load: its lines alone
    drop(spool, "mixed.jsonl", records)
    drain(lconfig)
    ids = {r["custom_id"] for r in records}
    assert assert_exactly_once(spool, "mixed", ids) == (24, 2)
    dead = {d["custom_id"]: d["error"] for d in read_jsonl(spool.deadletter_file("mixed"))}
    assert dead["req-100"]["code"] == "model_not_found"
    assert dead["req-101"]["code"] == "adapter_not_available" and "broken" in dead["req-101"]["message"]
    results = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(spool.results("mixed"))}
    for i in range(24):
        body = results[f"req-{i}"]
        assert body["model"] == models[i % 3] and body["usage"]["completion_tokens"] > 0
    by_prompt = [{results[f"req-{i}"]["choices"][0]["message"]["content"] for i in range(k, k + 3)} for k in (0, 3, 6)]
    assert all(len(answers) == 3 for answers in by_prompt)  # one prompt, three models, three answers
    ckpt = Checkpoint.load(spool.checkpoint("mixed"))
    assert ckpt is not None and ckpt.model == "m"


@pytest.mark.slow
def test_a_mixed_job_resumes_exactly_once_after_kill_9(spool: Spool, loras: Path, start_daemon: Any) -> None:
    (spool.root / "config.toml").write_text(f'chunk_size = 6\n[[adapters]]\npath = "{loras}"\nbase = "m"\n')
    models = ["sql", "m", "chat"]
    records = [line(i, models[i % 3]) for i in range(60)]
    drop(spool, "job.jsonl", records)
    first = start_daemon("--fake-latency", "0.02")
    wait_for(lambda: (c := Checkpoint.load(spool.checkpoint("job"))) is not None and c.chunks >= 2, timeout=60)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=10) == -signal.SIGKILL
    ckpt = Checkpoint.load(spool.checkpoint("job"))
    assert ckpt is not None and 0 < ckpt.lines_consumed < 60
    start_daemon("--once").wait(timeout=120)
    assert assert_exactly_once(spool, "job", {r["custom_id"] for r in records}) == (60, 0)
    answers = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(spool.results("job"))}
    # the same answers as a run never killed: the fake engine's answer is derived from line and adapter
    engine = FakeEngine(adapters=AdapterCatalog([AdapterSource(str(loras), BASE)]))
    engine.load(BASE)
    for i, outcome in enumerate(engine.run([request(models[i % 3], f"question {i // 3}") for i in range(60)])):
        assert outcome.body is not None
        got = answers[f"req-{i}"]
        assert got["model"] == models[i % 3]
        assert got["choices"][0]["message"]["content"] == outcome.body["choices"][0]["message"]["content"]


# --- models ------------------------------------------------------------------------------------------
def test_models_lists_adapters_with_their_base(spool: Spool, lconfig: Config, loras: Path) -> None:
    found = model_commands.catalog(lconfig)
    listed = {a.name: a for a in found.adapters}
    assert set(listed) == {"broken", "chat", "sql", "n-lora"}
    assert (listed["chat"].base, listed["chat"].rank, listed["chat"].ready) == ("m", 24, True)
    assert not listed["broken"].ready and "no adapter_model" in listed["broken"].note
    served = model_commands.served(spool, lconfig)
    assert [(s.id, s.parent) for s in served][:2] == [("m", None), ("n", None)]
    assert ("sql", "m") in [(s.id, s.parent) for s in served]
    (spool.root / "config.toml").write_text(f'[[adapters]]\npath = "{loras}"\nbase = "m"\n')
    result = CliRunner().invoke(app, ["models", "--json", "--spool", str(spool.root)])
    assert result.exit_code == 0, result.output
    adapters = orjson.loads(result.output)["adapters"]
    assert [(a["name"], a["base"], a["ready"]) for a in adapters] == \
        [("broken", "m", False), ("chat", "m", True), ("sql", "m", True)]
    table = CliRunner().invoke(app, ["models", "--spool", str(spool.root)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "LoRA adapters" in table.output and "sql" in table.output


def test_the_examples_are_a_config_and_a_job_that_go_together(spool: Spool, tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    config = load_config(spool.root, env={"SPOOLBATCH_CONFIG": str(examples / "adapters.toml")})
    assert [(a.name, a.base) for a in config.adapters] == [("sql-lora", "SmolLM2-135M-Instruct"),
                                                          (None, "SmolLM2-135M-Instruct")]
    bases = {"sql-lora": "SmolLM2-135M-Instruct", "support-lora": "SmolLM2-135M-Instruct"}  # the folder's one
    parser = LineParser(adapters=bases)
    parsed = [parser.parse(raw, n) for n, raw in enumerate((examples / "adapters.jsonl").read_bytes().splitlines(), 1)]
    assert all(isinstance(r, Request) for r in parsed) and parser.model == "SmolLM2-135M-Instruct"
    assert {r.spec.model for r in parsed if isinstance(r, Request)} == {*bases, "SmolLM2-135M-Instruct"}
