// Who is signed in and how calls carry it. The key (key mode) lives in session storage for this
// browser session only; the access token (entra mode) in memory only. Neither ever goes in a URL.

const KEY_ITEM = "intune-sync.functionKey";
export const API = "/api";

export class Session {
  constructor(config, auth) {
    this.config = config;
    this.auth = auth; // {headers(): Promise<object>, signOut(): Promise<void>}
    this.me = null;
    this.tenant = null; // a registered tenant's id, or null for the home tenant
  }

  may(role) {
    return Boolean(this.me && this.me.roles.includes(role));
  }

  /** The path of a sync-side route for the tenant in view: /sync/... or /tenants/{id}/sync/... */
  scoped(path) {
    return this.tenant ? `/tenants/${encodeURIComponent(this.tenant)}${path}` : path;
  }

  /** Call the API: {status, body, headers}. ``body``: an object (JSON) or a Blob/ArrayBuffer with ``type``. */
  async call(method, path, {body, type, query} = {}) {
    const url = new URL(API + path, location.origin);
    for (const [name, value] of Object.entries(query || {})) if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
    let payload;
    if (body !== undefined && (body instanceof Blob || body instanceof ArrayBuffer)) {
      payload = body;
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      type = "application/json";
    }
    try {
      const headers = {...await this.auth.headers(), Accept: "application/json"};
      return await send(url, {method, headers, body: payload, type});
    } catch (error) {
      return failure(error);
    }
  }

  /** Poll a status URL the API gave (it carries its own token: no key or bearer token is sent). */
  async poll(statusUrl) {
    try {
      // The app builds the URL from the request's host; behind a proxy that differs, ask this origin.
      const given = new URL(statusUrl, location.origin);
      const url = new URL(given.pathname + given.search, location.origin);
      return await send(url, {method: "GET", headers: {Accept: "application/json"}});
    } catch (error) {
      return failure(error);
    }
  }
}

async function send(url, {method, headers, body, type}) {
  if (body !== undefined) headers["Content-Type"] = type;
  return answer(await fetch(url, {method, headers, body, credentials: "omit", cache: "no-store"}));
}

/** A call that never got an answer (the network, or a sign-in that expired): an answer all the same. */
function failure(error) {
  const code = error.name === "SignInExpired" ? "SignInExpired" : "NoAnswer";
  return {status: 0, headers: new Headers(), body: {error: {code, message: error.message || String(error)}}};
}

async function answer(response) {
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  return {status: response.status, body, headers: response.headers};
}

// --- key mode -----------------------------------------------------------------------------------

export function keyAuth() {
  return {
    async headers() {
      const key = sessionStorage.getItem(KEY_ITEM);
      return key ? {"x-functions-key": key} : {};
    },
    setKey(key) {
      if (key) sessionStorage.setItem(KEY_ITEM, key); else sessionStorage.removeItem(KEY_ITEM);
    },
    hasKey: () => Boolean(sessionStorage.getItem(KEY_ITEM)),
    async signOut() { sessionStorage.removeItem(KEY_ITEM); },
  };
}

// --- entra mode (MSAL for the browser: authorization code with PKCE) ---------------------------

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(script);
  });
}

/** The page a sign-in popup lands on (the redirect URI, this page): MSAL in the opener reads the
 * answer from its address, so this copy must do nothing (app.js checks before it starts). */
export function isSignInPopup() {
  return Boolean(window.opener) && /[#&?](code|error)=/.test(location.hash + location.search);
}

/** MSAL for the browser, authorization code with PKCE. The tokens stay in memory (gone with the
 * tab), which MSAL allows only for popup sign-in: a redirect would need them in browser storage. */
export async function entraAuth(config) {
  await loadScript("/api/console/vendor/msal-browser.min.js");
  const msal = window.msal;
  const redirectUri = `${location.origin}/api/console`;
  const client = new msal.PublicClientApplication({
    auth: {clientId: config.clientId, authority: config.authority, knownAuthorities: config.knownAuthorities,
           redirectUri, postLogoutRedirectUri: redirectUri},
    cache: {cacheLocation: "memoryStorage"},
    // The browser build has no redirect-bridge module: the opener polls the popup's address instead.
    system: {enableLegacyPolling: true},
  });
  await client.initialize();
  const request = {scopes: config.scopes};
  return {
    account: client.getAllAccounts()[0] || null,
    async signIn() { this.account = (await client.loginPopup(request)).account; },
    async headers() {
      if (!this.account) return {};
      try {
        const token = await client.acquireTokenSilent({...request, account: this.account});
        return {Authorization: `Bearer ${token.accessToken}`};
      } catch {
        const expired = new Error("your sign-in has expired: reload the page and sign in again");
        expired.name = "SignInExpired";
        throw expired;
      }
    },
    async signOut() { await client.logoutPopup({account: this.account}); },
  };
}
