import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.ProtocolException;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.net.UnknownHostException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A client for enlace's frame protocol: works with {@code enlace serve chat} and with
 * {@link EnlaceServer}.
 *
 * <pre>
 *   java -cp build EnlaceClient HOST PORT                        # interactive
 *   java -cp build EnlaceClient HOST PORT --send "/upper hola"   # one request, one reply
 *   java -cp build EnlaceClient HOST PORT --send "/upper hola" --json
 * </pre>
 *
 * <p>With {@code --json}, what the user types goes as a JSON request with an id, as enlace's own
 * client sends it: {@code /upper hola} becomes {@code {"id":1,"cmd":"upper","line":"hola"}}.
 *
 * <p>Interactive mode is the classic two-thread client. The main thread reads lines from the
 * console and sends each as a frame; a listener thread prints every frame that arrives. Two
 * threads are needed because a server may send at any moment (a chat message from someone
 * else is pushed, not asked for), while the main thread spends its time waiting for the user.
 */
public final class EnlaceClient {

    /** The protocol's frame limit (1 MiB); we refuse to allocate more on a server's word. */
    static final int MAX_FRAME = 1024 * 1024;
    static final int CONNECT_TIMEOUT_MS = 5_000;
    /** How long one-shot mode waits for its reply. */
    static final int REPLY_TIMEOUT_MS = 10_000;
    /** After the console ends, how long to wait for the replies still on their way. */
    static final int DRAIN_TIMEOUT_MS = 5_000;

    /**
     * Standard output in UTF-8 whatever the platform's default charset: the protocol is UTF-8,
     * and "¡hola, señor!" should not print as "?hola, se?or!" on a machine set to ASCII.
     */
    static final PrintStream OUT =
            new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);

    static final String USAGE = "usage: java -cp build EnlaceClient HOST PORT [--send MESSAGE] [--json]\n"
            + "       interactive without --send; --json sends what you type as JSON requests";

    public static void main(String[] args) {
        List<String> positional = new ArrayList<>();
        String send = null;
        boolean json = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--send" -> {
                    // An empty message would be an empty frame: a keep-alive, never answered.
                    if (++i >= args.length || args[i].isEmpty()) {
                        usage("--send needs a message");
                    }
                    send = args[i];
                }
                case "--json" -> json = true;
                case "-h", "--help" -> {
                    System.out.println(USAGE);
                    return;
                }
                default -> {
                    if (args[i].startsWith("--")) {
                        usage("unknown option " + args[i]);
                    }
                    positional.add(args[i]);
                }
            }
        }
        if (positional.size() != 2) {
            usage("HOST and PORT are required");
        }
        String host = positional.get(0);
        int port = -1;
        try {
            port = Integer.parseInt(positional.get(1));
        } catch (NumberFormatException e) {
            // reported just below
        }
        if (port < 1 || port > 65535) {
            usage("PORT must be a number from 1 to 65535");
        }

        Socket socket = connect(host, port);
        try {
            if (send != null) {
                System.exit(oneShot(socket, send, json));
            }
            interactive(socket, json);
        } catch (IOException e) {
            fail("connection to " + host + ":" + port + " lost: " + e.getMessage());
        }
    }

    /** Connects, or exits with one line saying why: a user needs the reason, not a stack trace. */
    static Socket connect(String host, int port) {
        Socket socket = new Socket();
        String where = host + ":" + port;
        try {
            // A timeout, so an address that drops packets does not hang us for minutes.
            socket.connect(new InetSocketAddress(host, port), CONNECT_TIMEOUT_MS);
            // Each frame is a whole message that someone is waiting for: send it at once
            // instead of letting Nagle's algorithm wait for more data.
            socket.setTcpNoDelay(true);
            return socket;
        } catch (UnknownHostException e) {
            fail("unknown host " + host);
        } catch (ConnectException e) {
            fail("cannot connect to " + where + ": connection refused (is the server running?)");
        } catch (SocketTimeoutException e) {
            fail("cannot connect to " + where + ": no answer in " + CONNECT_TIMEOUT_MS / 1000 + " s");
        } catch (IOException e) {
            fail("cannot connect to " + where + ": " + e.getMessage());
        }
        return null; // not reached: fail() exits
    }

    // ----------------------------------------------------------------------------------------
    // One-shot mode: one request, one reply
    // ----------------------------------------------------------------------------------------

    /** Sends one message and prints its reply. Exit status 1 for a JSON error reply. */
    static int oneShot(Socket socket, String message, boolean json) throws IOException {
        DataInputStream in = new DataInputStream(new BufferedInputStream(socket.getInputStream()));
        DataOutputStream out = new DataOutputStream(new BufferedOutputStream(socket.getOutputStream()));
        writeFrame(out, json ? toJsonRequest(message, 1) : message);
        out.flush();
        socket.setSoTimeout(REPLY_TIMEOUT_MS);
        try {
            while (true) {
                String frame = readFrame(in);
                if (frame == null) {
                    System.err.println("error: the server closed the connection without replying");
                    return 1;
                }
                // In text form a reply looks like anything else, so the first frame is the reply
                // (even an empty one: the server sends no keep-alives, so it is an empty text).
                // In JSON form we can tell: a reply has "ok"; an event has "event" instead.
                if (!json) {
                    OUT.println(frame);
                    return 0;
                }
                Map<?, ?> reply = replyIn(frame);
                if (reply != null) {
                    OUT.println(frame);
                    return Boolean.FALSE.equals(reply.get("ok")) ? 1 : 0;
                }
                // An event pushed before our reply: show it, but keep stdout for the reply so
                // that scripts can parse it.
                System.err.println(frame);
            }
        } catch (SocketTimeoutException e) {
            System.err.println("error: no reply in " + REPLY_TIMEOUT_MS / 1000 + " s");
            return 1;
        } finally {
            socket.close();
        }
    }

    /**
     * What the user typed, as a JSON request with the given id, the way enlace's own client
     * sends it: the server splits a {@code "line"} exactly as if the text had been typed after
     * the command, so the client needs to know nothing about the command's arguments.
     *
     * <ul>
     *   <li>{@code /upper hola mundo} becomes {@code {"id":1,"cmd":"upper","line":"hola mundo"}};
     *   <li>chat text, {@code hola} (or {@code //x}, the text "/x"), becomes
     *       {@code {"id":1,"cmd":"say","line":"hola"}};
     *   <li>a line that already is a JSON object, {@code {...}}, is sent as it is.
     * </ul>
     */
    static String toJsonRequest(String line, long id) {
        if (line.startsWith("{")) {
            return line;
        }
        String cmd;
        String rest;
        if (line.startsWith("/") && !line.startsWith("//")) {
            int space = line.indexOf(' ');
            cmd = space < 0 ? line.substring(1) : line.substring(1, space);
            rest = space < 0 ? "" : line.substring(space + 1).strip();
        } else {
            cmd = "say";
            rest = line.startsWith("//") ? line.substring(1) : line;
        }
        Map<String, Object> request = new LinkedHashMap<>();
        request.put("id", new Json.Number(Long.toString(id)));
        request.put("cmd", cmd);
        request.put("line", rest);
        return Json.write(request);
    }

    /** The frame as a JSON object if it is a reply (it has "ok"), else null (an event, text). */
    static Map<?, ?> replyIn(String frame) {
        Object value;
        try {
            value = Json.parse(frame);
        } catch (Json.ParseException e) {
            return null; // text: not a JSON reply
        }
        if (value instanceof Map<?, ?> object && object.containsKey("ok")) {
            return object;
        }
        return null;
    }

    // ----------------------------------------------------------------------------------------
    // Interactive mode: the console on the main thread, the server on a listener thread
    // ----------------------------------------------------------------------------------------

    /** Set once the console has ended, so that the server closing is expected, not news. */
    static volatile boolean consoleEnded;

    static void interactive(Socket socket, boolean json) throws IOException {
        DataInputStream in = new DataInputStream(new BufferedInputStream(socket.getInputStream()));
        DataOutputStream out = new DataOutputStream(new BufferedOutputStream(socket.getOutputStream()));

        Thread listener = new Thread(() -> listen(in), "listener");
        // The listener ends the program when the server closes; main may be blocked reading
        // the console at that moment, and a console read cannot be interrupted.
        listener.start();

        if (System.console() != null) {
            System.err.println("connected to " + socket.getRemoteSocketAddress()
                    + "; try /help. An empty line sends a keep-alive; Ctrl-D ends.");
        }
        BufferedReader console = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        long nextId = 1;
        String line;
        while ((line = console.readLine()) != null) {
            // An empty line is sent as an empty frame, a keep-alive, even with --json; a line
            // that already is a JSON object goes as it is, with the id the user gave it.
            boolean wrap = json && !line.isEmpty() && !line.startsWith("{");
            String payload = wrap ? toJsonRequest(line, nextId++) : line;
            if (payload.getBytes(StandardCharsets.UTF_8).length > MAX_FRAME) {
                System.err.println("error: that line is over the 1 MiB frame limit; not sent");
                continue;
            }
            try {
                writeFrame(out, payload); // an empty line is an empty frame: a keep-alive
                out.flush();
            } catch (IOException e) {
                break; // the server is gone; the listener reports it and exits
            }
        }

        // The console has ended. Replies to what we sent may still be on their way, so do not
        // just close. Half-close instead: shutdownOutput() tells the server "no more requests"
        // (it reads end-of-stream) while we can still read. The server answers what it has
        // received and then closes, and the listener sees that and exits. If the server keeps
        // the connection open, give up after DRAIN_TIMEOUT_MS.
        consoleEnded = true;
        try {
            socket.shutdownOutput();
            listener.join(DRAIN_TIMEOUT_MS);
        } catch (IOException | InterruptedException e) {
            // Already closed or interrupted: nothing left to wait for.
        }
        OUT.flush();
        System.exit(0);
    }

    /** The listener thread: prints every frame as it arrives, exits when the server closes. */
    static void listen(DataInputStream in) {
        int status = 0;
        try {
            String frame;
            while ((frame = readFrame(in)) != null) {
                // Every frame, even an empty one: the server sends no keep-alives, so an empty
                // frame is a reply with empty text (/echo with nothing to echo).
                OUT.println(frame);
            }
            if (!consoleEnded) {
                System.err.println("the server closed the connection");
            }
        } catch (IOException e) {
            System.err.println("error: connection lost: " + e.getMessage());
            status = 1;
        }
        OUT.flush();
        System.exit(status);
    }

    // ----------------------------------------------------------------------------------------
    // Frames: a 4-byte big-endian length, then that many bytes of UTF-8
    // ----------------------------------------------------------------------------------------

    static void writeFrame(DataOutputStream out, String text) throws IOException {
        byte[] payload = text.getBytes(StandardCharsets.UTF_8);
        out.writeInt(payload.length); // big-endian, as the protocol says
        out.write(payload);
    }

    /** Reads one frame; null when the server closed the connection between frames. */
    static String readFrame(DataInputStream in) throws IOException {
        int header;
        try {
            header = in.readInt();
        } catch (EOFException e) {
            return null;
        }
        // Java's int is signed: read the header as unsigned, so 0xFFFFFFFF is 4 GiB, not -1.
        long length = Integer.toUnsignedLong(header);
        if (length > MAX_FRAME) {
            throw new ProtocolException("the server announced a frame of " + length
                    + " bytes, over the " + MAX_FRAME + "-byte limit");
        }
        byte[] payload = new byte[(int) length];
        try {
            in.readFully(payload);
        } catch (EOFException e) {
            throw new EOFException("the server closed the connection in the middle of a frame");
        }
        // Lenient decoding: a client shows what it got, with U+FFFD for any invalid bytes.
        return new String(payload, StandardCharsets.UTF_8);
    }

    static void usage(String problem) {
        System.err.println("error: " + problem + "\n" + USAGE);
        System.exit(2);
    }

    static void fail(String message) {
        System.err.println("error: " + message);
        System.exit(1);
    }
}
