// Activity: the latest history rows of the tenant in view, with the verified caller and Graph's
// request id (what Microsoft support asks for).
import {errorText, h, replace, table, time} from "./ui.js";

export async function activityView(main, session) {
  const region = h("div");
  replace(main, h("h2", {}, "Activity"), region);
  const answer = await session.call("GET", session.scoped("/sync/history"), {query: {top: 50}});
  if (answer.status !== 200) {
    replace(region, h("p", {class: "error", role: "alert"}, errorText(answer)));
    return null;
  }
  const rows = answer.body.history;
  replace(region, table(`Latest syncs, newest first (${rows.length})`,
    ["When", "Unit", "Outcome", "Trigger", "Caller", "HTTP", "Graph request id", "Message"],
    rows.map((r) => h("tr", {},
      h("td", {}, time(r.attemptAt)), h("td", {}, r.unit),
      h("td", {}, r.outcome), h("td", {}, r.trigger || "—"),
      h("td", {}, r.caller || "—", r.claimedCaller ? h("span", {class: "needs"}, `said: ${r.claimedCaller}`) : null),
      h("td", {}, r.httpStatus ?? "—"), h("td", {}, h("code", {}, r.graphRequestId || "—")),
      h("td", {}, r.message || "")))));
  return null;
}
