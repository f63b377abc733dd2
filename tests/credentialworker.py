"""One app process's daily credentials check, as the timer runs it (shared/runtime/handlers.py),
with its clock moved ``--days`` ahead so that a test can let days pass; it waits for ``--start``
(epoch seconds) so that several processes check at the same moment. Prints the report as JSON."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.assembly import build_service  # noqa: E402
from shared.common import Settings, utcnow  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=float, default=0.0)
    parser.add_argument("--start", type=float, default=0.0)
    args = parser.parse_args()
    service = build_service(Settings.from_env(os.environ), clock=lambda: utcnow() + timedelta(days=args.days))
    service.graph.ensure_token()  # ready before the start, so that the processes check together
    time.sleep(max(0.0, args.start - time.time()))
    report = service.check_credentials()
    service.flush()
    print(json.dumps({"state": report.state, "told": report.told}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
