/* statelab shop pages: calls the JSON API with fetch, shows who answered.
 *
 * Every response updates the "served by" badge from its X-Served-By header, and
 * every X-CSRF-Token header the API hands out replaces the token we send back.
 * Errors arrive as problem+json; their `detail` is what the person reads.
 */
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  const meta = $('meta[name="csrf-token"]');
  let csrf = meta ? meta.content : "";

  class ApiError extends Error {
    constructor(status, title, detail, body) {
      super(detail);
      this.status = status;
      this.title = title;
      this.body = body;
    }
  }

  function servedBy(replica) {
    const el = $("#served-by");
    if (!el || !replica || el.textContent === replica) return;
    el.textContent = replica;
    const badge = el.closest(".badge");
    if (badge) {
      badge.classList.remove("changed");
      void badge.offsetWidth; // restart the highlight
      badge.classList.add("changed");
    }
  }

  // A random key; crypto.randomUUID exists only on secure origins.
  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function describe(status, body, response) {
    if (body && typeof body === "object") {
      let text = body.detail || body.title || "";
      if (Array.isArray(body.errors) && body.errors.length && !body.detail) {
        text = body.errors.map((e) => e.field + ": " + e.message).join("; ");
      }
      const retry = response.headers.get("Retry-After");
      if (retry && (status === 429 || status === 503)) {
        text += " (try again in " + retry + " s)";
      }
      if (text) return text;
    }
    if (status === 502 || status === 503 || status === 504) {
      return "the shop is not answering right now (" + status + "); try again in a moment";
    }
    return "the request failed (" + status + ")";
  }

  /**
   * Call the JSON API. Resolves with the parsed body (or null), rejects with an
   * ApiError carrying the problem's readable detail.
   */
  async function api(method, path, body, options) {
    const opts = options || {};
    const headers = { Accept: "application/json" };
    const form = body instanceof FormData; // multipart: the browser sets the boundary
    if (body !== undefined && !form) headers["Content-Type"] = "application/json";
    if (method !== "GET" && method !== "HEAD" && csrf) headers["X-CSRF-Token"] = csrf;
    if (opts.idempotencyKey) headers["Idempotency-Key"] = opts.idempotencyKey;
    let response;
    try {
      response = await fetch(path, {
        method: method,
        headers: headers,
        body: body === undefined || form ? body : JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, "Network error", "the shop could not be reached; check the connection and try again");
    }
    servedBy(response.headers.get("X-Served-By"));
    const token = response.headers.get("X-CSRF-Token");
    if (token) csrf = token;
    let data = null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) {
      data = await response.json().catch(() => null);
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.title) || response.statusText, describe(response.status, data, response), data);
    }
    return data;
  }

  function say(text, kind) {
    const box = $("#messages");
    if (!box) return;
    const p = document.createElement("p");
    p.className = "message " + (kind || "ok");
    if (kind === "error") p.setAttribute("role", "alert");
    p.textContent = text;
    box.replaceChildren(p);
  }

  function fail(err) {
    say(err instanceof ApiError ? err.message : String(err), "error");
  }

  function money(cents) {
    const sign = cents < 0 ? "-" : "";
    const abs = Math.abs(cents);
    return sign + "€" + Math.floor(abs / 100) + "." + String(abs % 100).padStart(2, "0");
  }

  function toCents(text) {
    const value = Number(String(text).replace(",", "."));
    if (!Number.isFinite(value) || value <= 0) return null;
    return Math.round(value * 100);
  }

  // Disable a control while its request runs, so a double click sends one request.
  async function busy(control, work) {
    if (control) {
      control.disabled = true;
      control.setAttribute("aria-busy", "true");
    }
    try {
      return await work();
    } finally {
      if (control) {
        control.disabled = false;
        control.removeAttribute("aria-busy");
      }
    }
  }

  function setCartCount(cart) {
    const count = $("#cart-count");
    if (!count || !cart) return;
    const n = cart.items.reduce((sum, line) => sum + line.quantity, 0);
    count.textContent = String(n);
    count.setAttribute("aria-label", n + " items");
  }

  // -- header ---------------------------------------------------------------
  function initHeader() {
    const logout = $("#logout");
    if (logout) {
      logout.addEventListener("click", () =>
        busy(logout, async () => {
          try {
            await api("POST", "/api/auth/logout");
          } catch (err) {
            if (err.status !== 401) return fail(err);
          }
          window.location.assign("/");
        })
      );
    }
  }

  // -- login and register ---------------------------------------------------
  function initAuth() {
    const form = $("#auth-form");
    if (!form) return;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const username = form.elements.username.value.trim();
      const password = form.elements.password.value;
      if (!username || !password) {
        say("enter a username and a password", "error");
        (username ? form.elements.password : form.elements.username).focus();
        return;
      }
      const submit = $('button[type="submit"]', form);
      busy(submit, async () => {
        try {
          if (form.dataset.mode === "register") {
            await api("POST", "/api/auth/register", { username: username, password: password });
          }
          await api("POST", "/api/auth/login", { username: username, password: password });
          window.location.assign(form.dataset.next || "/menu");
        } catch (err) {
          fail(err);
          form.elements.password.focus();
        }
      });
    });
  }

  // -- menu -----------------------------------------------------------------
  function initMenu() {
    $$("[data-add-item]").forEach((button) => {
      button.addEventListener("click", () =>
        busy(button, async () => {
          const id = Number(button.dataset.addItem);
          try {
            const cart = await api("POST", "/api/cart/items", { item_id: id, quantity: 1 });
            setCartCount(cart);
            const line = cart.items.find((l) => l.item_id === id);
            const note = $('[data-in-cart="' + id + '"]');
            if (note && line) note.textContent = line.quantity + " in cart";
            say("Added " + button.dataset.name + " to the cart.", "ok");
          } catch (err) {
            fail(err);
          }
        })
      );
    });
  }

  // -- cart -----------------------------------------------------------------
  function renderCart(cart) {
    setCartCount(cart);
    const table = $("#cart-table");
    const empty = $("#cart-empty");
    const body = $("#cart-lines");
    if (!table || !body) return;
    table.hidden = cart.items.length === 0;
    if (empty) empty.hidden = cart.items.length !== 0;
    const checkout = $("#checkout");
    if (checkout) checkout.disabled = cart.items.length === 0;
    body.replaceChildren(...cart.items.map(cartRow));
    const total = $("#cart-total");
    total.textContent = money(cart.total_cents);
    total.dataset.totalCents = String(cart.total_cents); // what checkout says we showed
    bindCartRows();
  }

  function cartRow(line) {
    const row = document.createElement("tr");
    row.dataset.item = String(line.item_id);
    const name = document.createElement("th");
    name.scope = "row";
    name.className = "name";
    name.textContent = line.name;
    const qtyCell = document.createElement("td");
    const label = document.createElement("label");
    label.className = "sr-only";
    label.htmlFor = "qty-" + line.item_id;
    label.textContent = "Quantity of " + line.name;
    const input = document.createElement("input");
    Object.assign(input, { id: "qty-" + line.item_id, className: "qty", type: "number", min: "0", max: "50", value: String(line.quantity) });
    input.inputMode = "numeric";
    input.dataset.setItem = String(line.item_id);
    qtyCell.append(label, input);
    const priceCell = document.createElement("td");
    priceCell.className = "num";
    priceCell.textContent = money(line.price_cents * line.quantity);
    const removeCell = document.createElement("td");
    const remove = document.createElement("button");
    Object.assign(remove, { type: "button", className: "link", textContent: "Remove" });
    remove.dataset.removeItem = String(line.item_id);
    remove.setAttribute("aria-label", "Remove " + line.name);
    removeCell.append(remove);
    row.append(name, qtyCell, priceCell, removeCell);
    return row;
  }

  function bindCartRows() {
    $$("[data-set-item]").forEach((input) => {
      input.addEventListener("change", async () => {
        const quantity = Number(input.value);
        if (!Number.isInteger(quantity) || quantity < 0) {
          say("the quantity must be a whole number, 0 or more", "error");
          return;
        }
        try {
          renderCart(await api("PATCH", "/api/cart/items/" + input.dataset.setItem, { quantity: quantity }));
        } catch (err) {
          fail(err);
        }
      });
    });
    $$("[data-remove-item]").forEach((button) => {
      button.addEventListener("click", () =>
        busy(button, async () => {
          try {
            renderCart(await api("DELETE", "/api/cart/items/" + button.dataset.removeItem));
          } catch (err) {
            fail(err);
          }
        })
      );
    });
  }

  function initCart() {
    bindCartRows();
    const checkout = $("#checkout");
    if (!checkout) return;
    let key = newKey(); // kept across a network failure, so a retry cannot pay twice
    checkout.addEventListener("click", () =>
      busy(checkout, async () => {
        try {
          // The shop charges only the total shown here; if a price changed since, it refuses (409).
          const shown = Number($("#cart-total").dataset.totalCents);
          const order = await api("POST", "/api/checkout", { expected_total_cents: shown }, { idempotencyKey: key });
          key = newKey();
          renderCart({ items: [], total_cents: 0 });
          say("Order #" + order.id + " paid: " + money(order.total_cents) + ". Balance now " + money(order.balance_cents) + ".", "ok");
        } catch (err) {
          if (err.status !== 0) key = newKey();
          const repriced = err.body && Array.isArray(err.body.items) && Number.isInteger(err.body.total_cents);
          if (err.status === 409 && repriced) {
            renderCart({ items: err.body.items, total_cents: err.body.total_cents });
            say("Prices changed since you saw your cart: it now costs " + money(err.body.total_cents) + ". Nothing was charged; check the cart and pay again.", "error");
            return;
          }
          fail(err);
        }
      })
    );
  }

  // -- account --------------------------------------------------------------
  function initAccount() {
    $$("form.money-form").forEach((form) => {
      let key = newKey();
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const cents = toCents(form.elements.amount.value);
        if (cents === null) {
          say("enter an amount above zero, like 12.50", "error");
          form.elements.amount.focus();
          return;
        }
        const move = form.dataset.move;
        busy($('button[type="submit"]', form), async () => {
          try {
            const out = await api("POST", "/api/account/" + move, { amount_cents: cents }, { idempotencyKey: key });
            key = newKey();
            $("#balance").textContent = money(out.balance_cents);
            say((move === "top-up" ? "Topped up " : "Withdrew ") + money(cents) + ". Balance " + money(out.balance_cents) + ".", "ok");
          } catch (err) {
            if (err.status !== 0) key = newKey();
            fail(err);
          }
        });
      });
    });
    const all = $("#logout-all");
    if (all) {
      all.addEventListener("click", () =>
        busy(all, async () => {
          try {
            const out = await api("POST", "/api/auth/logout-all");
            say("Logged out " + out.revoked + " session(s).", "ok");
            window.location.assign("/login");
          } catch (err) {
            fail(err);
          }
        })
      );
    }
  }

  // -- photos ---------------------------------------------------------------
  const THUMB_POLL_MS = 1000;
  const THUMB_POLL_TRIES = 90;

  function photoItem(file) {
    const li = document.createElement("li");
    li.dataset.file = file.id;
    const link = document.createElement("a");
    link.href = "/api/files/" + file.id;
    link.textContent = file.filename;
    const size = document.createElement("span");
    size.className = "muted";
    size.textContent = " " + (file.size / 1024).toFixed(1) + " KiB";
    const pending = document.createElement("span");
    pending.className = "pending";
    pending.textContent = "thumbnail pending…";
    li.append(pending, link, size);
    return li;
  }

  function showThumbnail(li, file) {
    if (li.dataset.thumbnail) return;
    li.dataset.thumbnail = file.thumbnail;
    const img = document.createElement("img");
    img.src = "/api/files/" + file.thumbnail;
    img.alt = "Thumbnail of " + file.filename;
    const pending = li.querySelector(".pending");
    if (pending) pending.replaceWith(img);
    else li.prepend(img);
  }

  let thumbPolling = false;

  // Thumbnails come from a background job: ask until every photo has one (bounded).
  async function pollThumbnails() {
    if (thumbPolling) return;
    thumbPolling = true;
    try {
      for (let i = 0; i < THUMB_POLL_TRIES; i++) {
        const waiting = $$("#photos li[data-file]:not([data-thumbnail])");
        if (!waiting.length) return;
        await new Promise((resolve) => window.setTimeout(resolve, THUMB_POLL_MS));
        let out;
        try {
          out = await api("GET", "/api/files");
        } catch (err) {
          continue; // a replica restarting: try again
        }
        for (const file of out.files) {
          const li = $('#photos li[data-file="' + file.id + '"]');
          if (li && file.thumbnail) showThumbnail(li, file);
        }
      }
      say("no thumbnail yet: is a job worker running?", "error");
    } finally {
      thumbPolling = false;
    }
  }

  function initPhotos() {
    const form = $("#upload");
    const list = $("#photos");
    if (!form || !list) return;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = form.elements.file;
      const file = input.files && input.files[0];
      if (!file) {
        say("choose a photo to upload", "error");
        input.focus();
        return;
      }
      const max = Number(list.dataset.maxBytes);
      if (max && file.size > max) {
        say("that file is " + (file.size / 1048576).toFixed(1) + " MB; the limit is " + (max / 1048576).toFixed(1) + " MB", "error");
        return;
      }
      const data = new FormData();
      data.append("file", file, file.name);
      busy($('button[type="submit"]', form), async () => {
        try {
          const stored = await api("POST", "/api/files", data);
          list.prepend(photoItem(stored));
          $("#no-photos").hidden = true;
          form.reset();
          say("Uploaded " + stored.filename + ".", "ok");
          pollThumbnails();
        } catch (err) {
          fail(err);
        }
      });
    });
    pollThumbnails();
  }

  window.statelab = { api: api, say: say, fail: fail, money: money, newKey: newKey, busy: busy, servedBy: servedBy, ApiError: ApiError, csrf: () => csrf };

  document.addEventListener("DOMContentLoaded", () => {
    initHeader();
    const page = document.body.dataset.page;
    if (page === "login" || page === "register") initAuth();
    if (page === "menu") initMenu();
    if (page === "cart") initCart();
    if (page === "account") initAccount();
    if (page === "photos") initPhotos();
  });
})();
