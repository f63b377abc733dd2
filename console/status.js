// Status: every unit of the tenant in view with its health, last sync, Graph's own status, a live
// countdown to the next allowed sync and any pending deferred sync; Sync now, or Schedule inside
// the cooldown (?defer=true), with the answer shown where the button is.
import {countdown, errorText, guarded, h, replace, table, time} from "./ui.js";

const REFRESH_MS = 30_000;

export async function statusView(main, session) {
  const region = h("div");
  replace(main, h("h2", {}, session.tenant ? `Status of tenant ${session.tenant}` : "Status"), region);
  const answers = new Map(); // unit -> its last answer, kept across refreshes
  const load = async () => {
    const answer = await session.call("GET", session.scoped("/sync/status"));
    if (answer.status !== 200) {
      replace(region, h("p", {class: "error", role: "alert"}, `Status unavailable: ${errorText(answer)}`));
      return;
    }
    // A refresh keeps the keyboard where it was: the control with the same label gets the focus back.
    const focused = region.contains(document.activeElement) ? document.activeElement.getAttribute("aria-label") : null;
    replace(region, overview(answer.body), answer.body.targets.map((t) => targetTable(t, session, answers, load)));
    if (focused) { const again = [...region.querySelectorAll("button")].find((b) => b.getAttribute("aria-label") === focused); if (again) again.focus(); }
  };
  await load();
  performance.mark("status-shown"); // the first useful paint, for the bench (bench/console.py)
  const timer = setInterval(load, REFRESH_MS);
  return () => clearInterval(timer);
}

function overview(status) {
  return h("p", {}, "Overall: ", health(status.health), " · read at ", time(status.now));
}

function health(rating, reasons = []) {
  return h("span", {class: `health ${rating}`, title: reasons.join("; ") || null}, rating || "unknown");
}

/** One row per unit: the app's own state next to Graph's account of it, matched by unit name. */
function targetTable(target, session, answers, reload) {
  const units = new Map();
  for (const g of target.graph) units.set(g.target, {graph: g});
  for (const u of target.units) units.set(u.target, {...units.get(u.target), local: u});
  if (!units.size) units.set(target.target, {});
  const rows = [...units].map(([unit, {graph, local}]) => unitRow(unit, graph, local, session, answers, reload));
  return h("section", {},
    h("h3", {}, target.target, " ", health(target.health)),
    table(null, ["Unit", "Health", "Last sync", "Graph's status", "Next sync allowed", "Pending", "Action"], rows));
}

function unitRow(unit, graph = {}, local = {}, session, answers, reload) {
  const rating = graph.health || {};
  const cooling = local.nextAllowedAt && Date.parse(local.nextAllowedAt) > Date.now();
  const pending = local.pending && local.pending.scheduledAt;
  return h("tr", {dataset: {unit}},
    h("th", {scope: "row"}, unit),
    h("td", {}, health(rating.rating, rating.reasons || []), (rating.reasons || []).length ? h("span", {class: "needs"}, rating.reasons.join("; ")) : null),
    h("td", {}, time(graph.lastSyncDateTime || graph.lastSuccessfulSyncDateTime || local.lastStartedAt)),
    h("td", {}, graph.error ? h("span", {class: "bad"}, `${graph.error.code}: ${graph.error.message}`)
      : (graph.syncStatus || graph.connectionStatus || graph.status || graph.lastSyncErrorCode || "—")),
    h("td", {}, cooling ? [countdown(local.nextAllowedAt, reload), " (", time(local.nextAllowedAt), ")"] : h("span", {class: "ok"}, "now")),
    h("td", {}, pending ? ["at ", time(pending), local.pending.asks ? ` (${local.pending.asks} asked)` : ""] : "—"),
    h("td", {}, action(unit, cooling, session, answers, reload)));
}

function action(unit, cooling, session, answers, reload) {
  const said = h("span", {class: "answer", role: "status"}, answers.get(unit) || "");
  const [target, item] = unit.split("/");
  const path = session.scoped(`/sync/${encodeURIComponent(target)}${item ? `/${encodeURIComponent(item)}` : ""}`);
  const run = async (button, defer) => {
    button.disabled = true;
    said.textContent = defer ? "Scheduling…" : "Asking Graph…";
    const answer = await session.call("POST", path, {query: defer ? {defer: "true"} : {}});
    answers.set(unit, describe(answer));
    said.textContent = answers.get(unit);
    button.disabled = false;
    await reload();
  };
  const label = cooling ? "Schedule" : "Sync now";
  const control = guarded(session, "Sync.Run", label, (event) => run(event.currentTarget, cooling),
    {class: cooling ? "secondary" : null, "aria-label": `${label}: ${unit}`});
  return [control, said];
}

function describe(answer) {
  const body = answer.body || {};
  if (body.results) return body.results.map((r) => `${r.target}: ${describe({status: answer.status, body: r})}`).join("; ");
  switch (body.outcome) {
    case "started": return `Started. Next sync allowed at ${new Date(body.nextAllowedAt).toLocaleTimeString()}.`;
    case "scheduled": return `Scheduled for ${new Date(body.scheduledAt).toLocaleTimeString()}.`;
    case "cooldown": return `Refused: ${body.message}`;
    case "inProgress": return `Refused: a sync is running (${body.message}).`;
    case "skipped": return `Skipped: ${body.message}`;
    case "failed": return `Failed: ${body.errorCode || ""} ${body.message || ""}`.trim();
    default: return `Refused: ${errorText(answer)}`;
  }
}
