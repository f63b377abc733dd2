// The console: sign in (key or Entra ID), then one view at a time, chosen by the URL's fragment.
// Every action goes through the same HTTP API, with the same roles, as any other caller.
import {Session, entraAuth, isSignInPopup, keyAuth} from "./session.js";
import {announce, h, replace} from "./ui.js";
import {statusView} from "./status.js";
import {onboardView} from "./onboard.js";
import {devicesView} from "./devices.js";
import {tenantsView} from "./tenants.js";
import {activityView} from "./activity.js";

const VIEWS = {status: statusView, onboard: onboardView, devices: devicesView, tenants: tenantsView, activity: activityView};
const main = document.getElementById("main");
let session;
let stopView = null;
let shown = 0; // which show() is current: a view that finishes loading after the next one started is stopped

async function boot() {
  const config = await (await fetch("/api/console/config.json", {cache: "no-store"})).json();
  const auth = config.mode === "entra" ? await entraAuth(config) : keyAuth();
  session = new Session(config, auth);
  if (config.mode === "entra" && !auth.account) return signInPage(auth);
  return start(config, auth);
}

async function start(config, auth) {
  const me = await session.call("GET", "/me");
  if (me.status === 401 && config.mode === "key") return keyPage();
  if (me.status !== 200) return fatal(`Could not read who you are: ${me.body && me.body.error ? me.body.error.message : `HTTP ${me.status}`}`);
  session.me = me.body;
  document.getElementById("who").textContent = `Signed in: ${me.body.caller} (${me.body.roles.join(", ") || "no roles"})`;
  const out = document.getElementById("signout");
  out.hidden = !(config.mode === "entra" || auth.hasKey());
  out.onclick = async () => { await auth.signOut(); location.reload(); };
  document.querySelector("nav").hidden = false;
  tenantPicker(); // not awaited: the first view need not wait for the registry
  window.addEventListener("hashchange", show);
  show();
}

function signInPage(auth) {
  document.getElementById("who").textContent = "Not signed in";
  const problem = h("p", {class: "error", role: "alert"});
  const signIn = async () => {
    problem.textContent = "";
    try {
      await auth.signIn();
    } catch (error) {
      problem.textContent = `Not signed in: ${error.errorMessage || error.message}`;
      return;
    }
    await start(session.config, auth);
  };
  replace(main, h("section", {class: "panel"},
    h("h2", {}, "Sign in"),
    h("p", {}, "Sign in with your work account (a window opens). What you may do depends on the app roles you were given."),
    h("button", {type: "button", id: "signin", onclick: signIn}, "Sign in with Microsoft"), problem));
  main.focus();
}

function keyPage() {
  document.getElementById("who").textContent = "Not signed in";
  const input = h("input", {type: "password", id: "key", autocomplete: "off", required: true});
  const problem = h("p", {class: "error", role: "alert"});
  const form = h("form", {class: "panel", onsubmit: async (event) => {
    event.preventDefault();
    session.auth.setKey(input.value.trim());
    const me = await session.call("GET", "/me");
    if (me.status === 200) { location.reload(); return; }
    session.auth.setKey("");
    problem.textContent = me.status === 401 ? "That key was refused." : `The app answered HTTP ${me.status}.`;
  }},
  h("h2", {}, "Function key"),
  h("p", {}, "This deployment checks a function key (CALLER_AUTH=key). It is kept for this browser session only."),
  h("label", {}, "Key", input), h("button", {type: "submit"}, "Continue"), problem);
  replace(main, form);
  input.focus();
}

async function tenantPicker() {
  if (!session.may("Status.Read")) return;
  const answer = await session.call("GET", "/tenants");
  if (answer.status !== 200 || !answer.body.tenants.length) return;
  const select = document.getElementById("tenant");
  replace(select, h("option", {value: ""}, "Home tenant"),
    answer.body.tenants.map((t) => h("option", {value: t.tenantId}, `${t.displayName} (${t.tenantId})`)));
  select.onchange = () => { session.tenant = select.value || null; show(); };
  select.closest("label").hidden = false;
}

async function show() {
  const name = VIEWS[location.hash.slice(1)] ? location.hash.slice(1) : "status";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  if (stopView) stopView();
  stopView = null;
  const mine = ++shown;
  replace(main, h("p", {class: "muted"}, "Loading…"));
  try {
    const stop = await VIEWS[name](main, session);
    if (mine === shown) stopView = stop; else if (stop) stop();
  } catch (error) {
    replace(main, h("p", {class: "error", role: "alert"}, `Something went wrong: ${error.message}`));
  }
  announce(`${name[0].toUpperCase()}${name.slice(1)} view`);
}

function fatal(text) {
  replace(main, h("p", {class: "error", role: "alert"}, text));
}

if (!isSignInPopup()) boot().catch((error) => fatal(`The console could not start: ${error.message}`));
