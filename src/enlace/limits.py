"""Every default limit and timeout of enlace, each with the reason for its value.

Limits are passed as keyword-only ``max_*`` arguments and timeouts as
``*_timeout`` arguments in seconds; ``None`` disables one. The defaults below
are the ones documented in DESIGN.md section 4 and docs/reference.md.
"""

from __future__ import annotations

__all__ = [
    "AI_CONNECT_TIMEOUT",
    "AI_READ_TIMEOUT",
    "AI_TOTAL_TIMEOUT",
    "ASK_INTERVAL",
    "DRAIN_TIMEOUT",
    "FLOOD_BURST",
    "FLOOD_MAX_REFUSALS",
    "FLOOD_RATE",
    "FLOOD_WINDOW",
    "HTTP_HEAD_TIMEOUT",
    "HTTP_KEEPALIVE_TIMEOUT",
    "HUB_HEARTBEAT",
    "HUB_MAX_BACKOFF",
    "HUB_PRESENCE_TTL",
    "HUB_TIMEOUT",
    "IDLE_TIMEOUT",
    "LINGER_BYTES",
    "LINGER_TIMEOUT",
    "MAX_AI_ANSWER",
    "MAX_AI_CONTEXT",
    "MAX_AI_LINE",
    "MAX_AI_PENDING",
    "MAX_BODY",
    "MAX_CHAT_MESSAGE",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_THREADS",
    "MAX_DATAGRAM",
    "MAX_EVENTS",
    "MAX_FRAME",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_HISTORY",
    "MAX_HUB_BATCH",
    "MAX_HUB_CLEANUP",
    "MAX_HUB_HELD",
    "MAX_HUB_PENDING",
    "MAX_HUB_REREADS",
    "MAX_JSON",
    "MAX_JSON_DEPTH",
    "MAX_LINE",
    "MAX_LINGERING_REFUSALS",
    "MAX_LISTING",
    "MAX_MARKS",
    "MAX_NICK",
    "MAX_OUTBOUND",
    "MAX_PER_IP",
    "MAX_PIPELINE",
    "MAX_REQUEST_LINE",
    "MAX_ROOMS",
    "MAX_TOKEN",
    "MAX_WS_MESSAGE",
    "READ_SIZE",
    "REQUEST_TIMEOUT",
    "SLOW_TIMEOUT",
    "STORE_BUSY_TIMEOUT",
    "TLS_HANDSHAKE_TIMEOUT",
    "TOKEN_FAIL_DELAY",
    "WRITE_BUFFER_HIGH",
    "WS_CLOSE_TIMEOUT",
    "WS_PING_INTERVAL",
    "WS_PING_TIMEOUT",
]

# Enough for a classroom or a small team; past it a server answers "busy", so a
# connection flood cannot exhaust file descriptors (the usual ulimit is 1024).
MAX_CONNECTIONS = 1024

# A thread per client costs a stack (8 MiB virtual) and a scheduler slot;
# 256 threads is where a 2-core machine still switches between them fairly.
MAX_CONNECTIONS_THREADS = 256

# Large enough for any message a person or a small file makes, small enough that
# a hostile length header cannot make the server allocate much.
MAX_FRAME = 1024 * 1024

# A JSON request is one frame, so the frame limit already bounds it; kept separate
# so that a deployment can allow large binary frames but small JSON documents.
MAX_JSON = 1024 * 1024

# Real requests nest a few levels; deep nesting only serves to exhaust a parser's stack.
MAX_JSON_DEPTH = 32

# Requests a client may have queued behind a slow (async) command before the
# server stops reading from it: enough for any honest pipeline, bounded for floods.
MAX_PIPELINE = 256

# A line typed or pasted by a person is far shorter; 16 KiB also bounds the
# buffer a client without newlines can make us hold.
MAX_LINE = 16 * 1024

# Fits every reply of the UDP echo service and stays under the 9000-byte jumbo
# MTU, so datagrams are rarely fragmented.
MAX_DATAGRAM = 8 * 1024

# A client silent for five minutes has almost always gone away without closing;
# its slot (thread, descriptor) is worth more to the next one.
IDLE_TIMEOUT = 300.0

# Long enough for in-flight replies and transfers on loopback or a LAN to end,
# short enough that a stuck client cannot hold up a restart.
DRAIN_TIMEOUT = 10.0

# One recv() worth: asyncio's own read size, large enough to amortize the
# syscall, small enough that one busy client cannot starve the others.
READ_SIZE = 256 * 1024

# After the server closes a connection it reads and discards what the client still
# sends, so that unread bytes do not make the kernel reset the connection and destroy
# our last reply (the "lingering close" of Apache and nginx): a client that has read
# our reply stops within a round trip; one that does not gets this long, in all.
LINGER_TIMEOUT = 2.0
# ...or until this much has been discarded: a client still sending that much is not
# going to read our reply.
LINGER_BYTES = 1024 * 1024

# Refused connections lingering at once, per server: each holds a socket (over TLS, a
# handshake too) for up to LINGER_TIMEOUT, so a flood of refused clients cannot hold
# sockets without bound; past it, a refused connection is closed at once.
MAX_LINGERING_REFUSALS = 64

# Pause reading from a client when this much output waits for it, so a client
# that sends but does not read cannot make the server buffer without bound.
WRITE_BUFFER_HIGH = 256 * 1024

# A client that is not consuming pushed events keeps at most this many; past it
# the oldest are dropped and counted (Client.dropped_events), never silently.
MAX_EVENTS = 1024

# A reply normally takes milliseconds; 30 s covers a slow command (an AI answer)
# while still telling a caller that something is wrong.
REQUEST_TIMEOUT = 30.0

# Output waiting for one client (pushes it has not read): past 1 MiB it is not
# reading at all, and holding more for it would only cost the server memory.
MAX_OUTBOUND = 1024 * 1024

# A client that leaves more than WRITE_BUFFER_HIGH of output unread this long is
# stuck or gone; it is disconnected so that broadcasts need not wait for it.
SLOW_TIMEOUT = 10.0

# A chat message is something a person reads: 4 KiB is a long paragraph, and
# bounds what one message costs to store and to push to every member of a room.
MAX_CHAT_MESSAGE = 4 * 1024

# Messages a room keeps and replays to whoever joins: a screenful or two of context.
MAX_HISTORY = 100

# Rooms one server keeps: plenty for a class or a team, bounded so that creating
# rooms cannot grow the server without limit.
MAX_ROOMS = 1000

# Long enough for a full name or a handle in any script, short enough that
# "[room] nick: text" still leaves room for the text on an 80-column line.
MAX_NICK = 32

# Combining marks in a row after one base character: Vietnamese needs two in NFC,
# Indic and Thai clusters three; more only serves to stack marks over other lines.
MAX_MARKS = 4

# A person sends a few lines in a row (a greeting, a correction, a pasted snippet);
# five covers that without letting a script fill everyone's screen.
FLOOD_BURST = 5

# Messages a second over the long run: more than a person keeps up while others
# read, slow enough that one sender cannot drown a room.
FLOOD_RATE = 1.0

# Refusals tolerated within FLOOD_WINDOW before disconnecting: a paste of 25 lines
# (5 delivered, 20 refused) is forgiven; a client that ignores "slow down" is not.
FLOOD_MAX_REFUSALS = 20

# Seconds over which refusals are counted: long enough to see that a client keeps
# going after being told, short enough that a flood is cut within seconds.
FLOOD_WINDOW = 10.0

# The AI assistant (/ask). An endpoint that is up accepts a connection in
# milliseconds; 5 s covers a distant one, or one waking from idle, and no more.
AI_CONNECT_TIMEOUT = 5.0

# Silence allowed between two reads of an answer: a large model on a long context
# can think for tens of seconds before its first word; a minute of silence is a
# stuck endpoint.
AI_READ_TIMEOUT = 60.0

# The longest a room waits for one answer, whatever the endpoint does: a slow
# local model writes a long answer in about a minute; a trickle cannot go on forever.
AI_TOTAL_TIMEOUT = 120.0

# Seconds between two /ask of one client: a person reads an answer before asking
# again, and each question costs the endpoint's owner time or money.
ASK_INTERVAL = 10.0

# An answer is posted to the room as one message: 16 KiB is several screens of
# text, more than anyone reads in a chat; past it the answer is refused, not cut.
MAX_AI_ANSWER = 16 * 1024

# Earlier messages of the room sent as context: enough to follow the thread of a
# conversation, few enough to bound what each question costs the endpoint.
MAX_AI_CONTEXT = 20

# One line of the endpoint's event stream: a chunk of the answer is a few hundred
# bytes, the whole answer in one event (some servers do that) at most ~100 KiB of
# JSON; longer is a broken stream we should not buffer.
MAX_AI_LINE = 256 * 1024

# Answers in progress at once on one server: an endpoint serves a few streams at a
# time, and more would only queue there while holding connections here.
MAX_AI_PENDING = 8

# Every call to the chat's Redis hub gives up after this many seconds: a Redis on the
# same network answers in a millisecond, so two seconds means it is gone or stalled.
HUB_TIMEOUT = 2.0

# Reconnecting to the hub waits 50 ms, then twice as long each time, up to this: a
# restarted Redis is found within two seconds, and a dead one costs one try every two.
HUB_MAX_BACKOFF = 2.0

# Hub operations waiting for the hub's thread. Only a Redis slower than the server
# fills the queue; past it, operations are refused (hub_busy), not held in memory.
MAX_HUB_PENDING = 10_000

# Cleanups (a departed client's nick release and presence removal) may queue this many
# past MAX_HUB_PENDING, since a lost one keeps a name taken: room for a full server
# (MAX_CONNECTIONS) to leave twice over; past it, the server re-registers instead.
MAX_HUB_CLEANUP = 4096

# Chat lines per pipeline to the hub: a burst costs one round trip, yet none waits long.
MAX_HUB_BATCH = 256

# Room events held for a joiner while its replay is read: a busy room's round trip's worth.
# Past it the oldest held are let go, and read back from the room's history.
MAX_HUB_HELD = 1024

# Such reads per join: each is one round trip in which more than MAX_HUB_HELD events of the
# room came again; past it, what was let go is counted as missed and the joiner is told.
MAX_HUB_REREADS = 3

# How often a server tells the hub it lives, and how long its members and nicks
# outlast its silence: a crashed server's people leave /who within HUB_PRESENCE_TTL
# seconds, and a live one would have to miss several beats in a row to be taken for dead.
HUB_HEARTBEAT = 1.0
HUB_PRESENCE_TTL = 5.0

# How long a chat history write waits for another process holding the SQLite write
# lock (someone running `sqlite3 chat.sqlite3` and a transaction by hand). Short,
# because the asyncio runtime waits on its event loop; one server per DIR never waits.
STORE_BUSY_TIMEOUT = 1.0

# A TLS handshake is two round trips and some arithmetic: milliseconds on a LAN, well
# under a second across the world. Ten seconds covers a slow link; a client that
# connects and says nothing (or a plain client waiting for us to speak) is cut then.
TLS_HANDSHAKE_TIMEOUT = 10.0

# Connections one IP address may hold at once: a classroom behind one NAT fits, and
# one host alone cannot take every slot of the server (MAX_CONNECTIONS).
MAX_PER_IP = 64

# The first non-empty line or frame of a client of a server with --token: "/token SECRET", or
# the same as a JSON request. 1 KiB holds any real secret; it also bounds what a
# client that has not proven anything yet can make the server hold.
MAX_TOKEN = 1024

# Seconds between refusing a wrong token and closing: one guess per connection per
# second, and with MAX_PER_IP at most 64 guesses a second from one address.
TOKEN_FAIL_DELAY = 1.0

# HTTP (enlace serve web). Browsers cap URLs near 8 KiB too, and nginx's default
# large_client_header_buffers is 8 KiB: a longer request line is an attack or a bug.
MAX_REQUEST_LINE = 8 * 1024

# Browsers send about 10-20 fields; 100 leaves room for proxies and cookies while
# bounding the per-request work a client can ask for.
MAX_HEADERS = 100

# All header fields of one request together: a large cookie jar fits in 16 KiB, and it
# bounds what a client that never ends its head makes the server hold.
MAX_HEADER_BYTES = 16 * 1024

# Request bodies: a static file server takes none, so 1 MiB only bounds what is read
# and discarded before answering (a form or a small upload would fit).
MAX_BODY = 1024 * 1024

# Seconds a client has to send a whole request head once it began: a browser sends it
# in one packet, so ten seconds only ever holds up a slowloris client.
HTTP_HEAD_TIMEOUT = 10.0

# Seconds an idle keep-alive connection is kept: long enough for a browser to fetch a
# page's assets on one connection, short enough that idle browsers do not fill the
# connection cap (nginx uses 75 s with far larger caps; Apache uses 5 s).
HTTP_KEEPALIVE_TIMEOUT = 5.0

# Entries a directory listing (serve web --list) shows: more than anyone scrolls
# through, and it bounds the page a directory of a million files would make.
MAX_LISTING = 10_000

# WebSocket (the browser chat). A message carries one chat request or event, so
# the frame limit of the message server applies: larger is refused with close 1009.
MAX_WS_MESSAGE = 1024 * 1024

# Seconds between two pings to a browser: under the 30-60 s after which proxies and
# NAT boxes forget an idle connection, and a dead peer is noticed within a minute.
WS_PING_INTERVAL = 20.0

# Seconds a pong may take: a browser answers at once, even in a background tab, so
# twenty seconds of silence is a peer that is gone (a laptop asleep, a lost network).
WS_PING_TIMEOUT = 20.0

# Seconds we wait for the peer's close frame after sending ours: a live peer answers
# in one round trip; a peer that does not answer must not hold a shutdown up.
WS_CLOSE_TIMEOUT = 5.0
