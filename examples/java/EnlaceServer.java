import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.Inet6Address;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Semaphore;

/**
 * A message server that speaks enlace's frame protocol: the Java peer of {@code enlace serve
 * chat}, with its commands but without chat rooms.
 *
 * <pre>
 *   javac -d build *.java
 *   java -cp build EnlaceServer [--port 9090] [--host 127.0.0.1] [--max-clients 64]
 * </pre>
 *
 * <p>The protocol (docs/protocol.md in enlace is the normative copy): every message is a
 * <em>frame</em>, a 4-byte big-endian length N and then N bytes of UTF-8 text. A payload is
 * either a text command ({@code /upper hola} answered by {@code HOLA}) or a JSON request
 * ({@code {"id": 7, "cmd": "upper", "args": ["hola"]}} answered by
 * {@code {"id": 7, "ok": true, "result": "HOLA"}}). Each request gets exactly one reply, in the
 * same form, in the order the requests came. An empty frame is a keep-alive and gets none.
 *
 * <p>The design is the classic one: an accept loop on the main thread and one thread per
 * client, with a limit on how many clients are served at once.
 */
public final class EnlaceServer {

    /** Largest payload accepted (1 MiB), checked before reading it: see {@link Connection#serve}. */
    static final int MAX_FRAME = 1024 * 1024;

    /** A client silent this long has almost always gone away without closing; free its thread. */
    static final int IDLE_TIMEOUT_MS = 300_000;

    static final String HELP = String.join("\n",
            "/help          list the commands",
            "/echo TEXT     send TEXT back",
            "/upper TEXT    send TEXT back in upper case",
            "/time          the server's current time (UTC, ISO 8601)",
            "/ping          answer pong",
            "/quit          answer bye and close the connection");

    /** Commands that take no arguments; anything after them is a mistake worth reporting. */
    static final Set<String> NO_ARGUMENTS = Set.of("help", "time", "ping", "quit");

    public static void main(String[] args) {
        String host = "127.0.0.1"; // loopback by default: exposing a server is a decision
        int port = 9090;
        int maxClients = 64;
        try {
            for (int i = 0; i < args.length; i++) {
                switch (args[i]) {
                    case "--host" -> host = value(args, ++i);
                    case "--port" -> port = number(args, ++i, 0, 65535);
                    case "--max-clients" -> maxClients = number(args, ++i, 1, 100_000);
                    case "-h", "--help" -> {
                        System.out.println(USAGE);
                        return;
                    }
                    default -> throw new IllegalArgumentException("unknown option " + args[i]);
                }
            }
        } catch (IllegalArgumentException e) {
            System.err.println("error: " + e.getMessage() + "\n" + USAGE);
            System.exit(2);
        }

        ServerSocket server = listen(host, port);
        // With --port 0 the system picked a free port; print the real one. Tests and scripts
        // wait for this line, so flush it rather than trust the buffering of a pipe.
        System.out.println("listening on " + format(server.getInetAddress(), server.getLocalPort()));
        System.out.flush();
        acceptLoop(server, maxClients);
    }

    /** Opens the listening socket, or exits with one line saying why (no stack trace). */
    static ServerSocket listen(String host, int port) {
        InetSocketAddress address = new InetSocketAddress(host, port);
        if (address.isUnresolved()) {
            fail("unknown host " + host);
        }
        try {
            ServerSocket server = new ServerSocket();
            // Lets a restarted server bind at once while old connections sit in TIME_WAIT.
            server.setReuseAddress(true);
            server.bind(address, 128);
            return server;
        } catch (IOException e) {
            // Usually "Address already in use" (another server has the port) or "Cannot assign
            // requested address" (--host is not an address of this machine).
            fail("cannot listen on " + host + ":" + port + ": " + e.getMessage());
        }
        return null; // not reached: fail() exits
    }

    static final String USAGE =
            "usage: java -cp build EnlaceServer [--port 9090] [--host 127.0.0.1] [--max-clients 64]";

    /**
     * Accepts clients forever, each on its own thread. A semaphore bounds the number of threads:
     * past it a client gets a clear "busy" frame and is closed at once, instead of waiting in a
     * queue with no idea why nothing happens (and instead of the server running out of memory
     * or file descriptors under a flood of connections).
     */
    static void acceptLoop(ServerSocket server, int maxClients) {
        Semaphore slots = new Semaphore(maxClients);
        while (true) {
            Socket socket;
            try {
                socket = server.accept();
            } catch (IOException e) {
                // Typically "Too many open files": a transient condition, not a reason to stop
                // serving everyone else. Pause briefly so the loop does not spin.
                log("accept failed: " + e.getMessage());
                sleep(100);
                continue;
            }
            String busy = "ERR busy: the server is serving its maximum of " + maxClients
                    + " clients; try again later";
            if (!slots.tryAcquire()) {
                refuse(socket, busy);
                continue;
            }
            Thread thread = new Thread(() -> {
                try {
                    new Connection(socket).run();
                } finally {
                    slots.release(); // always, or every crash would shrink the server for good
                }
            }, "client " + peer(socket));
            try {
                thread.start();
            } catch (OutOfMemoryError e) {
                // "unable to create native thread": the system's limit came before ours.
                slots.release();
                refuse(socket, busy);
            }
        }
    }

    /** Sends one text frame to a client we will not serve, and closes. */
    static void refuse(Socket socket, String message) {
        try (socket) {
            DataOutputStream out = new DataOutputStream(socket.getOutputStream());
            // A fresh socket's send buffer is empty, so this small write cannot block the
            // accept loop.
            writeFrame(out, message.getBytes(StandardCharsets.UTF_8));
            out.flush();
            socket.shutdownOutput();
            log(peer(socket) + ": refused (" + message + ")");
        } catch (IOException e) {
            log(peer(socket) + ": refused, and could not tell it: " + e.getMessage());
        }
    }

    // ----------------------------------------------------------------------------------------
    // One client
    // ----------------------------------------------------------------------------------------

    /** Serves one client on its own thread: reads a frame, answers it, repeats. */
    static final class Connection implements Runnable {
        private final Socket socket;
        private final String name;
        private DataInputStream in;
        private DataOutputStream out;

        /**
         * Strict UTF-8: a plain {@code new String(bytes, UTF_8)} would silently turn invalid
         * bytes into U+FFFD, and the client would never learn that it sent garbage.
         */
        private final CharsetDecoder utf8 = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);

        /** Whether the latest request was JSON: errors not tied to a request use that form. */
        private boolean json;
        private int frames;

        Connection(Socket socket) {
            this.socket = socket;
            this.name = peer(socket);
        }

        @Override
        public void run() {
            long start = System.nanoTime();
            String outcome;
            try {
                socket.setSoTimeout(IDLE_TIMEOUT_MS);
                // Replies are small and a client waits for each one: do not let Nagle's
                // algorithm hold them back. Batching is done by flushing (see serve()).
                socket.setTcpNoDelay(true);
                in = new DataInputStream(new BufferedInputStream(socket.getInputStream(), 65536));
                out = new DataOutputStream(new BufferedOutputStream(socket.getOutputStream(), 65536));
                outcome = serve();
                out.flush();
                // Half-close before closing: the client reads our last frame and then a clean
                // end of stream, even if it is still sending.
                socket.shutdownOutput();
            } catch (EOFException e) {
                outcome = "the client closed in the middle of a frame";
            } catch (SocketTimeoutException e) {
                outcome = "idle for " + IDLE_TIMEOUT_MS / 1000 + " s, closed";
            } catch (IOException e) {
                outcome = "connection lost: " + e.getMessage();
            } catch (RuntimeException e) {
                // A bug must cost one connection, never the server or the other clients.
                outcome = "internal error: " + e;
            } finally {
                try {
                    socket.close();
                } catch (IOException ignored) {
                    // Nothing more to do for this client; it is gone either way.
                }
            }
            long ms = (System.nanoTime() - start) / 1_000_000;
            log(name + ": " + frames + " frame(s) in " + ms + " ms; " + outcome);
        }

        /** The frame loop. Returns why it ended; the caller closes the connection. */
        private String serve() throws IOException {
            while (true) {
                // Flush only when no request is already waiting: a client that sends 1000
                // frames at once gets its 1000 replies in a few large writes, not 1000 tiny
                // ones, while a client that sends one at a time gets each reply at once.
                if (in.available() == 0) {
                    out.flush();
                }
                long length = readLength(in);
                if (length < 0) {
                    return "closed by the client";
                }
                // Check the announced length BEFORE reading or allocating anything: otherwise
                // four bytes saying "4 GiB" would make the server try to allocate 4 GiB.
                if (length > MAX_FRAME) {
                    reply(null, Reply.error("frame_too_large", "a frame of " + length
                            + " bytes is over the limit of " + MAX_FRAME + " bytes"));
                    return "refused a frame of " + length + " bytes";
                }
                if (length == 0) {
                    continue; // a keep-alive: it only proves the client is there
                }
                byte[] payload = new byte[(int) length];
                in.readFully(payload); // EOFException if the client vanishes mid-frame
                frames++;
                if (!handle(payload)) {
                    return "the client said /quit";
                }
            }
        }

        /** Answers one payload. Returns false when the connection should close (/quit). */
        private boolean handle(byte[] payload) throws IOException {
            // The first byte decides the form, and the reply uses the same form. '{' is ASCII,
            // so we can look at it before knowing whether the rest is valid UTF-8.
            json = payload[0] == '{';
            String text;
            try {
                text = utf8.decode(ByteBuffer.wrap(payload)).toString();
            } catch (CharacterCodingException e) {
                reply(null, Reply.error("invalid_utf8", "the payload is not valid UTF-8"));
                return true;
            }
            if (json) {
                return handleJson(text);
            }
            if (!text.startsWith("/") || text.startsWith("//")) {
                // In enlace, text without a leading '/' is a chat message for the current room
                // ("//" too: IRC's escape, "//x" is the message "/x").
                reply(null, Reply.error("unsupported", "this server has no chat rooms"));
                return true;
            }
            // "/name rest of line": the name ends at the first space; the rest, without the
            // spaces around it, is the argument text (as enlace does).
            int space = text.indexOf(' ');
            String command = space < 0 ? text.substring(1) : text.substring(1, space);
            String rest = space < 0 ? "" : text.substring(space + 1).strip();
            Reply result = execute(command, rest);
            reply(null, result);
            return !result.close();
        }

        /** {"id": 7, "cmd": "upper", "args": ["hola"]}: validated field by field. */
        private boolean handleJson(String text) throws IOException {
            Object parsed;
            try {
                parsed = Json.parse(text);
            } catch (Json.ParseException e) {
                reply(null, Reply.error("invalid_json", e.getMessage()));
                return true;
            }
            // A payload that starts with '{' and parses is always an object; the check gives us
            // the Map type and states the rule.
            if (!(parsed instanceof Map<?, ?> request)) {
                reply(null, Reply.error("not_an_object", "a JSON request must be an object"));
                return true;
            }
            // The id is the client's, not ours: any number or string, echoed back unchanged so
            // the client can match the reply to its request. A missing id is answered as null.
            Object id = request.get("id");
            if (id != null && !(id instanceof String) && !(id instanceof Json.Number)) {
                reply(null, Reply.error("bad_arguments", "\"id\" must be a number or a string"));
                return true;
            }
            if (!(request.get("cmd") instanceof String command)) {
                reply(id, Reply.error("bad_arguments",
                        "\"cmd\" must be a string naming a command, e.g. \"ping\""));
                return true;
            }
            Object args = request.get("args");
            if (args == null) {
                args = List.of(); // "args" may be left out for commands that take none
            }
            if (!(args instanceof List<?> list) || !list.stream().allMatch(a -> a instanceof String)) {
                reply(id, Reply.error("bad_arguments", "\"args\" must be an array of strings"));
                return true;
            }
            // Joined by single spaces: ["hola", "mundo"] means the same as "/upper hola mundo".
            @SuppressWarnings("unchecked")
            String rest = String.join(" ", (List<String>) list);
            Reply result = execute(command, rest);
            reply(id, result);
            return !result.close();
        }

        /** Writes a reply in the connection's current form: text, or JSON with the id. */
        private void reply(Object id, Reply result) throws IOException {
            byte[] bytes = render(id, result).getBytes(StandardCharsets.UTF_8);
            if (bytes.length > MAX_FRAME) {
                // The limit holds both ways: /upper or JSON escaping can make a reply longer
                // than its request, and the client would refuse an oversize frame.
                Reply tooBig = Reply.error("frame_too_large", "the reply would be "
                        + bytes.length + " bytes, over the limit of " + MAX_FRAME + " bytes");
                bytes = render(id, tooBig).getBytes(StandardCharsets.UTF_8);
                if (bytes.length > MAX_FRAME) {
                    bytes = render(null, tooBig).getBytes(StandardCharsets.UTF_8); // a ~1 MiB id
                }
            }
            writeFrame(out, bytes);
        }

        private String render(Object id, Reply result) {
            if (!json) {
                return result.ok() ? result.result() : "ERR " + result.code() + ": " + result.message();
            }
            Map<String, Object> reply = new LinkedHashMap<>();
            reply.put("id", id); // always present in a reply; server events never carry one
            reply.put("ok", result.ok());
            if (result.ok()) {
                reply.put("result", result.result());
            } else {
                Map<String, Object> error = new LinkedHashMap<>();
                error.put("code", result.code());
                error.put("message", result.message());
                reply.put("error", error);
            }
            return Json.write(reply);
        }
    }

    // ----------------------------------------------------------------------------------------
    // The commands: the same code answers text commands and JSON requests
    // ----------------------------------------------------------------------------------------

    /** What a command produced: a result or an error; {@code close} is set by /quit. */
    record Reply(String result, String code, String message, boolean close) {
        static Reply ok(String result) {
            return new Reply(result, null, null, false);
        }

        static Reply error(String code, String message) {
            return new Reply(null, code, message, false);
        }

        boolean ok() {
            return code == null;
        }
    }

    static Reply execute(String name, String args) {
        // Names are case-insensitive (/UPPER works), and JSON may write "cmd": "/upper".
        String command = name.toLowerCase(Locale.ROOT);
        if (command.startsWith("/") && command.length() > 1) {
            command = command.substring(1);
        }
        if (NO_ARGUMENTS.contains(command) && !args.isEmpty()) {
            return Reply.error("bad_arguments", "/" + command + " takes no arguments");
        }
        return switch (command) {
            case "help" -> Reply.ok(HELP);
            case "echo" -> args.isEmpty() ? usage("/echo TEXT") : Reply.ok(args);
            case "upper" -> args.isEmpty() ? usage("/upper TEXT") : Reply.ok(upper(args));
            // Instant.toString() is ISO 8601 in UTC, e.g. 2025-11-21T04:40:00.123Z.
            case "time" -> Reply.ok(Instant.now().truncatedTo(ChronoUnit.MILLIS).toString());
            case "ping" -> Reply.ok("pong");
            case "quit" -> new Reply("bye", null, null, true);
            default -> Reply.error("unknown_command", "unknown command /" + command + " (try /help)");
        };
    }

    /**
     * {@code text.toUpperCase(Locale.ROOT)}, done in slices.
     *
     * <p>Locale.ROOT, because with the default locale a Turkish machine turns "i" into "İ".
     * Slices, because Java 17's toUpperCase grows its result one step for every character
     * whose upper case is longer ("ß" is "SS", "ŉ" is "ʼN"): quadratic time, so a single 1 MiB
     * frame of "ŉ" would keep a thread busy for minutes. Upper-casing 256 characters at a time
     * gives the same text (the ROOT locale has no rule that looks at neighbouring characters)
     * in linear time. A slice never ends between the two halves of a surrogate pair.
     */
    static String upper(String text) {
        StringBuilder out = new StringBuilder(text.length());
        int start = 0;
        while (start < text.length()) {
            int end = Math.min(start + 256, text.length());
            if (end < text.length() && Character.isHighSurrogate(text.charAt(end - 1))) {
                end--;
            }
            out.append(text.substring(start, end).toUpperCase(Locale.ROOT));
            start = end;
        }
        return out.toString();
    }

    static Reply usage(String usage) {
        return Reply.error("bad_arguments", "usage: " + usage);
    }

    // ----------------------------------------------------------------------------------------
    // Frames
    // ----------------------------------------------------------------------------------------

    /**
     * Reads a frame's 4-byte big-endian length, as an unsigned number (a long, because Java's
     * int is signed and 0xFFFFFFFF must mean 4 GiB, not -1). Returns -1 when the client closed
     * cleanly between frames; throws EOFException when it closed in the middle of the header.
     */
    static long readLength(DataInputStream in) throws IOException {
        int first = in.read();
        if (first < 0) {
            return -1;
        }
        byte[] rest = new byte[3];
        in.readFully(rest);
        return ((long) first << 24) | ((rest[0] & 0xFF) << 16) | ((rest[1] & 0xFF) << 8) | (rest[2] & 0xFF);
    }

    /** Writes one frame: the length (DataOutputStream.writeInt is big-endian), then the bytes. */
    static void writeFrame(DataOutputStream out, byte[] payload) throws IOException {
        out.writeInt(payload.length);
        out.write(payload);
    }

    // ----------------------------------------------------------------------------------------
    // Small helpers
    // ----------------------------------------------------------------------------------------

    static void log(String line) {
        // One println per line: PrintStream is synchronized, so lines from different client
        // threads never mix.
        System.err.println(Instant.now().truncatedTo(ChronoUnit.MILLIS) + " " + line);
    }

    static String peer(Socket socket) {
        return format(socket.getInetAddress(), socket.getPort());
    }

    static String format(InetAddress address, int port) {
        String host = address.getHostAddress();
        return address instanceof Inet6Address ? "[" + host + "]:" + port : host + ":" + port;
    }

    static String value(String[] args, int i) {
        if (i >= args.length) {
            throw new IllegalArgumentException(args[i - 1] + " needs a value");
        }
        return args[i];
    }

    static int number(String[] args, int i, int min, int max) {
        String text = value(args, i);
        try {
            int n = Integer.parseInt(text);
            if (n >= min && n <= max) {
                return n;
            }
        } catch (NumberFormatException e) {
            // reported below, with the range
        }
        throw new IllegalArgumentException(args[i - 1] + " must be a number from " + min + " to " + max);
    }

    static void fail(String message) {
        System.err.println("error: " + message);
        System.exit(1);
    }

    static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
