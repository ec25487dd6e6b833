"""What the docs say that can be checked mechanically, checked against the code: the files and tests they
name exist, the ``stream-rec`` command lines they show use flags the real CLI has, the settings' defaults
they quote are settings.py's, the state size they quote is what the codec writes, and the one "healthy
p99" figure is the same wherever it is repeated (docs/DEPLOY.md, the alert rules)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from stream_rec.cli import COMMANDS, build_parser, option_strings
from stream_rec.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "DEVELOPERS.md", ROOT / "topics" / "README.md", ROOT / "examples" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"(?<![\w/.-])((?:tests|stream_rec|stream_rec_devtools|benchmarks|deploy|topics|examples|docs)/[\w./-]*\w)"
                  r"(?:::(\w+\*?))?")


def _text(path: Path) -> str:
    return path.read_text()


def test_files_and_tests_named_in_the_docs_exist():
    missing = []
    for doc in DOCS:
        for path, test in PATH.findall(_text(doc)):
            target = ROOT / path
            if not target.exists() and not list(ROOT.glob(path)):
                missing.append(f"{doc.name}: {path}")
            elif test:
                pattern = rf"def {test[:-1]}\w*\(" if test.endswith("*") else rf"def {test}\("
                if not re.search(pattern, target.read_text()):
                    missing.append(f"{doc.name}: {path}::{test}")
    assert not missing, missing


def _command_lines(text: str):
    """(command, [sub-command], flags) of every ``stream-rec COMMAND ...`` written in the text (a namespace
    called stream-rec, ``kubectl -n stream-rec ...``, is not a command line)."""
    for match in re.finditer(r"(?<![\w/-])(?<!-n )stream-rec ([a-z]+)((?: +[^\s`|#]+)*)", text):
        command, rest = match.group(1), match.group(2).split()
        if command not in COMMANDS:
            continue
        sub = rest[0] if rest and not rest[0].startswith(("-", "[")) else None
        flags = [re.sub(r"[\[\]),.;:]+$", "", t.lstrip("[")).split("=")[0] for t in rest if t.lstrip("[").startswith("--")]
        yield command, sub, flags


def test_command_lines_in_the_docs_use_flags_the_cli_has():
    lines = [(doc.name, line) for doc in DOCS for line in _command_lines(_text(doc))]
    assert len(lines) > 20, lines  # the docs do show command lines: the pattern still finds them
    unknown = []
    for doc, (command, sub, flags) in lines:
        parser = build_parser(command).subcommands.choices[command]
        sub_parsers = getattr(parser, "_subparsers", None)
        if sub and sub_parsers is not None:
            parser = sub_parsers._group_actions[0].choices.get(sub, parser)
        known = option_strings(parser)
        unknown += [f"{doc}: stream-rec {command} {sub or ''} {flag}" for flag in flags if flag not in known]
    assert not unknown, unknown


UNITS = {"days": 86400, "KiB": 1024, "MB": 1, "ms": 1, "s": 1, "%": 0.01}


def _default_matches(field, quoted: str) -> bool | None:
    """Whether ``quoted`` (what the docs say the default is) is the field's default; None: not a value."""
    default = field.default
    word = quoted.strip().strip("`")
    if isinstance(default, bool):
        return word in ("true", "false") and (word == "true") == default if word in ("true", "false") else None
    if isinstance(default, (int, float)):
        number = re.match(r"^(-?\d[\d,]*(?:\.\d+)?)\s*([A-Za-z]+|%)?", word)
        if not number:
            return None
        value = float(number.group(1).replace(",", "")) * UNITS.get(number.group(2) or "", 1)
        return value == pytest.approx(float(default))
    if isinstance(default, str):  # a one-word value (a sentence in brackets is not a default)
        return (default == "") if word == "empty" else (word == default) if re.fullmatch(r"[\w.:/-]+", word) else None
    return None


def _quoted_defaults():
    """(doc, setting name, quoted default): README's settings table and every ``NAME`` (default) mention."""
    for doc in DOCS:
        text = _text(doc)
        for names, values in re.findall(r"^\| ((?:`[A-Z0-9_*]+`(?:, )?)+) \| ([^|]+) \|", text, re.M):
            quoted = [v.strip() for v in values.split(",")]
            for name, value in zip(re.findall(r"`([A-Z0-9_]+)`", names), quoted):
                yield doc.name, name, value
        for name, value in re.findall(r"`([A-Z][A-Z0-9_]{3,})` \(([^);]+)", text):
            yield doc.name, name, value.split(" = ")[0]


def test_settings_defaults_quoted_in_the_docs_are_the_settings_defaults():
    by_name = {f.name.upper(): f for f in fields(Settings)}
    checked, wrong = 0, []
    for doc, name, quoted in _quoted_defaults():
        field = by_name.get(name.removeprefix("STREAM_REC_"))
        if field is None or doc == "DEPLOY.md":  # DEPLOY.md's table is the Compose file's values, not settings.py's
            continue
        ok = _default_matches(field, quoted)
        if ok is None:
            continue
        checked += 1
        if not ok:
            wrong.append(f"{doc}: {name} quoted as {quoted!r}, settings.py says {field.default!r}")
    assert checked >= 30, checked
    assert not wrong, wrong


def test_the_state_size_quoted_in_the_docs_is_what_the_codec_writes():
    from stream_rec.state import UserState, encode_state

    history = [("x" * 200 + str(n), 1.7e9 + n) for n in range(Settings().history_len)]
    full = len(encode_state(UserState(hidden=np.zeros(160, np.float32), history=history)))
    empty = len(encode_state(UserState(hidden=np.zeros(160, np.float32))))
    readme, deploy, state = (_text(ROOT / p) for p in ("README.md", "docs/DEPLOY.md", "stream_rec/state.py"))
    assert f"{full} bytes for a 160-d vector and a full history" in readme and f"{empty} bytes empty" in readme
    assert f"{full} bytes with a full 50-item history" in deploy
    assert f"{full} bytes for ids of any length" in state
    assert f"adds {full - 320} bytes" in _text(ROOT / "docs" / "QUALITY.md")


def test_the_healthy_p99_is_one_figure_wherever_it_is_repeated():
    deploy = _text(ROOT / "docs" / "DEPLOY.md")
    measured = re.search(r"p50/p99 event→recommendation \*\*\d+/(\d+)–(\d+) ms\*\*", deploy).groups()
    budget = re.search(r"the p99 of (\d+)–(\d+) ms measured above for a healthy worker", deploy).groups()
    alerts = _text(ROOT / "deploy" / "prometheus" / "alerts.yml")
    alert_rule = re.search(r"docs/DEPLOY.md\n\s+# measures p99 (\d+)-(\d+) ms", alerts).groups()
    alert_test = re.search(r"measures p99 (\d+)-(\d+) ms", _text(ROOT / "deploy" / "prometheus" / "alerts.test.yml"))
    assert measured == budget == alert_rule == alert_test.groups()
