// Onboard: drop a Get-WindowsAutopilotInfo CSV (any encoding the API accepts: the bytes go as they
// are), see every bad row before anything is sent (the API's validate route stores nothing and
// calls no Graph), choose a group tag, then follow the import job until every device is final.
import {announce, errorText, guarded, h, replace, table, time} from "./ui.js";

const FINAL = new Set(["profileAssigned", "failed", "timedOut"]);

export async function onboardView(main, session) {
  let file = null;
  let timer = null;
  const result = h("div", {id: "onboard-result"});
  const picker = h("input", {type: "file", id: "csv", accept: ".csv,text/csv", onchange: () => choose(picker.files[0])});
  const drop = h("div", {class: "drop", ondragover: (e) => { e.preventDefault(); drop.classList.add("over"); },
                         ondragleave: () => drop.classList.remove("over"),
                         ondrop: (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); }},
    h("label", {}, "Drop the CSV here, or choose it", picker));
  if (session.tenant) {
    replace(main, h("h2", {}, "Onboard Autopilot devices"),
      h("p", {class: "panel"}, "Autopilot onboarding imports into the app's home tenant only. Choose Home tenant above to onboard."));
    return null;
  }
  replace(main, h("h2", {}, "Onboard Autopilot devices"),
    h("p", {}, "The CSV of ", h("code", {}, "Get-WindowsAutopilotInfo -OutputFile"), ", up to 500 devices. Nothing is sent to Intune until you start the import."),
    session.may("Devices.Import") ? drop : guarded(session, "Devices.Import", "Choose a CSV", null), result);

  async function choose(chosen) {
    if (!chosen) return;
    file = chosen;
    replace(result, h("p", {class: "muted"}, `Checking ${chosen.name}…`));
    const body = new Blob([await chosen.arrayBuffer()]);
    const answer = await session.call("POST", "/autopilot/devices/validate", {body, type: "text/csv"});
    if (answer.status === 200) return ready(answer.body);
    const error = (answer.body && answer.body.error) || {};
    replace(result, h("p", {class: "error", role: "alert"}, `${chosen.name}: ${error.message || errorText(answer)}. Nothing was sent.`),
      error.rows ? table("Rows to fix", ["Row", "Serial number", "Field", "Why"],
        error.rows.map((r) => h("tr", {}, h("td", {}, r.row), h("td", {}, r.serialNumber || "—"), h("td", {}, r.field), h("td", {}, r.reason)))) : null);
    announce(`${error.rows ? error.rows.length : 1} problem(s) in ${chosen.name}`);
  }

  function ready(checked) {
    const tag = h("input", {type: "text", id: "group-tag", maxlength: 128, pattern: "[A-Za-z0-9._\\-]+", autocomplete: "off",
                            "aria-describedby": "tag-help"});
    const problem = h("p", {class: "error", role: "alert"});
    replace(result, h("p", {class: "ok"}, `${checked.count} devices are valid.`),
      h("form", {class: "panel", onsubmit: (e) => { e.preventDefault(); start(tag.value.trim(), problem); }},
        h("label", {}, "Group tag (optional: sets every device's tag)", tag),
        h("span", {id: "tag-help", class: "needs"}, "Letters, digits and . _ - (no spaces). Empty keeps each row's own tag."),
        h("button", {type: "submit", id: "start-import"}, `Import ${checked.count} devices`), problem),
      table("Devices", ["Row", "Serial number", "Group tag in the file"],
        checked.devices.map((d) => h("tr", {}, h("td", {}, d.row), h("td", {}, d.serialNumber), h("td", {}, d.groupTag || "—")))));
  }

  async function start(groupTag, problem) {
    const body = new Blob([await file.arrayBuffer()]);
    const answer = await session.call("POST", "/autopilot/imports", {body, type: "text/csv", query: {groupTag}});
    if (answer.status !== 201) { problem.textContent = `Not started: ${errorText(answer)}`; return; }
    follow(answer.body.statusUrl, answer.body);
  }

  function follow(statusUrl, first) {
    const live = h("div", {"aria-live": "polite"});
    replace(result, h("h3", {}, `Import ${first.importId}`), live);
    const render = (job) => replace(live,
      h("p", {}, `Status: ${job.status}`, job.message ? ` — ${job.message}` : ""),
      table(null, ["Serial number", "State", "Detail", "Updated"], job.devices.map((d) => h("tr", {dataset: {serial: d.serialNumber, state: d.state}},
        h("td", {}, d.serialNumber), h("td", {class: d.state === "failed" || d.state === "timedOut" ? "bad" : FINAL.has(d.state) ? "ok" : null}, d.state),
        h("td", {}, d.errorName ? `${d.errorName}${d.errorCode ? ` (${d.errorCode})` : ""}: ${d.hint || ""}` : d.message || ""),
        h("td", {}, time(d.updatedAt))))));
    render(first);
    const tick = async () => {
      const answer = await session.poll(statusUrl);
      if (answer.status === 200 || answer.status === 202) render(answer.body);
      if (answer.status === 200) { announce("Every device is final"); return; }
      if (answer.status !== 202) {
        live.append(h("p", {class: "error", role: "alert"}, `Following the import stopped: ${errorText(answer)}`));
        return;
      }
      const wait = Math.min(Number(answer.headers.get("Retry-After")) || 5, 10);
      timer = setTimeout(tick, wait * 1000);
    };
    timer = setTimeout(tick, 1000);
  }

  return () => clearTimeout(timer);
}
