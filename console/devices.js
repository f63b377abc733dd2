// Devices: start a bulk device sync by group, filter or CSV of serial numbers, then follow its
// counts until the job ends (POST /api/devices/syncJobs, then its status URL).
import {errorText, guarded, h, replace, table} from "./ui.js";

const STATES = ["queued", "skippedRecent", "notFound", "notSupported", "failed", "pending"];

export async function devicesView(main, session) {
  let timer = null;
  const result = h("div");
  const kind = h("select", {id: "device-kind"},
    h("option", {value: "groupId"}, "An Entra group (its devices)"),
    h("option", {value: "filter"}, "A filter on managed devices"),
    h("option", {value: "csv"}, "A CSV of serial numbers"));
  const value = h("input", {type: "text", id: "device-selector", autocomplete: "off", size: 50});
  const file = h("input", {type: "file", id: "device-csv", accept: ".csv,text/csv"});
  const fileLabel = h("label", {hidden: true}, "CSV of serial numbers (a Serial Number column)", file);
  const skip = h("input", {type: "number", id: "skip-minutes", min: 0, max: 10080, value: 60});
  const problem = h("p", {class: "error", role: "alert"});
  const skipNote = h("span", {class: "needs", hidden: true}, "A CSV's devices skip by the deployment's DEVICE_SYNC_SKIP_MINUTES.");
  kind.onchange = () => {
    const csv = kind.value === "csv";
    fileLabel.hidden = !csv;
    value.closest("label").hidden = csv;
    skip.disabled = csv;
    skipNote.hidden = !csv;
  };
  const submit = session.may("Devices.Sync") ? h("button", {type: "submit", id: "start-device-sync"}, "Start the sync")
    : guarded(session, "Devices.Sync", "Start the sync", null);
  replace(main, h("h2", {}, "Sync managed devices"),
    h("form", {class: "panel", onsubmit: (e) => { e.preventDefault(); start(); }},
      h("label", {}, "Devices", kind), h("label", {}, "Group id or filter (e.g. operatingSystem eq 'Windows')", value), fileLabel,
      h("label", {}, "Skip devices synced within (minutes)", skip, skipNote), submit, problem),
    result);

  async function start() {
    problem.textContent = "";
    const minutes = skip.value === "" ? undefined : Number(skip.value);
    if (kind.value === "csv" && !file.files.length) { problem.textContent = "Choose the CSV first."; return; }
    const path = session.scoped("/devices/syncJobs");
    const answer = kind.value === "csv"
      ? await session.call("POST", path, {body: new Blob([await file.files[0].arrayBuffer()]), type: "text/csv"})
      : await session.call("POST", path, {body: {[kind.value]: value.value.trim(), skipSyncedWithinMinutes: minutes}});
    if (answer.status !== 201) {
      const rows = answer.body && answer.body.error && answer.body.error.errors;
      problem.textContent = `Not started: ${errorText(answer)}`;
      if (rows) problem.append(h("ul", {}, rows.map((r) => h("li", {}, JSON.stringify(r)))));
      return;
    }
    follow(answer.body.statusUrl, answer.body.jobId);
  }

  function follow(statusUrl, jobId) {
    const tick = async () => {
      const answer = await session.poll(statusUrl);
      if (answer.status === 200 || answer.status === 202) render(jobId, answer.body);
      if (answer.status !== 202) {
        if (answer.status !== 200) result.append(h("p", {class: "error", role: "alert"}, `Following the job stopped: ${errorText(answer)}`));
        return;
      }
      timer = setTimeout(tick, Math.min(Number(answer.headers.get("Retry-After")) || 5, 10) * 1000);
    };
    tick();
  }

  function render(jobId, job) {
    const counts = job.counts || {};
    const total = STATES.reduce((sum, s) => sum + (counts[s] || 0), 0);
    const done = total - (counts.pending || 0);
    replace(result, h("h3", {}, `Job ${jobId}: ${job.status}`),
      h("p", {}, h("progress", {max: total || 1, value: done, "aria-label": "Devices handled"}), ` ${done} of ${total} handled`),
      table("Devices per state", STATES, [h("tr", {}, STATES.map((s) => h("td", {dataset: {state: s}}, counts[s] || 0)))]));
  }

  return () => clearTimeout(timer);
}
