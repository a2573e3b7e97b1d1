"""One declaration per option: the command line, the environment, the worker settings and
docs/configuration.md all come from tusd_py.config, and refuse a bad value the same way."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tusd_py import cli
from tusd_py.config import (
    COMMANDS,
    DOCS,
    OPTIONS,
    SETTINGS_ENVIRONMENT,
    Option,
    Settings,
    options_for,
    render_docs,
    settings_from_environment,
    settings_from_json,
    settings_to_json,
)
from tusd_storage import FileIoMode, FsyncPolicy

#: for every option: text that sets it, the value that text means (not the default), and
#: what else must be set for the settings to be accepted
SAMPLES: dict[str, tuple[str, Any, list[str]]] = {
    "host": ("0.0.0.0", "0.0.0.0", []),
    "port": ("8080", 8080, []),
    "base_path": ("uploads", "/uploads/", []),
    "behind_proxy": ("yes", True, []),
    "cors_origins": ("https://a.test, https://b.test", ("https://a.test", "https://b.test"), []),
    "cors_allow_credentials": ("on", True, ["--cors-origins", "https://a.test"]),
    "demo": ("yes", True, []),
    "max_size": ("1234", 1234, []),
    "expiration": ("60", 60.0, []),
    "data_dir": ("/srv/uploads", Path("/srv/uploads"), []),
    "storage": ("s3://bucket/prefix/", "s3://bucket/prefix/", []),
    "fsync": ("never", FsyncPolicy.NEVER, []),
    "file_io": ("threads", FileIoMode.THREADS, []),
    "s3_endpoint": ("minio.test:9000", "minio.test:9000", []),
    "s3_region": ("eu-west-1", "eu-west-1", []),
    "s3_access_key": ("AKIA", "AKIA", []),
    "s3_secret_key": ("secret", "secret", []),
    "s3_secure": ("false", False, []),
    "s3_create_bucket": ("1", True, []),
    "s3_part_size": ("16777216", 16 * 1024 * 1024, []),
    "s3_max_concurrent_parts": ("4", 4, []),
    "max_buffer_memory": ("33554432", 32 * 1024 * 1024, []),
    "buffer_wait_timeout": ("2.5", 2.5, []),
    "database_url": ("postgresql://u@db/tusd", "postgresql://u@db/tusd", []),
    "db_pool_size": ("5", 5, []),
    "db_max_overflow": ("0", 0, []),
    "db_pool_timeout": ("2.5", 2.5, []),
    "redis_url": ("redis://cache:6379/0", "redis://cache:6379/0", []),
    "hooks_module": ("app.hooks", "app.hooks", []),
    "events_redis_stream": ("uploads", "uploads", ["--redis-url", "redis://cache:6379/0"]),
    "hooks_url": ("https://app.test/hooks", "https://app.test/hooks", []),
    "hooks_enabled": ("pre-access, PRE-CREATE", ("pre-access", "pre-create"), []),
    "hooks_timeout": ("2.5", 2.5, []),
    "hooks_retries": ("0", 0, []),
    "hooks_progress_interval": ("0.5", 0.5, []),
    "events_keep_delivered": ("3600", 3600.0, []),
    "hooks_forward_headers": ("Authorization,X-Api-Key", ("authorization", "x-api-key"), []),
    "redis_pool_size": ("2", 2, []),
    "cache_ttl": ("0", 0.0, []),
    "cache_entries": ("10", 10, []),
    "workers": ("3", 3, ["--redis-url", "redis://cache:6379/0"]),
    "header_timeout": ("12", 12.0, []),
    "body_idle_timeout": ("7.5", 7.5, []),
    "read_ahead_memory": ("1048576", 1024 * 1024, []),
    "shutdown_timeout": ("3", 3.0, []),
    "lock_acquire_timeout": ("1.5", 1.5, []),
    "lock_handover_timeout": ("0.25", 0.25, []),
    "max_concurrent_uploads": ("50", 50, []),
    "max_memory": ("1073741824", 1024**3, []),
    "rate_limit": ("2.5", 2.5, []),
    "rate_limit_burst": ("10", 10, []),
    "min_free_disk": ("0", 0, []),
    "orphan_age": ("0", 0.0, []),
    "max_idle": ("600", 600.0, []),
    "log_level": ("DEBUG", "debug", []),
}

EVERY_COMMAND_OPTION = [
    pytest.param(command, declared, id=f"{command}{declared.flag}")
    for command in COMMANDS
    for declared in options_for(command)
]


def sample_argv(declared: Option) -> list[str]:
    text, _, _ = SAMPLES[declared.name]
    if declared.is_switch:
        return [declared.flag if SAMPLES[declared.name][1] else "--no-" + declared.flag[2:]]
    return [declared.flag, text]


def exit_status(argv: list[str]) -> int:
    """main() in-process: argparse refuses by SystemExit, our own checks by returning 2."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        return exc.code


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that gets as far as running is a test failure here."""
    for module in cli.COMMANDS.values():
        monkeypatch.setattr(module, "run", lambda settings: pytest.fail("the command ran"))
    for name in list(os.environ):
        if name.startswith("TUSD_"):
            monkeypatch.delenv(name)


# --- the declarations --------------------------------------------------------------------


def test_every_settings_field_is_an_option_with_a_sample() -> None:
    fields = [f.name for f in dataclasses.fields(Settings)]
    assert [o.name for o in OPTIONS] == fields
    assert set(SAMPLES) == set(fields)
    for declared in OPTIONS:
        assert declared.commands, declared.name
        assert declared.env == "TUSD_" + declared.name.upper()
        assert SAMPLES[declared.name][1] != declared.default, declared.name


def test_no_options_and_no_environment_give_the_defaults() -> None:
    for command in COMMANDS:
        assert cli.parse([command], environ={}) == (command, Settings())


def test_fsync_cache_entries_and_gc_options_belong_to_their_commands() -> None:
    assert {o.flag for o in options_for("serve")} >= {
        "--fsync",
        "--cache-entries",
        "--cors-allow-credentials",
    }
    assert {o.flag for o in options_for("gc")} >= {"--orphan-age", "--max-idle"}
    assert "--orphan-age" not in {o.flag for o in options_for("serve")}
    assert {o.flag for o in options_for("migrate")} == {
        "--data-dir",
        "--database-url",
        "--log-level",
    }


# --- command line and environment --------------------------------------------------------


@pytest.mark.parametrize(("command", "declared"), EVERY_COMMAND_OPTION)
def test_option_is_settable_on_the_command_line(command: str, declared: Option) -> None:
    _, expected, extra = SAMPLES[declared.name]
    _, settings = cli.parse([command, *sample_argv(declared), *extra], environ={})
    assert getattr(settings, declared.name) == expected


@pytest.mark.parametrize(("command", "declared"), EVERY_COMMAND_OPTION)
def test_option_is_settable_in_the_environment(command: str, declared: Option) -> None:
    text, expected, extra = SAMPLES[declared.name]
    _, settings = cli.parse([command, *extra], environ={declared.env: text})
    assert getattr(settings, declared.name) == expected


def test_the_command_line_wins_over_the_environment() -> None:
    environ = {"TUSD_MAX_SIZE": "1234", "TUSD_BEHIND_PROXY": "on", "TUSD_PORT": "abc"}
    _, settings = cli.parse(
        ["serve", "--max-size", "99", "--no-behind-proxy", "--port", "8080"], environ=environ
    )
    assert (settings.max_size, settings.behind_proxy, settings.port) == (99, False, 8080)


def test_a_variable_of_an_option_the_command_does_not_take_is_ignored() -> None:
    _, settings = cli.parse(["migrate"], environ={"TUSD_PORT": "abc", "TUSD_MAX_SIZE": "-5"})
    assert settings == Settings()


def test_an_empty_variable_counts_as_unset() -> None:
    _, settings = cli.parse(["serve"], environ={"TUSD_MAX_SIZE": "", "TUSD_DATABASE_URL": ""})
    assert settings == Settings()


@pytest.mark.parametrize("word", ["1", "true", "TRUE", "Yes", "on", " On "])
def test_a_switch_in_the_environment_accepts_the_words_for_on(word: str) -> None:
    _, settings = cli.parse(["serve"], environ={"TUSD_BEHIND_PROXY": word})
    assert settings.behind_proxy is True


@pytest.mark.parametrize("word", ["0", "false", "No", "OFF"])
def test_a_switch_in_the_environment_accepts_the_words_for_off(word: str) -> None:
    _, settings = cli.parse(["serve"], environ={"TUSD_S3_SECURE": word})
    assert settings.s3_secure is False


BAD_VALUES = [
    ("max_size", "-5", "must not be negative"),
    ("behind_proxy", "maybe", "must be one of 1/true/yes/on or 0/false/no/off"),
    ("port", "abc", "must be a whole number"),
    ("port", "70000", "must be a TCP port number, from 0 to 65535"),
    ("expiration", "soon", "must be a number of seconds"),
    ("fsync", "sometimes", "must be one of always, never"),
    ("s3_part_size", "1048576", "S3 parts must be at least 5 MiB (5242880 bytes)"),
    ("redis_pool_size", "1", "must be at least 2 (the handover listener keeps one)"),
    ("rate_limit", "fast", "must be a number"),
    ("min_free_disk", "-1", "must not be negative"),
    ("storage", "ftp://somewhere", "must be 'file' or s3://BUCKET/PREFIX"),
]


@pytest.mark.parametrize(("name", "value", "sentence"), BAD_VALUES)
@pytest.mark.usefixtures("nothing_runs")
def test_a_bad_environment_value_stops_serve_with_a_sentence_naming_the_variable(
    name: str,
    value: str,
    sentence: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    variable = "TUSD_" + name.upper()
    monkeypatch.setenv(variable, value)
    assert exit_status(["serve"]) == 2
    assert capsys.readouterr().err == f"tusd-py: {variable}={value!r}: {sentence}\n"


@pytest.mark.parametrize(
    ("name", "value", "sentence"), [bad for bad in BAD_VALUES if bad[0] != "behind_proxy"]
)
@pytest.mark.usefixtures("nothing_runs")
def test_the_same_value_on_the_command_line_is_refused_with_the_same_sentence(
    name: str, value: str, sentence: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flag = "--" + name.replace("_", "-")
    assert exit_status(["serve", f"{flag}={value}"]) == 2
    assert f"tusd-py serve: argument {flag}: {sentence}\n" in capsys.readouterr().err


@pytest.mark.usefixtures("nothing_runs")
def test_a_switch_on_the_command_line_takes_no_value() -> None:
    assert exit_status(["serve", "--behind-proxy=maybe"]) == 2


@pytest.mark.parametrize(("name", "value", "sentence"), BAD_VALUES)
def test_settings_built_in_python_refuse_the_same_values(
    name: str, value: str, sentence: str
) -> None:
    with pytest.raises(ValueError) as refused:
        Settings(**{name: value})
    assert str(refused.value) == f"{name}={value!r}: {sentence}"


def test_settings_built_in_python_refuse_a_negative_max_size() -> None:
    with pytest.raises(ValueError, match=r"^max_size=-5: must not be negative$"):
        Settings(max_size=-5)


def test_settings_built_in_python_take_python_values() -> None:
    settings = Settings(data_dir="/tmp/x", cors_origins=["https://a.test"], fsync="never")  # type: ignore[arg-type]
    assert settings.data_dir == Path("/tmp/x")
    assert settings.cors_origins == ("https://a.test",)
    assert settings.fsync is FsyncPolicy.NEVER
    with pytest.raises(ValueError, match="must be a whole number"):
        Settings(port=True)


def test_the_buffer_memory_must_hold_a_part() -> None:
    with pytest.raises(ValueError, match=r"--max-buffer-memory 8388608 must hold at least one"):
        Settings(max_buffer_memory=8 * 1024 * 1024, s3_part_size=16 * 1024 * 1024)
    assert Settings(max_buffer_memory=8 * 1024 * 1024).max_buffer_memory == 8 * 1024 * 1024


@pytest.mark.usefixtures("nothing_runs")
def test_combinations_are_refused_from_the_environment_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TUSD_CORS_ALLOW_CREDENTIALS", "true")
    monkeypatch.setenv("TUSD_CORS_ORIGINS", "*")
    assert exit_status(["serve"]) == 2
    assert "--cors-allow-credentials needs an explicit --cors-origins" in capsys.readouterr().err


# --- gc's own options --------------------------------------------------------------------


def test_gc_takes_expiration_as_another_name_for_max_idle() -> None:
    assert cli.parse(["gc", "--expiration", "60"], environ={})[1].max_idle == 60.0
    assert cli.parse(["gc", "--max-idle", "60"], environ={})[1].max_idle == 60.0
    assert cli.parse(["serve", "--expiration", "60"], environ={})[1].max_idle is None


def test_a_servers_expiration_variable_does_not_make_gc_reclaim_more() -> None:
    _, settings = cli.parse(["gc"], environ={"TUSD_EXPIRATION": "1"})
    assert settings.max_idle is None
    _, settings = cli.parse(["gc"], environ={"TUSD_MAX_IDLE": "1"})
    assert settings.max_idle == 1.0


def test_gc_reads_the_orphan_age_variable() -> None:
    assert cli.parse(["gc"], environ={"TUSD_ORPHAN_AGE": "5"})[1].orphan_age == 5.0


# --- --help -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_every_option_of_a_command_and_its_variable(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_status([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for declared in OPTIONS:
        taken = command in declared.commands
        assert (f"[env {declared.env};" in text) is taken, declared.name
        if taken:
            assert declared.flag in text


# --- worker processes ----------------------------------------------------------------------


def every_option_set() -> Settings:
    return Settings(**{name: value for name, (_, value, _) in SAMPLES.items()})


def test_settings_survive_the_json_for_worker_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    for settings in (Settings(), every_option_set()):
        assert settings_from_json(settings_to_json(settings)) == settings
        monkeypatch.setenv(SETTINGS_ENVIRONMENT, settings_to_json(settings))
        assert settings_from_environment() == settings


def test_the_json_for_workers_holds_every_option() -> None:
    import json

    assert set(json.loads(settings_to_json(Settings()))) == {o.name for o in OPTIONS}


# --- docs/configuration.md ----------------------------------------------------------------


def test_the_docs_tables_match_the_declarations() -> None:
    document = DOCS.read_text(encoding="utf-8")
    assert render_docs(document) == document, (
        "docs/configuration.md is out of date: run `uv run python -m tusd_py.config --write-docs`"
    )
    for command in COMMANDS:
        assert f"<!-- options:{command} -->" in document
    for declared in OPTIONS:
        assert f"| `{declared.env}` |" in document


def test_the_docs_check_notices_a_changed_option() -> None:
    document = DOCS.read_text(encoding="utf-8")
    stale = document.replace("Largest upload in bytes", "Biggest upload in bytes")
    assert stale != document
    assert render_docs(stale) == document


# --- as a program ---------------------------------------------------------------------------


def run_program(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=30, env={**clean, **env}
    )


@pytest.mark.parametrize(
    ("variable", "value", "sentence"),
    [
        ("TUSD_MAX_SIZE", "-5", "must not be negative"),
        ("TUSD_BEHIND_PROXY", "maybe", "must be one of 1/true/yes/on or 0/false/no/off"),
    ],
)
def test_the_program_refuses_a_bad_variable_before_starting(
    variable: str, value: str, sentence: str, tmp_path: Path
) -> None:
    # (should it start after all, on a port of its own, and for 30 s at most)
    argv = ["-m", "tusd_py", "serve", "--data-dir", str(tmp_path), "--port", "0"]
    result = run_program(*argv, env={variable: value})
    assert result.returncode == 2
    assert result.stderr == f"tusd-py: {variable}={value!r}: {sentence}\n"
    assert list(tmp_path.iterdir()) == []  # nothing started: no database, no uploads dir


def test_the_docs_check_runs_as_a_program() -> None:
    result = run_program("-m", "tusd_py.config", "--check-docs", env={})
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_read_ahead_is_split_over_the_workers_and_bounds_the_file_stores_writes(
    tmp_path: Path,
) -> None:
    from tusd_py.wiring import build_store

    settings = Settings(data_dir=tmp_path, read_ahead_memory=16 * 1024 * 1024, workers=2)
    assert settings.read_ahead_per_process == 8 * 1024 * 1024
    store = build_store(settings)
    assert store.write_budget.budget == 8 * 1024 * 1024  # type: ignore[attr-defined]
    tiny = Settings(data_dir=tmp_path, read_ahead_memory=64 * 1024, workers=4)
    assert tiny.read_ahead_per_process == 64 * 1024  # never below the option's minimum
