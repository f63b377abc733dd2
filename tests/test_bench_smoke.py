"""The benchmark keeps working: a smoke run with tiny sizes (no SDK install) produces every
figure, and the round-trip targets hold."""
import subprocess
import sys

from conftest import ROOT


def test_the_bench_smoke_run_produces_every_figure():
    run = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", "-"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith("| Measure")]
    names = [line.split("|")[1].strip() for line in table]
    for expected in ("Cold start to first answer (granted, bytecode cached)", "Refused HTTP call, p50 (warm instance)",
                     "Granted sync: Graph calls / table round trips", "Contention: Graph sync POSTs / 202s / 5xx"):
        assert expected in names, names
    met = {line.split("|")[1].strip(): line.split("|")[6].strip() for line in table}
    assert met["Granted sync: Graph calls / table round trips"] == "yes"
    assert met["Refusal, new instance: Graph calls / table round trips"] == "yes"
    assert met["Contention: Graph sync POSTs / 202s / 5xx"] == "yes"


def test_the_tenants_bench_smoke_run_syncs_each_tenant_once_with_one_token_and_one_graph_call():
    run = subprocess.run([sys.executable, "-m", "bench.tenants", "--smoke", "--out", "-"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in run.stdout.splitlines()
            if line.startswith("| ") and line.count("|") >= 4}
    assert rows["Outcomes in the registry"] == "20 synced"
    assert rows["Token requests per tenant (Entra)"] == "1.00"
    assert rows["Graph calls per tenant"] == "1.00"
    assert rows["— state read"] == rows["— state claim"] == rows["— state commit (transaction)"] == "1.00"
    assert "Instances for 10,000 in 10 min" in run.stdout and "Recommendation: `instanceMemoryMB`" in run.stdout


def test_the_telemetry_bench_smoke_run_writes_its_section_and_the_main_bench_keeps_it(tmp_path):
    results = tmp_path / "RESULTS.md"
    tenants = "<!-- bench.tenants: begin -->\n## Many tenants\n<!-- bench.tenants: end -->"
    results.write_text("# Benchmark results\n\nthe main table\n\n" + tenants + "\n")
    run = subprocess.run([sys.executable, "-m", "bench.telemetry", "--smoke", "--out", str(results)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nthe main table\n\n" + tenants + "\n")
    assert "## Telemetry: structured records without an SDK (issue #14)" in text
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines() if line.startswith("| ")}
    assert rows["Cold start: app loaded in a fresh process (azure.functions already loaded)"].endswith(" ms")
    assert rows["Per record: emit (JSON in the message) vs a plain log line"].endswith(" µs")

    from bench.run import kept_sections

    kept = kept_sections(results)
    assert kept.count("<!-- bench.tenants: begin -->") == 1 and kept.count("<!-- bench/telemetry.py: end -->") == 1
    assert kept.index("bench.tenants: end") < kept.index("bench/telemetry.py: begin")


def test_the_device_sync_bench_smoke_run_finishes_its_jobs_with_no_429_on_the_shared_budget():
    run = subprocess.run([sys.executable, "-m", "bench.devices", "--smoke", "--no-baseline", "--out", "-"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line.split("|") for line in run.stdout.splitlines() if line.startswith("| one job") or line.startswith("| four jobs")]
    assert [(r[1].strip(), r[2].strip(), r[4].strip(), r[9].strip(), r[10].strip()) for r in rows] == [
        ("one job", "shared", "1 of 1", "0", "0"), ("four jobs", "shared", "4 of 4", "0", "0")]


def test_the_callers_bench_smoke_run_measures_each_check():
    run = subprocess.run([sys.executable, "-m", "bench.callers", "--smoke", "--out", "-"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip().split(",")[0] for r in rows] == ["`entra`", "`entra`", "`key` (the host checked the key; the app notes what the headers claim)"]
