// KeyBridge web checkout. Served by the KeyBridge server itself; no third-party code.
//
// Authentication: the terminal's API key is asked for once and kept in
// sessionStorage (this tab only). Every API call sends it as a Bearer header.
// The live status reads the SSE endpoint with fetch() and a streamed body,
// because EventSource cannot send headers and a key in a URL would be logged.
"use strict";

(() => {
  const KEY_STORAGE = "keybridge.terminalApiKey";
  const $ = (id) => document.getElementById(id);
  const sections = ["connect", "checkout", "progress", "account"];

  // ---- Money: integers of minor units only, never floats. ----------------

  // Minor-unit digits of a currency, from the browser's ISO 4217 data.
  function minorDigits(currency) {
    return new Intl.NumberFormat("en", { style: "currency", currency })
      .resolvedOptions().maximumFractionDigits;
  }

  // "12.34" in CNY -> 1234. Returns null if the text is not a valid amount.
  function toMinor(text, currency) {
    const digits = minorDigits(currency);
    const m = /^(\d{1,15})(?:[.,](\d+))?$/.exec(text.trim());
    if (!m) return null;
    const frac = m[2] || "";
    if (frac.length > digits) return null;
    const minor = Number(m[1] + frac.padEnd(digits, "0"));
    return Number.isSafeInteger(minor) && minor > 0 ? minor : null;
  }

  // 1234 CNY -> "CN¥12.34" (the locale's own way), exact: formatted from a decimal string.
  function formatMoney(minor, currency) {
    const digits = minorDigits(currency);
    const s = String(minor).padStart(digits + 1, "0");
    const decimal = digits ? s.slice(0, -digits) + "." + s.slice(-digits) : s;
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(decimal);
    } catch (_) {
      return currency + " " + decimal;
    }
  }

  // ---- API ------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE);
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: "Bearer " + apiKey() }, options.headers || {});
    const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    if (response.ok) return response;
    let body = { error: "http_error", message: "HTTP " + response.status };
    try { body = await response.json(); } catch (_) { /* not our error body */ }
    if (response.status === 401) forgetKey("The server refused this API key. Enter it again.");
    throw new ApiError(response.status, body.error, body.message);
  }

  // ---- Views ----------------------------------------------------------------

  function show(name, focusId) {
    for (const s of sections) $(s).hidden = s !== name;
    const signedIn = Boolean(apiKey());
    $("sign-out").hidden = !signedIn;
    $("nav-checkout").setAttribute("aria-current", name === "checkout" || name === "progress" ? "page" : "false");
    $("nav-account").setAttribute("aria-current", name === "account" ? "page" : "false");
    // Move focus to the new view's heading so screen readers announce it.
    const target = $(focusId || name + "-title");
    if (target) target.focus();
  }

  function forgetKey(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    stopFollowing();
    show("connect");
    $("connect-error").textContent = message || "";
  }

  function fieldError(errorId, input, message) {
    $(errorId).textContent = message;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }

  function clearErrors(form, errorId) {
    $(errorId).textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  // ---- Connect --------------------------------------------------------------

  $("connect-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    clearErrors(form, "connect-error");
    const key = $("api-key").value.trim();
    if (!key) return fieldError("connect-error", $("api-key"), "Enter the terminal's API key.");
    sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    show("checkout", "checkout-title");
    if (!$("order").value) $("order").value = newOrderId();
  });

  $("sign-out").addEventListener("click", () => forgetKey("API key forgotten."));
  $("nav-checkout").addEventListener("click", () => apiKey() ? show(following ? "progress" : "checkout") : show("connect"));
  $("nav-account").addEventListener("click", () => apiKey() ? show("account") : show("connect"));

  function newOrderId() {
    const bytes = crypto.getRandomValues(new Uint8Array(4));
    return "ORD-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("").toUpperCase();
  }

  // ---- Pay ------------------------------------------------------------------

  // The Idempotency-Key is made here and kept until the request is answered,
  // so a retry after a network error cannot pay twice.
  let pending = null;

  $("pay-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    clearErrors(form, "pay-error");
    const currency = $("currency").value.trim().toUpperCase();
    let digitsOk = true;
    try { minorDigits(currency); } catch (_) { digitsOk = false; }
    if (!/^[A-Z]{3}$/.test(currency) || !digitsOk) {
      return fieldError("pay-error", $("currency"), "Currency must be a three-letter ISO 4217 code such as CNY.");
    }
    const amountMinor = toMinor($("amount").value, currency);
    if (amountMinor === null) {
      return fieldError("pay-error", $("amount"), "Amount must be a positive number with at most " + minorDigits(currency) + " decimals for " + currency + ".");
    }
    for (const id of ["payer", "payee", "order"]) {
      if (!$(id).value.trim()) return fieldError("pay-error", $(id), "Fill in " + form.querySelector("label[for=" + id + "]").textContent + ".");
    }
    const body = {
      payer: $("payer").value.trim(),
      payee: $("payee").value.trim(),
      amount_minor: amountMinor,
      currency,
      order_id: $("order").value.trim(),
      description: $("description").value.trim(),
    };
    const text = JSON.stringify(body);
    if (!pending || pending.text !== text) pending = { text, key: crypto.randomUUID() };
    $("pay-submit").disabled = true;
    try {
      const response = await api("/v1/transactions", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": pending.key },
        body: text,
      });
      const view = await response.json();
      pending = null;
      follow(view);
    } catch (e) {
      if (e instanceof ApiError) {
        pending = null; // The server answered: this key is spent.
        if (e.status !== 401) fieldError("pay-error", null, e.message + " (" + e.code + ")");
      } else {
        fieldError("pay-error", null, "Cannot reach the server. Submit again to retry the same payment.");
      }
    } finally {
      $("pay-submit").disabled = false;
    }
  });

  // ---- Follow one transaction live ---------------------------------------------

  let following = null; // { id, abort, timer }

  function stopFollowing() {
    if (!following) return;
    following.abort.abort();
    clearInterval(following.timer);
    following = null;
  }

  const STATUS_WORDS = {
    pending: "Waiting for confirmation on the payer's phone and security device…",
    settled: "Payment settled",
    rejected: "Payment rejected",
    expired: "Payment expired",
    failed: "Payment failed",
  };

  function render(view) {
    $("sum-amount").textContent = formatMoney(view.amount_minor, view.currency);
    $("sum-amount").dataset.minor = String(view.amount_minor);
    $("sum-payee").textContent = view.payee_name + " (" + view.payee + ")";
    $("sum-order").textContent = view.order_id;
    $("sum-description").textContent = view.description || "—";
    $("sum-payer").textContent = view.payer;
    $("sum-id").textContent = view.id;
    $("status").dataset.status = view.status;
    $("status-text").textContent = STATUS_WORDS[view.status] || view.status;
    $("status-reason").textContent = view.reason_text ? "Reason: " + view.reason_text + "." : "";
    $("status-reason").dataset.reason = view.reason || "";
  }

  function finish(view) {
    render(view);
    stopFollowing();
    $("time-left").textContent = "";
    $("progress-title").textContent = view.status === "settled" ? "Paid" : "Not paid";
    $("new-payment").hidden = false;
    $("progress-title").focus();
  }

  function follow(view) {
    stopFollowing();
    $("progress-title").textContent = "Confirm on your phone";
    $("new-payment").hidden = true;
    render(view);
    show("progress", "progress-title");
    if (view.status !== "pending") return finish(view);
    const abort = new AbortController();
    const tick = () => {
      const left = Math.max(0, view.expires_at_unix_s - Math.floor(Date.now() / 1000));
      $("time-left").textContent = "Time left to confirm: " + left + " s";
    };
    tick();
    following = { id: view.id, abort, timer: setInterval(tick, 1000) };
    stream(view.id, abort.signal).catch(() => poll(view.id, abort.signal));
  }

  // Reads `event: status` messages from the SSE endpoint until a final status.
  async function stream(id, signal) {
    const response = await api("/v1/transactions/" + encodeURIComponent(id) + "/events", {
      headers: { Accept: "text/event-stream" }, signal,
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const message = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of message.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (event !== "status" || data.length === 0) continue; // keep-alive comments
        const view = JSON.parse(data.join("\n"));
        if (view.status !== "pending") return finish(view);
        render(view);
      }
    }
    // The stream closed without an end (server restart): fall back to long-polling.
    throw new Error("stream closed");
  }

  async function poll(id, signal) {
    while (!signal.aborted) {
      try {
        const response = await api("/v1/transactions/" + encodeURIComponent(id) + "?wait=30", { signal });
        const view = await response.json();
        if (view.status !== "pending") return finish(view);
        render(view);
      } catch (e) {
        if (signal.aborted || (e instanceof ApiError && e.status === 401)) return;
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
  }

  $("new-payment").addEventListener("click", () => {
    stopFollowing();
    // The last payment's outcome must not stand in for the next one's.
    $("status").dataset.status = "";
    $("order").value = newOrderId();
    $("amount").value = "";
    $("description").value = "";
    show("checkout", "checkout-title");
  });

  // ---- Account ------------------------------------------------------------------

  $("account-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    clearErrors(form, "account-error");
    const id = $("account-id").value.trim();
    if (!id) return fieldError("account-error", $("account-id"), "Enter an account.");
    $("account-view").hidden = true;
    try {
      const response = await api("/v1/accounts/" + encodeURIComponent(id));
      const activity = await response.json();
      const a = activity.account;
      $("account-name").textContent = a.display_name + " (" + a.id + ")";
      $("account-balance").textContent = formatMoney(a.balance_minor, a.currency);
      const rows = $("account-rows");
      rows.replaceChildren();
      for (const t of activity.transactions) {
        const tr = document.createElement("tr");
        const cells = [
          t.order_id,
          t.payee_name,
          formatMoney(t.amount_minor, t.currency),
          t.status + (t.reason_text ? " — " + t.reason_text : ""),
          new Date(t.created_at_unix_s * 1000).toLocaleString(),
        ];
        for (const text of cells) {
          const td = document.createElement("td");
          td.textContent = text; // never innerHTML: names come from accounts
          tr.appendChild(td);
        }
        rows.appendChild(tr);
      }
      $("account-view").hidden = false;
      $("account-name").focus();
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        fieldError("account-error", $("account-id"), "This terminal has no payments for that account yet.");
      } else if (e instanceof ApiError) {
        if (e.status !== 401) fieldError("account-error", null, e.message);
      } else {
        fieldError("account-error", null, "Cannot reach the server.");
      }
    }
  });

  // ---- Start ------------------------------------------------------------------------

  if (apiKey()) {
    show("checkout", "checkout-title");
    $("order").value = newOrderId();
  } else {
    show("connect");
  }
})();
