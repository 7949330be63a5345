/* statelab chat page: one WebSocket to /ws/chat that reconnects by itself.
 *
 * The client remembers, per room, the last message seq it has shown. On every
 * (re)connect it sends `resume` with those numbers, and the server replays what
 * was missed, so a replica dying mid-conversation loses nothing the server had
 * acknowledged. Sends carry a client_msg_id and are re-sent after a reconnect
 * until acknowledged; the server stores each id once.
 */
(function () {
  "use strict";

  const HISTORY = 50; // messages shown from before the page was opened
  const KEEP = 300; // messages kept per room in the page
  const TYPING_EVERY_MS = 2000;
  const TYPING_SHOWN_MS = 4000;

  const $ = (sel) => document.querySelector(sel);
  let sl; // window.statelab, from app.js

  const rooms = new Map(); // id -> {id, name, lastSeen, unread, messages: []}
  const pending = new Map(); // client_msg_id -> {room, text}
  const online = new Map(); // username -> bool
  const typists = new Map(); // room -> Map(user -> timer)
  let me = "";
  let active = null;
  let ws = null;
  let opened = false;
  let attempts = 0;
  let stopped = false;
  let lastTyping = 0;
  let readTimer = null;

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    (children || []).forEach((c) => node.append(c));
    return node;
  }

  function status(text, up) {
    const conn = $("#conn");
    conn.textContent = text;
    conn.className = "conn " + (up ? "up" : "down");
    $("#send").disabled = !active;
    $("#message-input").disabled = !active;
  }

  // -- rendering --------------------------------------------------------------
  function renderRooms() {
    const list = $("#rooms");
    const items = [];
    for (const room of rooms.values()) {
      const unread = el("span", { className: "unread", textContent: room.unread ? String(room.unread) : "" });
      unread.dataset.testid = "unread-" + room.id;
      if (room.unread) unread.setAttribute("aria-label", room.unread + " unread");
      const button = el("button", { type: "button" }, [el("span", { textContent: room.name }), unread]);
      button.setAttribute("aria-pressed", String(room.id === active));
      button.dataset.room = room.id;
      button.addEventListener("click", () => select(room.id));
      items.push(el("li", {}, [button]));
    }
    if (!items.length) items.push(el("li", { className: "muted", textContent: "No rooms yet: create one or join one by its id." }));
    list.replaceChildren(...items);
  }

  function messageItem(m) {
    const li = el("li", {}, [
      el("span", { className: "author", textContent: m.sender }),
      el("span", { className: "text", textContent: m.text }),
    ]);
    if (m.sent_at) {
      const when = new Date(m.sent_at);
      const time = el("time", { className: "via", dateTime: m.sent_at, textContent: when.toLocaleTimeString() });
      li.append(time);
    }
    if (m.pending) {
      li.className = "pending muted";
      li.append(el("span", { className: "via", textContent: "sending…" }));
    }
    li.dataset.seq = m.seq ? String(m.seq) : "";
    return li;
  }

  function renderLog() {
    const log = $("#log");
    const room = rooms.get(active);
    if (!room) {
      log.replaceChildren();
      return;
    }
    const items = room.messages.map(messageItem);
    for (const p of pending.values()) {
      if (p.room === active) items.push(messageItem({ sender: me, text: p.text, pending: true }));
    }
    log.replaceChildren(...items);
    log.scrollTop = log.scrollHeight;
  }

  function renderHeader() {
    const room = rooms.get(active);
    $("#room-title").textContent = room ? room.name : "No room yet";
    $("#invite").hidden = !room;
    $("#room-id").textContent = room ? room.id : "";
    const link = $("#invite-link");
    link.href = room ? "/chat?room=" + encodeURIComponent(room.id) : "#";
    link.textContent = room ? window.location.origin + link.getAttribute("href") : "";
  }

  function renderOnline() {
    const items = [];
    const names = Array.from(online.keys()).sort();
    for (const name of names) {
      const up = online.get(name);
      const li = el("li", { textContent: name + (name === me ? " (you)" : "") + (up ? "" : " — offline") });
      if (!up) li.className = "offline";
      li.dataset.user = name;
      li.dataset.online = String(up);
      items.push(li);
    }
    $("#online").replaceChildren(...items);
  }

  function renderTyping() {
    const who = Array.from((typists.get(active) || new Map()).keys());
    $("#typing").textContent = who.length ? who.join(", ") + (who.length > 1 ? " are" : " is") + " typing…" : "";
  }

  function renderAll() {
    renderRooms();
    renderHeader();
    renderLog();
    renderTyping();
    renderOnline();
    $("#send").disabled = !active;
    $("#message-input").disabled = !active;
  }

  // -- rooms ------------------------------------------------------------------
  function addRoom(info) {
    const known = rooms.get(info.id);
    if (known) {
      known.name = info.name;
      if (info.unread !== undefined && info.id !== active) known.unread = info.unread;
      return known;
    }
    const room = {
      id: info.id,
      name: info.name,
      lastSeen: Math.max(0, (info.last_seq || 0) - HISTORY),
      unread: info.unread || 0,
      messages: [],
    };
    rooms.set(room.id, room);
    return room;
  }

  async function loadRooms() {
    const out = await sl.api("GET", "/api/chat/rooms");
    out.rooms.forEach(addRoom);
  }

  function select(id) {
    if (!rooms.has(id)) return;
    active = id;
    const url = new URL(window.location.href);
    url.searchParams.set("room", id);
    window.history.replaceState(null, "", url);
    markRead();
    renderAll();
  }

  // Follow a room on this socket from where we are (history comes with it).
  function follow(room) {
    const wanted = {};
    wanted[room.id] = room.lastSeen;
    send({ type: "resume", rooms: wanted });
  }

  // Join over HTTP (a wrong id gets a readable error here), then open the room's
  // page: the new socket enters as a member, so the room learns we are online.
  async function joinById(id) {
    await sl.api("POST", "/api/chat/rooms/" + encodeURIComponent(id) + "/join");
    window.location.assign("/chat?room=" + encodeURIComponent(id));
  }

  // -- the socket -------------------------------------------------------------
  function send(frame) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  function connect() {
    if (stopped) return;
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + window.location.host + "/ws/chat");
    opened = false;
    ws.addEventListener("open", () => {
      opened = true;
      attempts = 0;
      status("Connected", true);
      const cursors = {};
      rooms.forEach((room) => (cursors[room.id] = room.lastSeen));
      send({ type: "resume", rooms: cursors });
      for (const [id, p] of pending) {
        send({ type: "send", room: p.room, client_msg_id: id, text: p.text });
      }
    });
    ws.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      const handle = handlers[frame.type];
      if (handle) handle(frame);
    });
    ws.addEventListener("close", (event) => {
      ws = null;
      if (event.code === 4401) {
        stop("Logged out: log in again to chat.");
        return;
      }
      retry(opened);
    });
  }

  async function retry(wasOpen) {
    if (stopped) return;
    attempts += 1;
    if (!wasOpen && attempts > 1) {
      // A socket refused before it opened may mean the session is gone.
      try {
        await sl.api("GET", "/api/auth/me");
      } catch (err) {
        if (err.status === 401) {
          stop("Logged out: log in again to chat.");
          return;
        }
      }
    }
    const delay = Math.min(8000, 250 * 2 ** Math.min(attempts, 5)) * (0.75 + Math.random() / 2);
    status("Disconnected — reconnecting in " + (delay / 1000).toFixed(1) + " s…", false);
    window.setTimeout(connect, delay);
  }

  function stop(text) {
    stopped = true;
    status(text, false);
    $("#send").disabled = true;
    $("#message-input").disabled = true;
  }

  const handlers = {
    message(m) {
      const room = rooms.get(m.room);
      if (!room || m.seq <= room.lastSeen) return;
      room.lastSeen = m.seq;
      room.messages.push(m);
      if (room.messages.length > KEEP) room.messages.shift();
      pending.delete(m.client_msg_id);
      const typing = typists.get(m.room);
      if (typing && typing.has(m.sender)) {
        window.clearTimeout(typing.get(m.sender));
        typing.delete(m.sender);
      }
      if (m.room === active) {
        renderLog();
        renderTyping();
        markRead();
      } else if (m.sender !== me) {
        room.unread += 1;
        renderRooms();
      }
    },
    ack(a) {
      // The message frame itself follows (or came first); nothing to show yet.
      const p = pending.get(a.client_msg_id);
      if (p) p.seq = a.seq;
    },
    presence(p) {
      online.set(p.user, Boolean(p.online));
      renderOnline();
    },
    typing(t) {
      if (t.user === me) return;
      if (!typists.has(t.room)) typists.set(t.room, new Map());
      const room = typists.get(t.room);
      window.clearTimeout(room.get(t.user));
      room.set(
        t.user,
        window.setTimeout(() => {
          room.delete(t.user);
          renderTyping();
        }, TYPING_SHOWN_MS)
      );
      renderTyping();
    },
    unread(u) {
      const room = rooms.get(u.room);
      if (!room) return;
      room.unread = u.room === active && document.visibilityState === "visible" ? 0 : u.count;
      renderRooms();
    },
    leave(l) {
      rooms.delete(l.room);
      if (active === l.room) active = rooms.size ? rooms.keys().next().value : null;
      renderAll();
    },
    error(e) {
      sl.say(e.detail || "the chat server refused that", "error");
    },
  };

  function markRead() {
    if (readTimer !== null || document.visibilityState !== "visible") return;
    readTimer = window.setTimeout(() => {
      readTimer = null;
      const room = rooms.get(active);
      if (!room) return;
      room.unread = 0;
      renderRooms();
      if (room.lastSeen > 0) send({ type: "read", room: room.id, seq: room.lastSeen });
    }, 300);
  }

  // -- forms ------------------------------------------------------------------
  function bindForms() {
    $("#compose").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("#message-input");
      const text = input.value.trim();
      if (!text || !active) return;
      const id = sl.newKey();
      pending.set(id, { room: active, text: text });
      send({ type: "send", room: active, client_msg_id: id, text: text });
      input.value = "";
      renderLog();
      input.focus();
    });
    $("#message-input").addEventListener("input", () => {
      const now = Date.now();
      if (active && now - lastTyping > TYPING_EVERY_MS && send({ type: "typing", room: active })) {
        lastTyping = now;
      }
    });
    $("#new-room").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = $("#new-room-name");
      const name = input.value.trim();
      if (!name) {
        sl.say("give the room a name", "error");
        input.focus();
        return;
      }
      try {
        const room = addRoom(await sl.api("POST", "/api/chat/rooms", { name: name }));
        input.value = "";
        follow(room);
        select(room.id);
        sl.say("Room created. Invite others with its id: " + room.id, "ok");
      } catch (err) {
        sl.fail(err);
      }
    });
    $("#join-room").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = $("#join-room-id");
      const id = input.value.trim();
      if (!id) {
        sl.say("enter the id of the room to join", "error");
        input.focus();
        return;
      }
      try {
        await joinById(id);
        input.value = "";
      } catch (err) {
        sl.fail(err);
      }
    });
    document.addEventListener("visibilitychange", markRead);
  }

  async function start() {
    sl = window.statelab;
    const box = $("#chat");
    me = box.dataset.me;
    bindForms();
    try {
      await loadRooms();
      const wanted = box.dataset.room;
      if (wanted && !rooms.has(wanted)) {
        await sl.api("POST", "/api/chat/rooms/" + encodeURIComponent(wanted) + "/join");
        await loadRooms();
      }
      active = rooms.has(wanted) ? wanted : rooms.size ? rooms.keys().next().value : null;
    } catch (err) {
      sl.fail(err);
    }
    renderAll();
    connect();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
