"""The CLI fails clearly and starts fast: one line `error: ...` and a non-zero exit for every expected
failure (no broker, a missing file, a model that does not load, a port in use, a bad flag with "did you
mean"), `--version`, `--help` without importing torch/Faust/aiokafka, one vocabulary of flags whose settings
name their env var, JSON log lines, and SIGTERM/SIGHUP stopping `broker`, `worker` and `demo` with no process
left and their ports free."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import make_settings
from stream_rec.cli import COMMANDS, build_parser
from stream_rec.settings import ENV_PREFIX, Settings
from stream_rec_devtools.procfs import child_pids

NO_BROKER = "127.0.0.1:1"  # nothing listens there: connection refused at once


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_rec", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["finetune", "--help"]])
def test_help_imports_no_heavy_library_and_version_prints(argv):
    code = (f"import sys\nfrom stream_rec.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'faust', 'aiokafka', 'numpy', 'transformers', 'mode') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:] + done.stderr[-2000:]
    done = run_cli("--version")
    assert done.returncode == 0 and re.fullmatch(r"stream-rec \S+\n", done.stdout), done.stdout


def test_the_model_commands_show_the_code_s_own_defaults():
    """`train` and `finetune` read their defaults from the model's and training's source without importing
    torch (commands/_model_args.dataclass_defaults): they are the dataclasses' defaults."""
    from dataclasses import MISSING, fields

    from stream_rec.commands._model_args import dataclass_defaults
    from stream_rec.learning.finetune import FinetuneParams
    from stream_rec.model.gru import GRUConfig
    from stream_rec.model.train import TrainParams

    for path, cls in (("model/gru.py", GRUConfig), ("model/train.py", TrainParams),
                      ("learning/finetune.py", FinetuneParams)):
        expected = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        assert vars(dataclass_defaults(path, cls.__name__)) == expected, cls
    finetune = build_parser("finetune").subcommands.choices["finetune"]
    action = next(a for a in finetune._actions if a.dest == "lr")
    assert action.default == FinetuneParams.lr and f"training's default is {TrainParams.lr:g}" in action.help


@pytest.mark.parametrize("argv,suggestion", [
    (["wroker"], "worker"),
    (["produce", "--events", "x.jsonl"], "--events-file"),
    (["produce", "--brokr", "h:1", "--synthetic-events", "3"], "--broker"),
    (["tail", "--max", "3"], "--max-records"),
    (["evaluate", "--k", "5"], "--top-k"),
    (["worker", "--web-port", "6066"], None),  # gone with Faust's web server
])
def test_a_bad_flag_is_one_line_with_did_you_mean(argv, suggestion):
    done = run_cli(*argv)
    line = one_error_line(done)
    assert done.returncode == 2
    if suggestion:
        assert f"did you mean {suggestion}" in line, line


@pytest.mark.parametrize("argv", [
    ["produce", "--synthetic-events", "3"], ["tail"], ["forget", "u1"], ["reload"], ["topics", "create"],
    ["topics", "show", "--live"], ["worker"],
])
def test_an_unreachable_broker_is_one_line(argv):
    done = run_cli(*argv, "--broker", NO_BROKER)
    assert done.returncode == 1
    assert one_error_line(done).startswith(f"error: no Kafka broker answers at {NO_BROKER}")


def test_missing_files_bad_models_and_a_busy_port_are_one_line(broker, tmp_path):
    missing = tmp_path / "missing.jsonl"
    for argv in (["produce", "--events-file", str(missing)], ["worker", "--items-file", str(missing)],
                 ["train", "--events-file", str(missing), "--items-file", str(missing), "--out", str(tmp_path)]):
        done = run_cli(*argv)
        assert done.returncode == 2 and "no such file" in one_error_line(done)
    env = make_settings(broker, tmp_path / "w").to_env()
    done = run_cli("worker", "--model", str(tmp_path / "no-model-here"), env=env)
    assert done.returncode == 1 and "does not exist" in one_error_line(done)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        done = run_cli("worker", "--metrics-port", str(busy.getsockname()[1]), env=env)
    assert done.returncode == 1 and "cannot listen on 127.0.0.1:" in one_error_line(done)
    done = run_cli("topics", "show", env={ENV_PREFIX + "PARTITIONS": "four"})
    assert done.returncode == 1 and "STREAM_REC_PARTITIONS='four'" in one_error_line(done)


def test_setting_flags_name_their_env_var_and_show_one_default(capsys):
    """Every flag that sets a Settings field says which variable sets it too; no help text says its
    default twice; no flag of any command is a prefix-abbreviation trap (exact names only)."""
    parser = build_parser()
    fields = {f"--{name.replace('_', '-')}" for name in Settings.__dataclass_fields__}
    for name, sub in parser.subcommands.choices.items():
        for nested in [sub, *[p for a in sub._actions if hasattr(a, "choices") and isinstance(a.choices, dict)
                              for p in a.choices.values()]]:
            assert nested.allow_abbrev is False, name
            text = nested.format_help()
            assert not re.search(r"default[^)]*\)\s*\(default", text), (name, text)
            for action in nested._actions:
                settings_flags = nested.get_default("setting_flags") or []
                if action.dest in settings_flags:
                    assert f"env {ENV_PREFIX}{action.dest.upper()}" in (action.help or ""), (name, action.dest)
                elif any(o in fields for o in action.option_strings) and name == "worker":
                    pytest.fail(f"worker {action.option_strings} names a setting but is not a setting flag")
    assert set(COMMANDS) == set(parser.subcommands.choices)


def test_json_log_lines(broker, tmp_path):
    done = run_cli("produce", "--synthetic-events", "2", "--no-progress",
                   env={**make_settings(broker, tmp_path).to_env(), ENV_PREFIX + "LOG_FORMAT": "json",
                        ENV_PREFIX + "LOG_LEVEL": "debug"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(rec) for rec in lines)
    assert {rec["level"] for rec in lines} >= {"DEBUG"}


# --- stopping: SIGTERM / SIGHUP leave no process and free ports ---------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _start(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    # a command started by a non-interactive shell inherits SIGINT ignored; a terminal's Ctrl-C needs the default
    return subprocess.Popen([sys.executable, "-m", "stream_rec", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _read_until(proc: subprocess.Popen, pattern: str, timeout_s: float = 90.0) -> tuple[re.Match, str]:
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found, "".join(seen)
    proc.kill()
    pytest.fail(f"no line matching {pattern!r}; output:\n{''.join(seen)[-3000:]}")


def _wait_http(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} never answered")


def _stop_and_check(proc: subprocess.Popen, signals: list[int], ports: list[int], after=None,
                    timeout_s: float = 60.0) -> str:
    """Send ``signals`` (``after(output)`` between them), then: the process tree is gone and ``ports`` are free."""
    tree = [proc.pid, *child_pids(proc.pid)]
    output = ""
    for n, sig in enumerate(signals):
        proc.send_signal(sig)
        if after is not None and n + 1 < len(signals):
            output += after(proc)
    try:
        output += proc.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"not stopped within {timeout_s} s of {signals}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.1)
    assert not [p for p in tree if _alive(p)], f"left running: {[p for p in tree if _alive(p)]}\n{output[-3000:]}"
    assert all(_port_free(p) for p in ports), (ports, output[-3000:])
    return output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_broker_stops_on_signal_with_nothing_left(sig):
    """SIGKILL too: the Tansu child is told to stop when its parent dies, so its port is freed."""
    proc = _start(["broker", "--port", "0"])
    found, _ = _read_until(proc, r"embedded broker on 127\.0\.0\.1:(\d+)", timeout_s=30)
    assert child_pids(proc.pid), "the Tansu process should be a child"
    _stop_and_check(proc, [sig], [int(found.group(1))], timeout_s=20)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_worker_stops_on_signal_with_nothing_left(spine_settings, sig):
    """Also: with STREAM_REC_LOG_FORMAT=json every line the worker writes, Faust's included, is a JSON object."""
    proc = _start(["worker"], env={**spine_settings.to_env(), ENV_PREFIX + "LOG_FORMAT": "json"})
    _wait_http(f"{spine_settings.http_url}/healthz")
    output = _stop_and_check(proc, [sig], [spine_settings.metrics_port])
    assert proc.returncode == 0 and "Traceback" not in output, output[-3000:]
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert {"faust.worker", "stream_rec.worker.http"} <= {r["logger"] for r in records}
    assert any("Signal received" in r["message"] for r in records)


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGHUP]], ids=["term", "int-then-hup"])
def test_demo_stops_on_signal_with_nothing_left(tmp_path, signals):
    """SIGTERM while running; Ctrl-C then a hang-up (the terminal closing) during the teardown: the demo
    still stops its worker cleanly and then its broker."""
    proc = _start(["demo", "--untrained", "--rate", "20", "--data-dir", str(tmp_path / "demo")])
    broker, _ = _read_until(proc, r"broker pid \d+ on 127\.0\.0\.1:(\d+)")
    worker, _ = _read_until(proc, r"worker pid \d+ started .*http: (http://\S+)/healthz")
    _wait_http(worker.group(1) + "/healthz")
    ports = [int(broker.group(1)), int(worker.group(1).rsplit(":", 1)[1])]

    def until_teardown(p):  # the second signal arrives while the demo stops its worker
        return _read_until(p, r"stopping worker", timeout_s=30)[1]

    output = _stop_and_check(proc, signals, ports, after=until_teardown)
    assert proc.returncode == 0 and "stopped; worker log" in output, output[-3000:]
