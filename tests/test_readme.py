"""The README's code blocks stay true: every command in them is exercised by a test.

A command is covered when it is one of the scripts' ``--help`` examples (each runs in
tests/test_documented_commands.py), the CI command (.ci/run runs exactly it), a campaign-driver
command (tests/test_campaign.py), or a main-job command: ``run_pipeline.sh`` runs end to end in tests/test_pipeline.py, and every flag
combination the README shows is parsed here.
"""
from __future__ import annotations

import re
import shlex
import subprocess

from tests.commands import extract_commands, runnable
from tests.helpers import REPO
from tests.test_documented_commands import GROUPS, group_commands

FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return runnable([c for block in FENCE.findall(text) for c in extract_commands(block)])


def _split(command: str) -> list[list[str]]:
    """``a && b`` -> [a, b] as word lists."""
    words, parts = shlex.split(command), [[]]
    for w in words:
        if w == "&&":
            parts.append([])
        else:
            parts[-1].append(w)
    return parts


def _campaign_command(words: list[str]) -> bool:
    """The campaign driver's commands: tests/test_campaign.py runs each on a tiny campaign."""
    tested = (REPO / "tests" / "test_campaign.py").read_text()
    return words[:2] == ["bash", "bench/campaign_chrX.sh"] and len(words) == 3 and f'"{words[2]}"' in tested


def test_every_readme_command_is_covered():
    help_examples = {c for group in GROUPS for c in group_commands(group)}
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    commands = readme_commands()
    assert len(commands) > 15
    uncovered = []
    for command in commands:
        if command in help_examples:
            continue
        parts = _split(command)
        if all(p[:2] in (["bash", "setup.sh"], ["bash", "run_pipeline.sh"]) or shlex.join(p) in ci
               or _campaign_command(p) for p in parts):
            continue
        uncovered.append(command)
    assert not uncovered, "README commands no test runs (make them --help examples, or test them)"
    assert "bash setup.sh && .venv/bin/python -m pytest -q" in ci
    assert any(_split(c) == [["bash", "setup.sh"], ["bash", "run_pipeline.sh"]] for c in commands)


def test_readme_main_job_commands_parse():
    """Every run_pipeline.sh command line of the README, its flags checked by the script itself."""
    shown = [p for c in readme_commands() for p in _split(c) if p[:2] == ["bash", "run_pipeline.sh"]]
    assert shown
    for words in shown:
        proc = subprocess.run(["bash", str(REPO / "run_pipeline.sh"), *words[2:], "--help"], capture_output=True,
                              text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 0 and "The main job" in proc.stdout, (words, proc.stderr)
