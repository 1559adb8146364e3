import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.math.BigInteger;
import java.net.Inet6Address;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CoderResult;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Semaphore;
import java.util.function.Function;

/**
 * A message server that speaks enlace's protocol: the Java peer of {@code enlace serve chat},
 * with its built-in commands but without chat rooms.
 *
 * <pre>
 *   javac -d build *.java
 *   java -cp build EnlaceServer [--port 9090] [--host 127.0.0.1] [--max-clients 64]
 * </pre>
 *
 * <p>The protocol (docs/protocol.md in enlace is the normative description, and the section
 * numbers in the comments below point into it): the first byte a client sends decides its kind.
 * A {@code 0x00} means <em>frames</em>, each a 4-byte big-endian length N and then N bytes of
 * UTF-8; anything else means text <em>lines</em>, so {@code nc 127.0.0.1 9090} works too. A
 * payload is a text command ({@code /upper hola} answered by {@code HOLA}), a JSON request
 * ({@code {"id":7,"cmd":"upper","args":["hola"]}} answered by
 * {@code {"id":7,"ok":true,"result":"HOLA"}}), or chat text (which this server has no rooms
 * for). Each request gets exactly one reply, in the same form, in the order the requests came.
 * An empty payload is a keep-alive and gets none.
 *
 * <p>The design is the classic one: an accept loop on the main thread and one thread per
 * client, with a limit on how many clients are served at once.
 */
public final class EnlaceServer {

    /** Largest frame payload (1 MiB), checked before reading it: see {@link Connection#readFrame}. */
    static final int MAX_FRAME = 1024 * 1024;

    /** Longest line from a line client (16 KiB), without its "\n". */
    static final int MAX_LINE = 16 * 1024;

    /** A client silent this long has almost always gone away without closing; free its thread. */
    static final int IDLE_TIMEOUT_MS = 300_000;

    /** The error text of a payload that is not valid UTF-8 ends with the offset of the bad byte. */
    static final String NOT_UTF8 = "payload is not valid UTF-8 (byte ";

    static final String NO_CHAT = "this server has no chat rooms; commands start with / (try /help)";

    /** Longest string id accepted, in characters (code points). */
    static final int MAX_ID = 256;

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
        // The same words as enlace, so that a client can show either server's refusal.
        String busy = "ERR busy: too many connections (limit " + maxClients + ")";
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

    /**
     * Sends one frame to a client we will not serve, and closes (protocol section 2). It is a
     * frame even for a line client: the client has sent nothing yet, so its kind is unknown.
     */
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

    /** A frame or line over the limit: answered, then the connection is closed. */
    static final class TooLarge extends Exception {
        private static final long serialVersionUID = 1L;
        final String code;

        TooLarge(String code, String message) {
            super(message);
            this.code = code;
        }
    }

    /** Serves one client on its own thread: reads a payload, answers it, repeats. */
    static final class Connection implements Runnable {
        private final Socket socket;
        private final String name;
        private DataInputStream in;
        private DataOutputStream out;

        /** The kind of client, decided by its first byte: text lines, or frames. */
        private boolean lines;
        /**
         * The form of the latest request: JSON or text. A reply uses the form of its request;
         * errors that belong to no request (an oversize frame) use this (protocol 6.3).
         */
        private boolean json;
        private int requests;

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
                // Half-close before closing: the client reads our last reply and then a clean
                // end of stream, even if it is still sending.
                socket.shutdownOutput();
                discardUntilClosed();
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
            String kind = lines ? "line" : "frame";
            log(name + ": " + requests + " request(s) by " + kind + " in " + ms + " ms; " + outcome);
        }

        /**
         * A lingering close, as web servers do. Closing a socket that still has unread input
         * makes the system send a reset (RST), and a reset can destroy our last reply before
         * the client reads it (after /quit, or an oversize frame, the client may still be
         * sending). So read and throw away what still comes, until the client closes too, for
         * at most 2 s and 1 MiB.
         */
        private void discardUntilClosed() {
            byte[] buffer = new byte[65536];
            long discarded = 0;
            try {
                socket.setSoTimeout(2000);
                int n;
                while (discarded < MAX_FRAME && (n = in.read(buffer)) > 0) {
                    discarded += n;
                }
            } catch (IOException e) {
                // A timeout (the client is still connected) or a reset: either way, done.
            }
        }

        /** The request loop. Returns why it ended; the caller closes the connection. */
        private String serve() throws IOException {
            // The first byte decides the kind of client (protocol section 2). Every frame under
            // 16 MiB starts with 0x00, and no line of text does. Peek at it and put it back.
            in.mark(1);
            int first = in.read();
            if (first < 0) {
                return "closed before sending anything";
            }
            in.reset();
            lines = first != 0;

            while (true) {
                // Flush only when no request is already waiting: a client that sends 1000
                // requests at once gets its 1000 replies in a few large writes, not 1000 tiny
                // ones, while a client that sends one at a time gets each reply at once.
                if (in.available() == 0) {
                    out.flush();
                }
                byte[] payload;
                try {
                    payload = lines ? readLine() : readFrame();
                } catch (TooLarge e) {
                    // Fatal: the rest of the stream cannot be cut into messages any more.
                    send(null, Reply.error(e.code, e.getMessage()));
                    return "refused: " + e.getMessage();
                }
                if (payload == null) {
                    return "closed by the client";
                }
                if (payload.length == 0) {
                    continue; // a keep-alive: it only proves the client is there
                }
                requests++;
                if (!handle(payload)) {
                    return "the client said /quit";
                }
            }
        }

        /** One frame's payload; null when the client closed cleanly between frames (3.1). */
        private byte[] readFrame() throws IOException, TooLarge {
            long length = readLength(in);
            if (length < 0) {
                return null;
            }
            // Check the announced length BEFORE reading or allocating anything: otherwise
            // four bytes saying "4 GiB" would make the server try to allocate 4 GiB.
            if (length > MAX_FRAME) {
                throw new TooLarge("frame_too_large",
                        "frame of " + length + " bytes exceeds the " + MAX_FRAME + "-byte limit");
            }
            byte[] payload = new byte[(int) length];
            in.readFully(payload); // EOFException if the client vanishes mid-frame
            return payload;
        }

        /**
         * One line, without its "\n" and without a "\r" just before it (3.2); null when the
         * client closed after its last line. An unterminated last line is still a line, as the
         * last line of a file is.
         */
        private byte[] readLine() throws IOException, TooLarge {
            ByteArrayOutputStream line = new ByteArrayOutputStream();
            while (true) {
                int b = in.read();
                if (b < 0) {
                    if (line.size() == 0) {
                        return null;
                    }
                    if (line.size() > MAX_LINE) {
                        throw lineTooLong();
                    }
                    return line.toByteArray();
                }
                if (b == '\n') {
                    byte[] bytes = line.toByteArray();
                    int end = bytes.length > 0 && bytes[bytes.length - 1] == '\r' ? bytes.length - 1 : bytes.length;
                    return Arrays.copyOf(bytes, end);
                }
                line.write(b);
                // Bounded while it grows, so a client that never sends "\n" cannot make us
                // buffer without end. One byte more is allowed if it is the "\r" of "\r\n".
                if (line.size() > MAX_LINE + 1 || (line.size() == MAX_LINE + 1 && b != '\r')) {
                    throw lineTooLong();
                }
            }
        }

        private static TooLarge lineTooLong() {
            return new TooLarge("line_too_long",
                    "line of more than " + MAX_LINE + " bytes exceeds the " + MAX_LINE + "-byte limit");
        }

        /**
         * Answers one payload, classified as in protocol section 4. Returns false when the
         * connection should close (/quit).
         */
        private boolean handle(byte[] payload) throws IOException {
            // '{' and '[' are ASCII, so we can look at them before knowing whether the rest
            // is valid UTF-8.
            if (payload[0] == '{') {
                json = true;
                return handleJson(payload);
            }
            if (payload[0] == '[' && isJson(payload)) {
                json = true; // a JSON array is a request gone wrong more often than a chat line
                send(null, Reply.error("not_an_object", "a JSON request must be an object, not an array"));
                return true;
            }
            json = false;
            String text;
            try {
                text = decodeUtf8(payload);
            } catch (BadUtf8 e) {
                send(null, Reply.error("invalid_utf8", NOT_UTF8 + e.offset + ")"));
                return true;
            }
            if (!text.startsWith("/") || text.startsWith("//")) {
                // Chat text for the client's room ("//x" too: IRC's escape for the text "/x").
                // Chat text is the command /say, and without rooms it is always this error.
                send(null, Reply.error("no_chat", NO_CHAT));
                return true;
            }
            // "/name rest of line": the name ends at the first space (U+0020); the rest,
            // stripped, is the argument text.
            int space = text.indexOf(' ');
            String command = space < 0 ? text.substring(1) : text.substring(1, space);
            String rest = space < 0 ? "" : text.substring(space + 1);
            if (command.isEmpty() || !strip(command).equals(command)) {
                send(null, Reply.error("bad_request", "a command needs a name right after '/' (try /help)"));
                return true;
            }
            return execute(null, command.toLowerCase(Locale.ROOT), Arguments.text(strip(rest)));
        }

        /** {"id": 7, "cmd": "upper", "args": ["hola"]}: validated in the order of protocol 4.3. */
        private boolean handleJson(byte[] payload) throws IOException {
            Object parsed;
            try {
                parsed = Json.parse(decodeUtf8(payload));
            } catch (BadUtf8 e) {
                send(null, Reply.error("invalid_utf8", "invalid JSON: " + NOT_UTF8 + e.offset + ")"));
                return true;
            } catch (Json.TooDeep e) {
                send(null, Reply.error("json_too_deep", "JSON nested deeper than " + Json.MAX_DEPTH + " levels"));
                return true;
            } catch (Json.ParseException e) {
                send(null, Reply.error("invalid_json", "invalid JSON: " + e.getMessage()));
                return true;
            }
            // A payload that starts with '{' and parses is always an object; the check gives us
            // the Map type.
            if (!(parsed instanceof Map<?, ?> request)) {
                send(null, Reply.error("not_an_object", "a JSON request must be an object"));
                return true;
            }
            // The id is the client's, not ours: a string or an integer, echoed back so the client
            // can match the reply to its request. Without one, the reply has none either.
            Object id = request.get("id");
            boolean validId = id == null || id instanceof String
                    || (id instanceof Json.Number number && integerId(number) != null);
            if (!validId) {
                send(null, Reply.error("bad_request", "\"id\" must be a string or an integer"));
                return true;
            }
            // Every reply echoes the id, so a long one would make even an error reply large.
            if (id instanceof String text && text.codePointCount(0, text.length()) > MAX_ID) {
                send(null, Reply.error("bad_request", "\"id\" is longer than " + MAX_ID + " characters"));
                return true;
            }
            if (id instanceof Json.Number number) {
                id = integerId(number); // as enlace writes it back: -0 becomes 0
            }
            if (!(request.get("cmd") instanceof String cmd) || cmd.isEmpty()) {
                send(id, Reply.error("bad_request", "\"cmd\" must be a non-empty string"));
                return true;
            }
            // "args" may be left out (no arguments), but "args": null is a mistake.
            Object args = request.containsKey("args") ? request.get("args") : List.of();
            if (!(args instanceof List<?> list)) {
                send(id, Reply.error("bad_request", "\"args\" must be an array"));
                return true;
            }
            Object line = request.get("line");
            if (line != null && (!(line instanceof String) || !list.isEmpty())) {
                send(id, Reply.error("bad_request", "\"line\" must be a string, and not given with \"args\""));
                return true;
            }
            // "UPPER", "upper" and "/upper" name the same command.
            String name = cmd.toLowerCase(Locale.ROOT).replaceFirst("^/+", "");
            // "line" is what a person typed after the command: stripped and split as for a
            // text command.
            Arguments arguments = line != null ? Arguments.text(strip((String) line)) : Arguments.json(list);
            return execute(id, name, arguments);
        }

        /** Finds the command, checks its arguments, runs it and sends its reply. */
        private boolean execute(Object id, String name, Arguments arguments) throws IOException {
            Command command = COMMANDS.get(name);
            if (command == null) {
                // The name is the client's: shorten it, or a 1 MiB name would make a 1 MiB error.
                String shown = name.codePointCount(0, name.length()) <= 40
                        ? name : name.substring(0, name.offsetByCodePoints(0, 40)) + "…";
                send(id, Reply.error("unknown_command", "unknown command /" + shown + " (try /help)"));
                return true;
            }
            Reply reply;
            try {
                reply = command.call(arguments);
            } catch (RuntimeException e) {
                // A bug in one command must cost one request, not the connection.
                log(this.name + ": error in /" + name + ": " + e);
                reply = Reply.error("internal_error", "internal error in /" + name + " (logged on the server)");
            }
            send(id, reply);
            return !reply.close();
        }

        /** Sends a reply in the current form: text, or JSON with the id (protocol section 6). */
        private void send(Object id, Reply reply) throws IOException {
            byte[] bytes = render(id, reply);
            if (bytes.length > MAX_FRAME) {
                // The limit holds both ways: /upper can make a reply longer than its request
                // ("ŉ" becomes "ʼN"), and the client would refuse an oversize frame. An error
                // keeps its code and loses its message.
                reply = reply.ok()
                        ? Reply.error("reply_too_large", "the reply of " + bytes.length
                                + " bytes exceeds the " + MAX_FRAME + "-byte limit")
                        : Reply.error(reply.code(), "(message too long to send)");
                bytes = render(id, reply);
            }
            if (lines) {
                out.write(bytes);
                out.write('\n');
            } else {
                writeFrame(out, bytes);
            }
        }

        private byte[] render(Object id, Reply reply) {
            String text;
            if (!json) {
                text = reply.ok() ? reply.result() : "ERR " + reply.code() + ": " + reply.message();
            } else {
                Map<String, Object> object = new LinkedHashMap<>();
                if (id != null) {
                    object.put("id", id); // only when the request had one
                }
                object.put("ok", reply.ok());
                if (reply.ok()) {
                    object.put("result", reply.result());
                } else {
                    Map<String, Object> error = new LinkedHashMap<>();
                    error.put("code", reply.code());
                    error.put("message", reply.message());
                    object.put("error", error);
                }
                text = Json.write(object);
            }
            return text.getBytes(StandardCharsets.UTF_8);
        }
    }

    /**
     * An id must be a string or an integer from -2^63 to 2^64 - 1 (what enlace's JSON library
     * reads as an integer). Returns the integer, written as enlace writes it back ("-0" is "0"),
     * or null if the number is not such an integer.
     */
    static Json.Number integerId(Json.Number number) {
        String text = number.text();
        if (!text.matches("-?[0-9]+")) {
            return null; // 7.0 and 1e3 are not integers here
        }
        BigInteger value = new BigInteger(text);
        if (value.compareTo(LOWEST_ID) < 0 || value.compareTo(HIGHEST_ID) > 0) {
            return null;
        }
        return new Json.Number(value.toString());
    }

    static final BigInteger LOWEST_ID = BigInteger.ONE.shiftLeft(63).negate();
    static final BigInteger HIGHEST_ID = BigInteger.ONE.shiftLeft(64).subtract(BigInteger.ONE);

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

    /** Whether a command takes a text parameter, and whether it may be left out. */
    enum Parameter { NONE, OPTIONAL_TEXT, REQUIRED_TEXT }

    /**
     * A command's arguments as they came: typed text to split (a text command, or a JSON
     * request's "line"), or a JSON array to match one by one (protocol section 5).
     */
    record Arguments(String text, List<?> json) {
        static Arguments text(String text) {
            return new Arguments(text, null);
        }

        static Arguments json(List<?> json) {
            return new Arguments(null, json);
        }
    }

    /** The arguments do not fit the command; the message says how. */
    static final class BadArguments extends Exception {
        private static final long serialVersionUID = 1L;

        BadArguments(String message) {
            super(message);
        }
    }

    /** A command: its name, its parameter, a one-line summary for /help, and what it does. */
    record Command(String name, Parameter parameter, String summary, Function<String, Reply> action) {
        String usage() {
            return switch (parameter) {
                case NONE -> "/" + name;
                case OPTIONAL_TEXT -> "/" + name + " [TEXT]";
                case REQUIRED_TEXT -> "/" + name + " TEXT";
            };
        }

        /** Checks the arguments against the parameter, then runs the command. */
        Reply call(Arguments arguments) {
            String text;
            try {
                text = argument(arguments);
            } catch (BadArguments e) {
                return Reply.error("bad_arguments", e.getMessage());
            }
            return action.apply(text);
        }

        /** The command's one text argument: "" when there is none (or it is left out). */
        private String argument(Arguments arguments) throws BadArguments {
            String text = null;
            if (arguments.text() != null) {
                // Typed text. A command without parameters takes none; with one text parameter,
                // the whole text, less its leading whitespace, is the argument. (A command with
                // two parameters would split off the first word; the last takes the rest.)
                if (parameter == Parameter.NONE && !arguments.text().isEmpty()) {
                    throw new BadArguments("/" + name + " takes no arguments");
                }
                String words = stripLeading(arguments.text());
                text = words.isEmpty() ? null : words;
            } else {
                // JSON: matched to the parameters by position, and never converted.
                List<?> values = arguments.json();
                int most = parameter == Parameter.NONE ? 0 : 1;
                if (values.size() > most) {
                    throw new BadArguments("/" + name + " takes at most " + most + " arguments");
                }
                if (!values.isEmpty()) {
                    if (!(values.get(0) instanceof String string)) {
                        throw new BadArguments("text must be a string; usage: " + usage());
                    }
                    text = string;
                }
            }
            if (text == null && parameter == Parameter.REQUIRED_TEXT) {
                throw new BadArguments("missing text; usage: " + usage());
            }
            return text == null ? "" : text;
        }
    }

    /** 2025-11-21T04:40:00.123+00:00, as enlace writes it (Instant.toString() drops ".000"). */
    static final DateTimeFormatter ISO_MILLIS =
            DateTimeFormatter.ofPattern("uuuu-MM-dd'T'HH:mm:ss.SSSxxx").withZone(ZoneOffset.UTC);

    /** The commands by name, sorted (that is the order /help lists them in). */
    static final Map<String, Command> COMMANDS = new TreeMap<>();

    static void add(String name, Parameter parameter, String summary, Function<String, Reply> action) {
        COMMANDS.put(name, new Command(name, parameter, summary, action));
    }

    static {
        add("help", Parameter.NONE, "List the commands.", text -> Reply.ok(help()));
        add("echo", Parameter.OPTIONAL_TEXT, "Send the text back.", text -> Reply.ok(text));
        add("upper", Parameter.OPTIONAL_TEXT, "Send the text back in capitals.",
                text -> Reply.ok(upper(text)));
        add("time", Parameter.NONE, "The server's time (UTC, ISO 8601).",
                text -> Reply.ok(ISO_MILLIS.format(Instant.now())));
        add("ping", Parameter.NONE, "Answer pong (to check the connection).", text -> Reply.ok("pong"));
        add("quit", Parameter.NONE, "Say goodbye and close the connection.",
                text -> new Reply("bye", null, null, true));
        // Plain text is the command /say; a server with chat rooms would send it to the room.
        add("say", Parameter.REQUIRED_TEXT, "Send a chat message to your room (what plain text does).",
                text -> Reply.error("no_chat", NO_CHAT));
    }

    /** One line per command: the usage padded to the widest, two spaces, the summary. */
    static String help() {
        int width = COMMANDS.values().stream().mapToInt(c -> c.usage().length()).max().orElse(0);
        List<String> lines = new ArrayList<>();
        for (Command command : COMMANDS.values()) {
            lines.add(String.format("%-" + width + "s  %s", command.usage(), command.summary()));
        }
        return String.join("\n", lines);
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

    // ----------------------------------------------------------------------------------------
    // Frames, text and whitespace
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

    /** The payload is not UTF-8; {@code offset} is where the first bad byte sequence starts. */
    static final class BadUtf8 extends Exception {
        private static final long serialVersionUID = 1L;
        final int offset;

        BadUtf8(int offset) {
            super("not UTF-8 at byte " + offset);
            this.offset = offset;
        }
    }

    /**
     * Strict UTF-8: a plain {@code new String(bytes, UTF_8)} would silently turn invalid bytes
     * into U+FFFD, and the client would never learn that it sent garbage. A fresh decoder
     * reports errors, and stops where the bad bytes start.
     */
    static String decodeUtf8(byte[] bytes) throws BadUtf8 {
        CharsetDecoder decoder = StandardCharsets.UTF_8.newDecoder();
        ByteBuffer input = ByteBuffer.wrap(bytes);
        CharBuffer output = CharBuffer.allocate(bytes.length); // never more chars than bytes
        CoderResult result = decoder.decode(input, output, true);
        if (result.isError()) {
            throw new BadUtf8(input.position());
        }
        decoder.flush(output);
        return output.flip().toString();
    }

    /** Whether a payload is a JSON document (within the limits), for rule 3 of section 4. */
    static boolean isJson(byte[] payload) {
        try {
            Json.parse(decodeUtf8(payload));
            return true;
        } catch (Json.TooDeep e) {
            return true; // an array, certainly, and too deep at that: still not an object
        } catch (BadUtf8 | Json.ParseException e) {
            return false;
        }
    }

    /**
     * Whitespace as the protocol means it (Python's str.isspace()): Java's isWhitespace, plus
     * the no-break spaces and U+0085 that Java leaves out.
     */
    static boolean isSpace(char c) {
        return Character.isWhitespace(c) || c == '\u0085' || c == '\u00A0' || c == '\u2007' || c == '\u202F';
    }

    static String stripLeading(String text) {
        int start = 0;
        while (start < text.length() && isSpace(text.charAt(start))) {
            start++;
        }
        return text.substring(start);
    }

    static String strip(String text) {
        int end = text.length();
        while (end > 0 && isSpace(text.charAt(end - 1))) {
            end--;
        }
        return stripLeading(text.substring(0, end));
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
