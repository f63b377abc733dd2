// Small DOM helpers: the page builds its views with these (no framework: nothing the page needs).

/** An element: h("button", {type: "button", onclick: f}, "Sync now"). Text is always text, never HTML. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A link only to an https address (a consent URL from the API): never a script or another scheme. */
export function safeLink(href, text) {
  try {
    if (new URL(href).protocol === "https:") return h("a", {href, target: "_blank", rel: "noopener noreferrer"}, text);
  } catch { /* not a URL */ }
  return null;
}

/** A time in the viewer's local time, with UTC on hover (and for assistive technology). */
export function time(iso) {
  if (!iso) return h("span", {class: "muted"}, "—");
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return h("span", {}, iso);
  if (at.getUTCFullYear() < 1971) return h("span", {class: "muted", title: `${iso}: Graph's "never"`}, "never");
  return h("time", {datetime: iso, title: at.toISOString().replace(".000Z", "Z") + " (UTC)"}, at.toLocaleString());
}

/** "in 9 min 58 s", updated every second by tick(); "now" once the moment has passed. */
export function countdown(iso, onDone) {
  const node = h("span", {class: "countdown", dataset: {until: iso}});
  node.onDone = onDone;
  paint(node, Date.now());
  return node;
}

function paint(node, now) {
  const left = Math.ceil((Date.parse(node.dataset.until) - now) / 1000);
  if (left <= 0) {
    node.textContent = "now";
    // Only a countdown that was seen running says it ended (no reload loop at the very edge).
    if (node.onDone && node.counted && !node.done) { node.done = true; node.onDone(); }
    return;
  }
  node.counted = true;
  const minutes = Math.floor(left / 60);
  node.textContent = `in ${minutes ? `${minutes} min ` : ""}${left % 60} s`;
}

setInterval(() => {
  const now = Date.now();
  for (const node of document.querySelectorAll(".countdown")) paint(node, now);
}, 1000);

/** Say something to screen-reader users (and show it to everyone in the view's own place). */
export function announce(text) {
  document.getElementById("announce").textContent = text;
}

export function table(caption, headers, rows) {
  return h("table", {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", {scope: "col"}, name)))),
    h("tbody", {}, rows));
}

let noteIds = 0;

/** A button that needs ``role``: disabled, with the role named, when the caller lacks it. */
export function guarded(session, role, label, onclick, attrs = {}) {
  const allowed = session.may(role);
  const note = allowed ? null : h("span", {class: "needs", id: `needs-${++noteIds}`}, `needs the ${role} role`);
  const button = h("button", {type: "button", ...attrs, disabled: !allowed, onclick: allowed ? onclick : null,
                              "aria-describedby": note ? note.id : null, title: allowed ? null : `Needs the ${role} role`}, label);
  return h("span", {class: "guarded"}, button, note);
}

export function errorText(answer) {
  const error = answer && answer.body && answer.body.error;
  if (error) return `${error.code}: ${error.message}`;
  if (answer && answer.body && answer.body.message) return answer.body.message;
  return `HTTP ${answer ? answer.status : "?"}`;
}
