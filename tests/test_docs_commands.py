"""What the README and the guides tell a newcomer to type works as written: the answer shown is the
API's own shape, and every tool a command needs is installed where it is first used."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from conftest import ROOT

from shared.common.model import Outcome, SyncResult

README = (ROOT / "README.md").read_text()
DOCS = {str(path.relative_to(ROOT)): path.read_text() for path in [*(ROOT / "docs").glob("*.md"), ROOT / "connector" / "README.md"]}


def test_the_first_screen_has_exactly_two_set_up_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block is not None
    assert [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()] == [
        "./scripts/run-local.sh", "./scripts/test.sh"]


def test_the_readmes_sample_answer_has_every_field_the_api_answers():
    sample = re.search(r"Every sync answers with one JSON shape:\s*```json\n(.*?)```", README, re.S)
    assert sample is not None
    now = datetime.now(UTC)
    answered = SyncResult("autopilot", Outcome.STARTED, next_allowed_at=now, last_attempt_at=now).to_json()
    assert list(json.loads(sample.group(1))) == list(answered)


def test_every_guide_that_runs_a_tool_says_how_to_install_it_first():
    needs = {  # a command line to type (its start), and what installs the tool
        r"az monitor app-insights": "az extension add --name application-insights",
        r"paconn (login|create|update)": "pip install paconn",
        r"func start": "azure-functions-core-tools@4",
    }
    missing = []
    for name, text in {"README.md": README, **DOCS}.items():
        for command, install in needs.items():
            used = re.search(r"^\s*(?:\S*/)?" + command, text, re.M)  # typed: at a line's start, maybe with its path
            if used and (install not in text or text.index(install) > used.start()):
                missing.append(f"{name}: {used.group(0)!r} without {install!r} before it")
    assert missing == []
