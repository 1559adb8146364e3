// enlace's browser chat. It speaks the message protocol of docs/protocol.md as JSON
// over a WebSocket (/ws): requests {"id", "cmd", "args"}, replies {"id", "ok", ...},
// and events {"event": ...}. Everything a user or the server wrote is shown with
// textContent, never as HTML. No build step, no dependencies.
"use strict";

(() => {
  const DEFAULT_ROOM = "general";
  const HISTORY = 100; // the server keeps at most this many messages a room
  const ROOM_NAME = /^#?([a-z0-9][a-z0-9_-]{0,31})$/;
  const FIRST_DELAY = 500; // ms before the first reconnection attempt; doubled each time
  const MAX_DELAY = 10000;
  const ROOMS_REFRESH = 20000; // ms: other people create rooms without telling us
  const MAX_SEEN = 1000; // messages remembered to skip them when a rejoin replays them
  const MAX_LINES = 2000; // lines kept in the page; older ones are removed

  const $ = (id) => document.getElementById(id);
  const log = $("log");
  const saved = {
    get(key) {
      try { return localStorage.getItem(`enlace.${key}`); } catch { return null; }
    },
    set(key, value) {
      try { localStorage.setItem(`enlace.${key}`, value); } catch { /* private mode */ }
    },
  };
  // The access token (--token) lives in this tab only: sessionStorage, not localStorage.
  const tokenStore = {
    get() {
      try { return sessionStorage.getItem("enlace.token"); } catch { return null; }
    },
    set(value) {
      try { sessionStorage.setItem("enlace.token", value); } catch { /* private mode */ }
    },
  };

  // A token comes as chat.html#token=... (a fragment never reaches the server, so it is in
  // no request line or log) or ?token=...; then it is kept for this tab and taken out of
  // the address bar, so that copying the address does not share it.
  function tokenFromAddress() {
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
    const query = new URLSearchParams(location.search);
    const token = fromHash || query.get("token");
    if (!token) return tokenStore.get();
    tokenStore.set(token);
    query.delete("token");
    const search = query.toString();
    history.replaceState(null, "", location.pathname + (search ? `?${search}` : ""));
    return token;
  }

  const state = {
    ws: null,
    ready: false, // nick and room set up on the current connection
    quitting: false,
    nextId: 1,
    pending: new Map(), // request id -> {resolve, reject}
    chosen: saved.get("nick"), // the nick the user chose (null: a guest, named by the server)
    nick: null, // the nick on the current connection
    room: saved.get("room") || DEFAULT_ROOM,
    members: [],
    delay: FIRST_DELAY,
    token: tokenFromAddress(),
    opened: false, // whether the current WebSocket ever opened
    seen: new Set(),
    seenOrder: [],
    live: new Map(), // assistant stream id -> its line, growing as the answer streams
    timers: { members: 0, rooms: 0, refresh: 0 },
  };

  // -- the connection -----------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // A browser's WebSocket cannot send headers: the token can only go in the query.
    const query = state.token ? `?token=${encodeURIComponent(state.token)}` : "";
    const ws = new WebSocket(`${scheme}//${location.host}/ws${query}`);
    state.ws = ws;
    state.ready = false;
    state.opened = false;
    setStatus("connecting", "connecting…");
    ws.onopen = () => {
      state.opened = true;
      $("token-form").hidden = true;
      setUp(ws).catch((error) => {
        if (state.ws !== ws) return;
        note(`could not join: ${error.message}`, "error");
        ws.close();
      });
    };
    ws.onmessage = (message) => {
      if (state.ws === ws) receive(message.data);
    };
    ws.onclose = (closed) => {
      if (state.ws !== ws) return;
      if (state.opened) {
        lost(closed);
        return;
      }
      // Refused before opening: a page cannot see the status, so ask whether it was the
      // token (403) or something else (the server is down, restarting...).
      tokenRefused().then((refused) => (refused ? askToken() : lost(closed)));
    };
  }

  async function tokenRefused() {
    try {
      const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
      const answer = await fetch("/ws", { headers, cache: "no-store" });
      return answer.status === 403;
    } catch {
      return false; // no answer at all: the server is not there
    }
  }

  function askToken() {
    const form = $("token-form");
    const wrong = Boolean(state.token);
    form.hidden = false;
    setStatus("down", wrong ? "wrong access token" : "an access token is needed");
    $("token-input").focus();
  }

  function lost(closed) {
    const wasReady = state.ready;
    state.ready = false;
    for (const { reject } of state.pending.values()) reject(new Error("connection lost"));
    state.pending.clear();
    clearInterval(state.timers.refresh);
    if (state.quitting) {
      setStatus("down", "disconnected — reload the page to come back");
      return;
    }
    if (wasReady) {
      const why = closed.reason ? `: ${closed.reason}` : "";
      note(`connection lost (${closed.code}${why}); reconnecting…`, "error");
    }
    const delay = state.delay * (0.8 + Math.random() * 0.4); // spread a crowd's retries
    state.delay = Math.min(state.delay * 2, MAX_DELAY);
    setStatus("down", `reconnecting in ${Math.ceil(delay / 1000)} s…`);
    setTimeout(connect, delay);
  }

  function request(cmd, args = [], line = null) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new Error("not connected"));
    }
    const id = state.nextId++;
    const body = line === null ? { id, cmd, args } : { id, cmd, line };
    return new Promise((resolve, reject) => {
      state.pending.set(id, { resolve, reject });
      ws.send(JSON.stringify(body));
    });
  }

  // The first request starts the session; the server greets in text form before it.
  async function setUp(ws) {
    setStatus("connecting", "joining…");
    state.nick = state.chosen;
    if (state.chosen) {
      try {
        await request("nick", [state.chosen]);
      } catch (error) {
        if (error.code !== "nick_taken") throw error;
        // Our previous connection may not be gone from the server yet.
        const spare = `${state.chosen}_`;
        await request("nick", [spare]);
        note(`${state.chosen} is still in use (your old connection?): you are ${spare} for now`);
        state.nick = spare;
      }
    } else {
      await request("ping");
    }
    if (state.room !== DEFAULT_ROOM) {
      try {
        await request("join", [state.room]);
      } catch (error) {
        note(`cannot rejoin #${state.room}: ${error.message}`, "error");
        state.room = DEFAULT_ROOM;
      }
    }
    if (state.room === DEFAULT_ROOM) {
      // Already there since the greeting, whose replay came as text: ask again in JSON.
      await request("history", [HISTORY]);
    }
    if (state.ws !== ws) return;
    state.ready = true;
    state.delay = FIRST_DELAY;
    showRoom();
    setStatus("ok", `connected as ${state.nick}`);
    refreshMembers();
    refreshRooms();
    state.timers.refresh = setInterval(refreshRooms, ROOMS_REFRESH);
  }

  // -- what the server sends ----------------------------------------------------------

  function receive(data) {
    if (!data.startsWith("{")) {
      // A text payload: the greeting (before any request), or text-form events then.
      const welcome = /^\* welcome, (\S+):/.exec(data);
      if (welcome && !state.nick) state.nick = welcome[1];
      if (state.ready) note(data.replace(/^\* /, ""));
      return;
    }
    let value;
    try {
      value = JSON.parse(data);
    } catch {
      note(data);
      return;
    }
    if ("ok" in value) {
      const waiting = state.pending.get(value.id);
      if (waiting) {
        state.pending.delete(value.id);
        if (value.ok) {
          waiting.resolve(value.result);
        } else {
          const error = new Error(value.error ? value.error.message : "error");
          error.code = value.error ? value.error.code : "error";
          waiting.reject(error);
        }
      } else if (!value.ok && value.error) {
        note(`${value.error.code}: ${value.error.message}`, "error");
      }
      return;
    }
    if ("event" in value) event(value);
  }

  function event(e) {
    switch (e.event) {
      case "message":
        return message(e);
      case "private":
        return line({ ts: e.ts, from: `${e.from} → ${e.to}`, text: e.text, kind: "private" });
      case "assistant":
        return streaming(e);
      case "join":
      case "leave":
      case "nick":
        if (e.room === state.room) scheduleMembers();
        scheduleRooms();
        if (e.event === "nick" && e.old === state.nick) state.nick = e.new;
        if (state.ready) note(e.text);
        return;
      default:
        if (state.ready && e.text) note(e.text);
    }
  }

  function message(e) {
    if (e.room !== state.room) return;
    const key = JSON.stringify([e.room, e.from, e.ts, e.text]);
    if (state.seen.has(key)) return; // a rejoin replays what is shown already
    state.seen.add(key);
    state.seenOrder.push(key);
    if (state.seenOrder.length > MAX_SEEN) state.seen.delete(state.seenOrder.shift());
    const finished = e.stream && state.live.get(e.stream);
    if (finished) {
      // The assistant's answer, streamed so far, is now whole.
      state.live.delete(e.stream);
      finished.classList.remove("live");
      finished.querySelector(".text").textContent = e.text;
      return;
    }
    const kind = e.from === state.nick ? "mine" : "";
    line({ ts: e.ts, from: e.from, text: e.text, kind: e.replay ? `${kind} earlier` : kind });
  }

  function streaming(e) {
    if (e.room !== state.room) return;
    let item = state.live.get(e.stream);
    if (!item) {
      item = line({ ts: Date.now() / 1000, from: "assistant", text: "", kind: "live" });
      state.live.set(e.stream, item);
    }
    item.querySelector(".text").textContent += e.delta;
    scrollDown(true);
  }

  // -- the page ---------------------------------------------------------------------

  function line({ ts, from = null, text, kind = "" }) {
    const item = document.createElement("li");
    if (kind) item.className = kind;
    const time = document.createElement("time");
    const when = new Date((ts || Date.now() / 1000) * 1000);
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    item.append(time);
    if (from !== null) {
      const who = document.createElement("span");
      who.className = "from";
      who.textContent = from;
      item.append(who);
    }
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    item.append(body);
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(item);
    while (log.children.length > MAX_LINES) log.firstElementChild.remove();
    scrollDown(atBottom);
    return item;
  }

  function note(text, kind = "notice") {
    line({ text, kind });
  }

  function scrollDown(really) {
    if (really) log.scrollTop = log.scrollHeight;
  }

  function setStatus(kind, text) {
    const status = $("status");
    status.textContent = text;
    status.className = `status ${kind}`;
    document.body.dataset.state = kind;
  }

  function showRoom() {
    $("room-title").textContent = `#${state.room}`;
    $("say-input").placeholder = `Message #${state.room} — /help for commands, /msg NICK text to whisper`;
    document.title = `#${state.room} · enlace chat`;
    const input = $("nick-input");
    if (document.activeElement !== input) input.value = state.nick || "";
    for (const button of document.querySelectorAll("#rooms button")) {
      button.setAttribute("aria-current", String(button.dataset.room === state.room));
    }
  }

  function scheduleMembers() {
    clearTimeout(state.timers.members);
    state.timers.members = setTimeout(refreshMembers, 150);
  }

  function scheduleRooms() {
    clearTimeout(state.timers.rooms);
    state.timers.rooms = setTimeout(refreshRooms, 300);
  }

  async function refreshMembers() {
    let answer;
    try {
      answer = await request("who");
    } catch {
      return;
    }
    // "room: ana, nc" (and a note in parentheses when the hub is unreachable)
    const names = answer.slice(answer.indexOf(": ") + 2).replace(/ \(.*\)$/, "");
    state.members = names ? names.split(", ") : [];
    const list = $("members");
    list.replaceChildren(
      ...state.members.map((nick) => {
        const item = document.createElement("li");
        item.textContent = nick;
        if (nick === state.nick) {
          const you = document.createElement("span");
          you.className = "you";
          you.textContent = " (you)";
          item.append(you);
        }
        return item;
      }),
    );
  }

  async function refreshRooms() {
    let answer;
    try {
      answer = await request("rooms");
    } catch {
      return;
    }
    const rooms = [];
    for (const entry of String(answer).split("\n")) {
      const found = /^([a-z0-9][a-z0-9_-]*) \((\d+)\)$/.exec(entry);
      if (found) rooms.push([found[1], Number(found[2])]);
    }
    $("rooms").replaceChildren(
      ...rooms.map(([name, count]) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.room = name;
        button.textContent = `#${name} `;
        const people = document.createElement("span");
        people.className = "count";
        people.textContent = String(count);
        button.append(people);
        button.addEventListener("click", () => joinRoom(name));
        item.append(button);
        return item;
      }),
    );
    showRoom();
  }

  // -- what the user does -------------------------------------------------------------

  async function joinRoom(text) {
    const found = ROOM_NAME.exec(text.trim().toLowerCase());
    if (!found) {
      note("a room name is 1-32 letters, digits, '-' or '_', e.g. python", "error");
      return;
    }
    const room = found[1];
    if (room === state.room) return;
    const previous = state.room;
    state.room = room; // the replay comes before the reply: show it in the new room
    log.replaceChildren();
    state.live.clear();
    showRoom();
    try {
      note(await request("join", [room]));
    } catch (error) {
      state.room = previous;
      showRoom();
      note(`cannot join #${room}: ${error.message}`, "error");
      return;
    }
    saved.set("room", room);
    closeSide();
    refreshMembers();
    refreshRooms();
  }

  async function setNick(nick) {
    nick = nick.trim();
    if (!nick || nick === state.nick) return;
    try {
      note(await request("nick", [nick]));
    } catch (error) {
      note(`cannot be ${nick}: ${error.message}`, "error");
      return;
    }
    state.nick = state.chosen = nick;
    saved.set("nick", nick);
    showRoom();
    setStatus("ok", `connected as ${nick}`);
    scheduleMembers();
  }

  async function submit(text) {
    if (!text.trim()) return;
    if (!text.startsWith("/") || text.startsWith("//")) {
      try {
        await request("say", [text.startsWith("//") ? text.slice(1) : text]);
      } catch (error) {
        note(`not sent: ${error.message}`, "error");
      }
      return;
    }
    const space = text.indexOf(" ");
    const name = (space < 0 ? text.slice(1) : text.slice(1, space)).toLowerCase();
    const rest = space < 0 ? "" : text.slice(space + 1).trim();
    if (name === "join") return joinRoom(rest);
    if (name === "leave") return joinRoom(DEFAULT_ROOM);
    if (name === "nick") return setNick(rest);
    if (name === "quit") state.quitting = true;
    try {
      const result = await request(name, [], rest);
      if (typeof result === "string" && result) note(result);
      else if (result !== null && result !== undefined) note(JSON.stringify(result));
    } catch (error) {
      note(`${error.code || "error"}: ${error.message}`, "error");
    }
  }

  function closeSide() {
    $("side").classList.remove("open");
    $("toggle-side").setAttribute("aria-expanded", "false");
  }

  $("say-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("say-input");
    const text = input.value;
    input.value = "";
    submit(text);
  });
  $("nick-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setNick($("nick-input").value);
  });
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("join-input");
    joinRoom(input.value);
    input.value = "";
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("token-input");
    const token = input.value.trim();
    if (!token) return;
    input.value = "";
    state.token = token;
    tokenStore.set(token);
    $("token-form").hidden = true;
    state.delay = FIRST_DELAY;
    connect();
  });
  $("toggle-side").addEventListener("click", () => {
    const open = $("side").classList.toggle("open");
    $("toggle-side").setAttribute("aria-expanded", String(open));
  });

  connect();
})();
