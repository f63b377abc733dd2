// Tenants (many tenants, MULTI_TENANT_CLIENT_ID): the registry with each tenant's consent state;
// add one (showing its admin-consent link), check, disable or enable, and delete with confirmation.
import {errorText, guarded, h, replace, safeLink, table, time} from "./ui.js";

export async function tenantsView(main, session) {
  const region = h("div");
  const form = addForm(session, () => load());
  replace(main, h("h2", {}, "Tenants"), form, region);
  const load = async () => {
    const answer = await session.call("GET", "/tenants");
    form.hidden = answer.status !== 200; // e.g. 404 MultiTenantOff: nothing to add to
    if (answer.status !== 200) {
      replace(region, h("p", {class: answer.status === 404 ? "muted" : "error", role: "alert"}, errorText(answer)));
      return;
    }
    replace(region, table(`${answer.body.tenants.length} registered`,
      ["Tenant", "Targets", "Enabled", "State", "Last checked", "Actions"],
      answer.body.tenants.map((t) => row(t, session, load))));
  };
  await load();
  return null;
}

function addForm(session, reload) {
  const id = h("input", {type: "text", id: "new-tenant-id", autocomplete: "off", size: 38, placeholder: "00000000-0000-0000-0000-000000000000"});
  const name = h("input", {type: "text", id: "new-tenant-name", autocomplete: "off", maxlength: 256});
  const said = h("div", {role: "status"});
  const add = async () => {
    const answer = await session.call("PUT", `/tenants/${encodeURIComponent(id.value.trim())}`, {body: {displayName: name.value.trim()}});
    if (answer.status !== 200 && answer.status !== 201) { replace(said, h("p", {class: "error"}, errorText(answer))); return; }
    replace(said, h("p", {}, `Registered ${answer.body.displayName}. A Global Administrator of the tenant must consent: `,
      safeLink(answer.body.consentUrl, "admin-consent link")));
    await reload();
  };
  return h("form", {class: "panel", onsubmit: (e) => { e.preventDefault(); add(); }},
    h("h3", {}, "Add a tenant"), h("label", {}, "Tenant id", id), h("label", {}, "Display name", name),
    session.may("Tenants.Manage") ? h("button", {type: "submit", id: "add-tenant"}, "Add") : guarded(session, "Tenants.Manage", "Add", null),
    said);
}

function row(tenant, session, reload) {
  const said = h("span", {class: "answer", role: "status"});
  const put = (enabled) => session.call("PUT", `/tenants/${tenant.tenantId}`,
    {body: {displayName: tenant.displayName, targets: tenant.targets, enabled}});
  const check = async () => {
    said.textContent = "Checking…";
    const a = await session.call("GET", `/tenants/${tenant.tenantId}`);
    replace(said, a.status === 200 ? `${a.body.state}: ${a.body.reason} ` : errorText(a),
      a.status === 200 && a.body.state === "notConsented" ? safeLink(a.body.consentUrl, "consent link") : null);
  };
  const toggle = async () => { const a = await put(!tenant.enabled); if (a.status >= 300) said.textContent = errorText(a); else await reload(); };
  const remove = () => confirmDelete(tenant, async () => {
    const a = await session.call("DELETE", `/tenants/${tenant.tenantId}`);
    if (a.status !== 200) said.textContent = errorText(a); else await reload();
  });
  return h("tr", {dataset: {tenant: tenant.tenantId}},
    h("th", {scope: "row"}, tenant.displayName, h("span", {class: "needs"}, tenant.tenantId)),
    h("td", {}, (tenant.targets || []).join(", ")),
    h("td", {}, tenant.enabled ? "yes" : "no"),
    h("td", {class: tenant.state === "consented" || tenant.state === "synced" ? "ok" : tenant.state ? "bad" : "muted"},
      tenant.state || "never checked", tenant.reason ? h("span", {class: "needs"}, tenant.reason) : null,
      tenant.state === "notConsented" && tenant.consentUrl ? safeLink(tenant.consentUrl, "consent link") : null),
    h("td", {}, time(tenant.lastCheckedAt)),
    h("td", {}, guarded(session, "Status.Read", "Check", check, {class: "secondary", "aria-label": `Check ${tenant.displayName}`}), " ",
      guarded(session, "Tenants.Manage", tenant.enabled ? "Disable" : "Enable", toggle,
        {class: "secondary", "aria-label": `${tenant.enabled ? "Disable" : "Enable"} ${tenant.displayName}`}), " ",
      guarded(session, "Tenants.Manage", "Delete", remove, {class: "danger", "aria-label": `Delete ${tenant.displayName}`}), said));
}

function confirmDelete(tenant, onConfirm) {
  const dialog = h("dialog", {"aria-labelledby": "delete-title"},
    h("h3", {id: "delete-title"}, `Delete ${tenant.displayName}?`),
    h("p", {}, "The app stops syncing this tenant and forgets its state. The consent in the customer's tenant stays until they remove it."),
    h("form", {method: "dialog"},
      h("button", {value: "cancel", class: "secondary", autofocus: true}, "Cancel"), " ",
      h("button", {value: "delete", class: "danger", id: "confirm-delete"}, "Delete")));
  dialog.addEventListener("close", () => { if (dialog.returnValue === "delete") onConfirm(); dialog.remove(); });
  document.body.append(dialog);
  dialog.showModal();
}
