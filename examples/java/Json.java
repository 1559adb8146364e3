import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small, strict JSON reader and writer: just enough for enlace's requests and replies.
 *
 * <p>Real programs would use a library (Jackson, Gson, org.json); this example has no
 * dependencies, so it carries its own. It follows RFC 8259 strictly, because a lenient parser
 * lets two programs disagree about what a message means:
 *
 * <ul>
 *   <li>objects become {@code Map<String, Object>} (keys in order; a repeated key keeps its last
 *       value, as Python's {@code json} does), arrays become {@code List<Object>}, strings become
 *       {@code String}, {@code true}/{@code false} become {@code Boolean}, {@code null} becomes
 *       Java {@code null};
 *   <li>numbers become {@link Number}, which keeps the digits as written, so that a request id
 *       like {@code 12345678901234567890} keeps all its digits; a number too large for a
 *       {@code double} ({@code 1e400}) is refused, as enlace refuses it;
 *   <li>nesting deeper than {@value #MAX_DEPTH} levels is refused with {@link TooDeep} before
 *       any parsing, counted as enlace counts it (docs/protocol.md section 4.3): each {@code [}
 *       or {@code \{} outside a string opens a level, each {@code ]} or {@code \}} closes one,
 *       valid JSON or not; so a hostile {@code [[[[...]]]]} never reaches the parser's stack;
 *   <li>{@code NaN}, {@code Infinity}, comments, trailing commas and single quotes are refused;
 *   <li>a {@code \\uXXXX} escape of half a surrogate pair must be followed by the other half
 *       (that is how JSON writes characters outside the Basic Multilingual Plane, such as emoji);
 *       an unpaired half is refused, because it could not be sent back as valid UTF-8.
 * </ul>
 */
final class Json {
    /** Deepest nesting accepted; enlace's own limit (docs/protocol.md section 10). */
    static final int MAX_DEPTH = 32;

    /** Past this depth the parser stops at once: each level costs two stack frames. */
    static final int STACK_DEPTH = 1000;

    private Json() {}

    /** A JSON number, kept as the text it was written with. */
    record Number(String text) {
        @Override
        public String toString() {
            return text;
        }
    }

    /** The text is not valid JSON; the message says what and where. */
    static class ParseException extends Exception {
        private static final long serialVersionUID = 1L;

        ParseException(String message, int position) {
            super(message + " at character " + position);
        }
    }

    /** The text is JSON, but nested deeper than {@link #MAX_DEPTH} levels. */
    static final class TooDeep extends ParseException {
        private static final long serialVersionUID = 1L;

        TooDeep(int position) {
            super("nested deeper than " + MAX_DEPTH + " levels", position);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Reading
    // ----------------------------------------------------------------------------------------

    /** Parses one complete JSON text; anything but whitespace after the value is an error. */
    static Object parse(String text) throws ParseException {
        if (bracketDepthExceeds(text, MAX_DEPTH)) {
            throw new TooDeep(0);
        }
        Json.Reader reader = new Json.Reader(text);
        Object value = reader.value(0);
        reader.skipWhitespace();
        if (reader.pos < text.length()) {
            throw reader.error("unexpected text after the JSON value");
        }
        if (reader.deepest > MAX_DEPTH) {
            throw new TooDeep(0);
        }
        return value;
    }

    /** Whether brackets outside strings nest deeper than {@code limit}, valid JSON or not. */
    static boolean bracketDepthExceeds(String text, int limit) {
        int depth = 0;
        boolean inString = false;
        boolean escaped = false;
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (inString) {
                if (escaped) {
                    escaped = false;
                } else if (c == '\\') {
                    escaped = true;
                } else if (c == '"') {
                    inString = false;
                }
            } else if (c == '"') {
                inString = true;
            } else if (c == '[' || c == '{') {
                if (++depth > limit) {
                    return true;
                }
            } else if ((c == ']' || c == '}') && depth > 0) {
                depth--;
            }
        }
        return false;
    }

    /** A recursive-descent parser: one method per kind of value, reading from {@code pos}. */
    private static final class Reader {
        private final String s;
        private int pos;
        /** The deepest nesting seen so far: {} and [] are 1, [[]] is 2. */
        private int deepest;

        Reader(String s) {
            this.s = s;
        }

        ParseException error(String message) {
            return new ParseException(message, pos);
        }

        /** The character at {@code at}, quoted if printable ASCII, else as U+XXXX. */
        private String describe(int at) {
            int c = s.codePointAt(at);
            return c >= 0x20 && c < 0x7f ? "'" + (char) c + "'" : String.format("U+%04X", c);
        }

        void skipWhitespace() {
            // JSON whitespace is exactly these four characters, not Character.isWhitespace().
            while (pos < s.length() && " \t\n\r".indexOf(s.charAt(pos)) >= 0) {
                pos++;
            }
        }

        Object value(int depth) throws ParseException {
            skipWhitespace();
            if (pos >= s.length()) {
                throw error("unexpected end of input");
            }
            char c = s.charAt(pos);
            if (c == '{') {
                return object(depth + 1);
            } else if (c == '[') {
                return array(depth + 1);
            } else if (c == '"') {
                return string();
            } else if (c == 't') {
                return literal("true", Boolean.TRUE);
            } else if (c == 'f') {
                return literal("false", Boolean.FALSE);
            } else if (c == 'n') {
                return literal("null", null);
            } else if (c == '-' || isDigit(c)) {
                return number();
            }
            throw error("unexpected character " + describe(pos));
        }

        private Object literal(String word, Object value) throws ParseException {
            if (!s.startsWith(word, pos)) {
                throw error("invalid literal");
            }
            pos += word.length();
            return value;
        }

        private Map<String, Object> object(int depth) throws ParseException {
            if (depth > STACK_DEPTH) {
                throw new TooDeep(pos);
            }
            deepest = Math.max(deepest, depth);
            Map<String, Object> map = new LinkedHashMap<>();
            pos++; // the '{'
            skipWhitespace();
            if (peek() == '}') {
                pos++;
                return map;
            }
            while (true) {
                skipWhitespace();
                if (peek() != '"') {
                    throw error("expected a string key");
                }
                String key = string();
                skipWhitespace();
                expect(':');
                map.put(key, value(depth));
                skipWhitespace();
                if (peek() == ',') {
                    pos++;
                } else {
                    expect('}');
                    return map;
                }
            }
        }

        private List<Object> array(int depth) throws ParseException {
            if (depth > STACK_DEPTH) {
                throw new TooDeep(pos);
            }
            deepest = Math.max(deepest, depth);
            List<Object> list = new ArrayList<>();
            pos++; // the '['
            skipWhitespace();
            if (peek() == ']') {
                pos++;
                return list;
            }
            while (true) {
                list.add(value(depth));
                skipWhitespace();
                if (peek() == ',') {
                    pos++;
                } else {
                    expect(']');
                    return list;
                }
            }
        }

        private String string() throws ParseException {
            pos++; // the opening quote
            StringBuilder out = new StringBuilder();
            while (true) {
                if (pos >= s.length()) {
                    throw error("unterminated string");
                }
                char c = s.charAt(pos++);
                if (c == '"') {
                    return out.toString();
                } else if (c < 0x20) {
                    pos--;
                    throw error("control character in string (write it as an escape)");
                } else if (c != '\\') {
                    // Unescaped text came from valid UTF-8, so its surrogate pairs are whole.
                    out.append(c);
                    continue;
                }
                if (pos >= s.length()) {
                    throw error("unterminated string");
                }
                char e = s.charAt(pos++);
                switch (e) {
                    case '"' -> out.append('"');
                    case '\\' -> out.append('\\');
                    case '/' -> out.append('/');
                    case 'b' -> out.append('\b');
                    case 'f' -> out.append('\f');
                    case 'n' -> out.append('\n');
                    case 'r' -> out.append('\r');
                    case 't' -> out.append('\t');
                    case 'u' -> out.append(unicodeEscape());
                    default -> {
                        pos--;
                        throw error("invalid escape: backslash before " + describe(pos));
                    }
                }
            }
        }

        /** After {@code \\u}: one character, or a surrogate pair written as two escapes. */
        private String unicodeEscape() throws ParseException {
            char c = hex4();
            if (Character.isLowSurrogate(c)) {
                throw error("unpaired surrogate \\u" + Integer.toHexString(c));
            }
            if (!Character.isHighSurrogate(c)) {
                return String.valueOf(c);
            }
            if (!s.startsWith("\\u", pos)) {
                throw error("unpaired surrogate \\u" + Integer.toHexString(c));
            }
            pos += 2;
            char low = hex4();
            if (!Character.isLowSurrogate(low)) {
                throw error("unpaired surrogate \\u" + Integer.toHexString(c));
            }
            return new String(new char[] {c, low});
        }

        private char hex4() throws ParseException {
            if (pos + 4 > s.length()) {
                throw error("truncated \\u escape");
            }
            int value = 0;
            for (int i = 0; i < 4; i++, pos++) {
                char h = s.charAt(pos);
                // Not Character.digit(): it also accepts non-ASCII digits, which JSON does not.
                int digit = h >= '0' && h <= '9' ? h - '0'
                        : h >= 'a' && h <= 'f' ? h - 'a' + 10
                        : h >= 'A' && h <= 'F' ? h - 'A' + 10
                        : -1;
                if (digit < 0) {
                    throw error("invalid hex digit in \\u escape");
                }
                value = value * 16 + digit;
            }
            return (char) value;
        }

        /** -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? and nothing looser. */
        private Number number() throws ParseException {
            int start = pos;
            if (peek() == '-') {
                pos++;
            }
            if (peek() == '0') {
                pos++;
            } else if (isDigit(peek())) {
                digits();
            } else {
                throw error("invalid number");
            }
            if (peek() == '.') {
                pos++;
                if (!isDigit(peek())) {
                    throw error("invalid number: digits must follow '.'");
                }
                digits();
            }
            if (peek() == 'e' || peek() == 'E') {
                pos++;
                if (peek() == '+' || peek() == '-') {
                    pos++;
                }
                if (!isDigit(peek())) {
                    throw error("invalid number: digits must follow the exponent");
                }
                digits();
            }
            String text = s.substring(start, pos);
            if (Double.isInfinite(Double.parseDouble(text))) {
                pos = start;
                throw error("number out of range");
            }
            return new Number(text);
        }

        private void digits() {
            while (isDigit(peek())) {
                pos++;
            }
        }

        private static boolean isDigit(char c) {
            return c >= '0' && c <= '9';
        }

        /** The current character, or 0 at the end (0 never starts anything valid). */
        private char peek() {
            return pos < s.length() ? s.charAt(pos) : 0;
        }

        private void expect(char c) throws ParseException {
            if (peek() != c) {
                throw error(pos >= s.length() ? "unexpected end of input" : "expected '" + c + "'");
            }
            pos++;
        }
    }

    // ----------------------------------------------------------------------------------------
    // Writing
    // ----------------------------------------------------------------------------------------

    /** Writes a value built from the same types {@link #parse} returns. */
    static String write(Object value) {
        StringBuilder out = new StringBuilder();
        write(out, value);
        return out.toString();
    }

    static void write(StringBuilder out, Object value) {
        if (value == null) {
            out.append("null");
        } else if (value instanceof String text) {
            quote(out, text);
        } else if (value instanceof Boolean || value instanceof Number) {
            out.append(value);
        } else if (value instanceof Map<?, ?> map) {
            // Compact, as enlace writes it: {"id":7,"ok":true}. Any spacing is valid JSON.
            out.append('{');
            String separator = "";
            for (Map.Entry<?, ?> entry : map.entrySet()) {
                out.append(separator);
                quote(out, (String) entry.getKey());
                out.append(':');
                write(out, entry.getValue());
                separator = ",";
            }
            out.append('}');
        } else if (value instanceof List<?> list) {
            out.append('[');
            String separator = "";
            for (Object item : list) {
                out.append(separator);
                write(out, item);
                separator = ",";
            }
            out.append(']');
        } else {
            throw new IllegalArgumentException("not a JSON value: " + value.getClass());
        }
    }

    /**
     * Writes a JSON string. Only the characters JSON requires are escaped, with the short forms
     * where JSON has one; everything else, including accents and emoji, goes out as itself and
     * becomes UTF-8 on the wire. (The same bytes enlace writes.)
     */
    static void quote(StringBuilder out, String text) {
        out.append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\b' -> out.append("\\b");
                case '\f' -> out.append("\\f");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        out.append('"');
    }

    static String quote(String text) {
        StringBuilder out = new StringBuilder();
        quote(out, text);
        return out.toString();
    }
}
