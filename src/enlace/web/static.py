"""Static files under one root: path confinement, types, validators, ranges, listings.

:class:`StaticFiles` turns a GET or HEAD request into a :class:`Reply`: a
status, header fields, and either bytes or an open file descriptor with the
span to send (large files go out with ``sendfile``, never through Python).

Every path is decoded once, split into segments, and refused (400) if a segment
is ``..`` or ``.``, or holds a NUL, a backslash or a ``/`` that was encoded; the
file found is then resolved (symlinks included) and must still lie under the
root, or the answer is 404. A redirect's Location is rebuilt from the clean
segments, so it always starts with exactly one ``/``.
"""

from __future__ import annotations

import email.utils
import html
import os
import stat
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from enlace.limits import MAX_LISTING
from enlace.protocol.http import Request

__all__ = ["Reply", "StaticFiles", "content_type"]

# Files up to this size are read into memory (and kept in a small cache); larger
# ones are sent with sendfile, which costs more per call but never copies.
SMALL_FILE = 64 * 1024
# Bytes of small files kept in memory, across files: a site's pages and assets.
_CACHE_BYTES = 16 * 1024 * 1024

_TYPES: dict[str, str] = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".tar": "application/x-tar",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".py": "text/x-python",
    ".java": "text/x-java",
    ".c": "text/x-c",
}
_TEXT_LIKE = ("application/json", "application/xml", "image/svg+xml")
# Worth compressing, so their responses say Vary: Accept-Encoding whether or not a
# precompressed sibling exists (a cache must not hand a gzip body to a client without gzip).
_COMPRESSIBLE = (
    "text/",
    "application/json",
    "application/xml",
    "image/svg+xml",
    "application/wasm",
)
_ENCODINGS = (("br", ".br"), ("gzip", ".gz"))


def content_type(name: str) -> str:
    """The Content-Type for a file name: by extension, ``; charset=utf-8`` on text."""
    kind = _TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream")
    if kind.startswith("text/") or kind in _TEXT_LIKE:
        return kind + "; charset=utf-8"
    return kind


@dataclass(slots=True)
class Reply:
    """What to answer: status, header fields, and a body (bytes, or a file span)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: An open file to send ``length`` bytes of from ``offset``; the sender closes it.
    fd: int | None = None
    offset: int = 0
    length: int = 0
    #: The Content-Length of a reply to HEAD, which carries no body.
    size: int | None = None
    #: The header block, encoded, from after ``Date`` to before ``Connection`` (a cached
    #: reply's: built once, sent many times).
    fields: bytes | None = None

    @property
    def content_length(self) -> int:
        if self.size is not None:
            return self.size
        return self.length if self.fd is not None else len(self.body)


class StaticFiles:
    """Serve the files under ``root``; ``listing`` enables directory listings.

    ``pages`` maps clean URL paths (``/``, ``/index.html``) to generated HTML
    that is served instead of a file (the built-in site's home page).
    """

    def __init__(
        self,
        root: str,
        *,
        listing: bool = False,
        pages: Mapping[str, bytes] | None = None,
        max_listing: int | None = MAX_LISTING,
    ) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(root)
        self.listing = listing
        self.max_listing = max_listing
        self.pages: dict[str, bytes] = dict(pages or {})
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._cache: OrderedDict[tuple[int, int, int, int], bytes] = OrderedDict()
        self._cached_bytes = 0
        self._dates: dict[int, str] = {}
        # Raw request path -> the last full 200 reply for it, revalidated by one stat():
        # serving a file again skips decoding, resolving and building its header fields.
        self._hot: dict[bytes, _Hot] = {}

    # -- the request -------------------------------------------------------------

    def serve(self, request: Request) -> Reply:
        """The reply to a GET or HEAD ``request`` (the caller refuses other methods)."""
        raw = request.path
        hot = self._hot.get(raw)
        if hot is not None and not any(map(request._index.__contains__, _CONDITIONAL)):
            reply = self._hot_reply(hot, request)
            if reply is not None:
                return reply
        segments = _segments(raw)
        if segments is None:
            return _error(400)
        clean = "/" + "/".join(segments)
        page = self.pages.get(clean)
        if page is not None:
            return self._bytes_reply(request, page, "text/html; charset=utf-8")
        path = os.path.join(self.root, *segments)
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            return _error(404)
        real = self._confined(path)
        if real is None:
            return _error(404)
        if stat.S_ISDIR(info.st_mode):
            return self._directory(request, real, segments, path)
        if not stat.S_ISREG(info.st_mode):
            return _error(404)  # a device or a pipe: reading it could block or never end
        return self._file(request, real, info, path)

    def _hot_reply(self, hot: _Hot, request: Request) -> Reply | None:
        if hot.compressible and b"accept-encoding" in request._index:
            return None  # a precompressed sibling may apply: take the long way
        try:
            info = os.stat(hot.path)
        except OSError:
            return None
        # The path (symlinks followed) still leads to the inode that was confined and
        # measured, unchanged: a retargeted link or a new file takes the long way again.
        if (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size) != hot.key:
            del self._hot[request.path]
            return None
        if hot.reply.fd is None:
            return hot.reply
        if request.method == "HEAD":
            return Reply(200, fields=hot.reply.fields)
        fd = _open_same(hot.path, info)
        if fd is None:
            return None
        return Reply(200, fields=hot.reply.fields, fd=fd, length=hot.reply.length)

    def _remember(
        self, request: Request, path: str, info: os.stat_result, reply: Reply, compressible: bool
    ) -> None:
        if len(self._hot) >= _HOT_ENTRIES:
            self._hot.clear()
        fields = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
        fields += f"Content-Length: {reply.content_length}\r\n"
        shared = Reply(
            200,
            reply.headers,
            reply.body,
            fd=None if reply.fd is None else -1,
            length=reply.length,
            fields=("\r\n" + fields).encode("latin-1"),
        )
        key = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
        self._hot[request.path] = _Hot(path, key, shared, compressible)

    def _confined(self, path: str) -> str | None:
        real = os.path.realpath(path)
        if real == self.root or real.startswith(self._prefix):
            return real
        return None

    def _directory(self, request: Request, real: str, segments: list[str], path: str) -> Reply:
        if not request.path.endswith(b"/"):
            # Rebuilt from the clean segments: never "//host" or "/\\host".
            location = urllib.parse.quote("/" + "/".join(segments) + "/")
            if request.query:
                location += "?" + request.query.decode("latin-1")
            return Reply(301, [("Location", location)])
        index = os.path.join(real, "index.html")
        try:
            info = os.stat(index)
        except OSError:
            info = None
        if info is not None and stat.S_ISREG(info.st_mode):
            confined = self._confined(index)
            if confined is not None:
                return self._file(request, confined, info, os.path.join(path, "index.html"))
        if self.listing:
            return self._bytes_reply(
                request, self._listing(real, segments), "text/html; charset=utf-8"
            )
        return _error(404)

    def _file(self, request: Request, real: str, info: os.stat_result, path: str) -> Reply:
        """``real``: the resolved, confined file; ``path``: root joined with the request's."""
        etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
        modified = self._http_date(int(info.st_mtime))
        kind = content_type(real)
        headers = [("Content-Type", kind), ("ETag", etag), ("Last-Modified", modified)]
        compressible = kind.startswith(_COMPRESSIBLE)
        if compressible:
            headers.append(("Vary", "Accept-Encoding"))
        if _not_modified(request, etag, int(info.st_mtime)):
            return Reply(304, headers)
        ranged = request.header(b"range")
        if ranged is not None and not _if_range_holds(request, etag, int(info.st_mtime)):
            ranged = None
        accepted = request.header(b"accept-encoding")
        if compressible and accepted is not None and ranged is None:
            sibling = self._precompressed(real, accepted, info)
            if sibling is not None:
                encoding, real, info = sibling
                # Each representation has its own validator.
                headers[1] = ("ETag", f'"{info.st_mtime_ns:x}-{info.st_size:x}-{encoding}"')
                headers.append(("Content-Encoding", encoding))
        size = info.st_size
        headers.append(("Accept-Ranges", "bytes"))
        status, start, length = 200, 0, size
        if ranged is not None:
            span = _byte_range(ranged, size)
            if isinstance(span, str):
                return Reply(416, [("Content-Range", f"bytes */{size}")])
            if span is not None:
                status, (start, length) = 206, span
                headers.append(("Content-Range", f"bytes {start}-{start + length - 1}/{size}"))
        if request.method == "HEAD":
            return Reply(status, headers, size=length)
        if size <= SMALL_FILE:
            data = self._small(real, info)
            if data is None:
                return _error(404)
            reply = Reply(status, headers, data[start : start + length])
        else:
            fd = _open_same(real, info)
            if fd is None:
                return _error(404)
            reply = Reply(status, headers, fd=fd, offset=start, length=length)
        if status == 200 and "Content-Encoding" not in (name for name, _ in headers):
            self._remember(request, path, info, reply, compressible)
        return reply

    def _precompressed(
        self, real: str, accepted: bytes, original: os.stat_result
    ) -> tuple[str, str, os.stat_result] | None:
        wanted = _accepted_encodings(accepted)
        for encoding, suffix in _ENCODINGS:
            if encoding not in wanted:
                continue
            candidate = real + suffix
            try:
                info = os.stat(candidate)
            except OSError:
                continue
            # A stale sibling (older than the file) would serve old content.
            if not stat.S_ISREG(info.st_mode) or info.st_mtime_ns < original.st_mtime_ns:
                continue
            confined = self._confined(candidate)
            if confined is not None:
                return encoding, confined, info
        return None

    def _bytes_reply(self, request: Request, body: bytes, kind: str) -> Reply:
        etag = f'"{hash(body) & 0xFFFFFFFFFFFF:x}-{len(body):x}"'
        headers = [("Content-Type", kind), ("ETag", etag), ("Cache-Control", "no-cache")]
        if _not_modified(request, etag, None):
            return Reply(304, headers)
        if request.method == "HEAD":
            return Reply(200, headers, size=len(body))
        return Reply(200, headers, body)

    # -- helpers -----------------------------------------------------------------

    def _small(self, real: str, info: os.stat_result) -> bytes | None:
        key = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
        cache = self._cache
        data = cache.get(key)
        if data is not None:
            cache.move_to_end(key)
            return data
        fd = _open_same(real, info)
        if fd is None:
            return None
        try:
            with open(fd, "rb") as file:
                data = file.read(SMALL_FILE + 1)
        except OSError:
            return None
        if len(data) != info.st_size:
            return data  # changed while we looked: serve what we read, do not keep it
        cache[key] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > _CACHE_BYTES:
            _, old = cache.popitem(last=False)
            self._cached_bytes -= len(old)
        return data

    def _http_date(self, seconds: int) -> str:
        text = self._dates.get(seconds)
        if text is None:
            if len(self._dates) > 4096:
                self._dates.clear()
            text = self._dates[seconds] = email.utils.formatdate(seconds, usegmt=True)
        return text

    def _listing(self, real: str, segments: list[str]) -> bytes:
        try:
            with os.scandir(real) as entries:
                names: list[tuple[str, bool]] = []
                more = 0
                for entry in entries:
                    if self.max_listing is not None and len(names) >= self.max_listing:
                        more += 1
                        continue
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    names.append((entry.name, is_dir))
        except OSError:
            names, more = [], 0
        names.sort(key=lambda item: (not item[1], item[0].casefold()))
        title = html.escape("/" + "".join(s + "/" for s in segments))
        rows = [] if not segments else ['<li><a href="../">../</a></li>']
        for name, is_dir in names:
            shown = name + ("/" if is_dir else "")
            href = urllib.parse.quote(shown)
            rows.append(f'<li><a href="{html.escape(href)}">{html.escape(shown)}</a></li>')
        if more:
            rows.append(f"<li>... and {more} more not shown (limit {self.max_listing})</li>")
        page = (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n<ul>\n"
            + "\n".join(rows)
            + "\n</ul></body></html>\n"
        )
        return page.encode("utf-8", "surrogateescape")


def _open_same(path: str, info: os.stat_result) -> int | None:
    """Open ``path`` only if it is still the file ``info`` describes (no swap since).

    A symlink swapped in between the checks and the open would otherwise hand
    us a file outside the root; comparing the opened file's identity closes that gap.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino) or not stat.S_ISREG(
        opened.st_mode
    ):
        os.close(fd)
        return None
    return fd


@dataclass(slots=True)
class _Hot:
    path: str
    key: tuple[int, int, int, int]
    reply: Reply
    compressible: bool


# Request fields that make a reply depend on more than the file: never served from _hot.
_CONDITIONAL = (b"if-none-match", b"if-modified-since", b"range", b"if-range")
# Paths remembered in _hot before it starts over: a site's working set, bounded.
_HOT_ENTRIES = 1024


def _segments(raw: bytes) -> list[str] | None:
    """The clean path segments of a raw request path, or ``None`` if it must be refused."""
    if not raw.startswith(b"/"):
        return None  # absolute-form or "*": not for a static server
    segments: list[str] = []
    for piece in raw.split(b"/"):
        if not piece:
            continue  # "//" collapses, as in nginx's merge_slashes
        decoded = urllib.parse.unquote_to_bytes(piece)
        if decoded in (b".", b"..") or b"/" in decoded or b"\\" in decoded or b"\0" in decoded:
            return None
        try:
            text = decoded.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if any(ord(char) < 32 or ord(char) == 127 for char in text):
            return None
        segments.append(text)
    return segments


def _accepted_encodings(header: bytes) -> set[str]:
    wanted = set()
    for item in header.decode("latin-1").split(","):
        name, _, params = item.partition(";")
        params = params.replace(" ", "").lower()
        if params.startswith("q=") and params[2:].strip("0.") == "":
            continue  # q=0: explicitly refused
        wanted.add(name.strip().lower())
    return wanted


def _not_modified(request: Request, etag: str, mtime: int | None) -> bool:
    match = request.header(b"if-none-match")
    if match is not None:
        tags = [tag.strip() for tag in match.decode("latin-1").split(",")]
        # Weak comparison (RFC 9110 13.1.2): W/"x" matches "x".
        return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)
    since = request.header(b"if-modified-since")
    if since is None or mtime is None:
        return False
    when = _parse_date(since)
    return when is not None and mtime <= when


def _if_range_holds(request: Request, etag: str, mtime: int) -> bool:
    condition = request.header(b"if-range")
    if condition is None:
        return True
    text = condition.decode("latin-1").strip()
    if text.startswith(('"', "W/")):
        return text == etag  # strong comparison only
    when = _parse_date(condition)
    return when is not None and mtime <= when


def _parse_date(value: bytes) -> int | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    return int(parsed.timestamp())


def _byte_range(header: bytes, size: int) -> tuple[int, int] | str | None:
    """``(start, length)`` of a single ``bytes=`` range; ``None``: serve the whole file."""
    unit, _, spec = header.decode("latin-1").partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multiple ranges: the whole file (RFC 9110 allows it)
    first, dash, last = spec.strip().partition("-")
    if not dash or not _number_or_empty(first) or not _number_or_empty(last):
        return None
    if first == "":
        if last == "":
            return None
        length = _position(last, size)
        return (size - length, length) if length else "unsatisfiable"
    start = _position(first, size)
    if start >= size:
        return "unsatisfiable"
    end = min(_position(last, size), size - 1) if last else size - 1
    if end < start:
        return None  # invalid: ignored
    return start, end - start + 1


def _number_or_empty(text: str) -> bool:
    # ASCII digits only: str.isdigit() also takes "\u00b2" (a Latin-1 byte), which int() refuses.
    return text.isascii() and (text.isdigit() or not text)


def _position(digits: str, size: int) -> int:
    """A byte position of a range, at most ``size``: any larger one means the same."""
    # Checked by length first: int() refuses a string of over 4300 digits (ValueError).
    digits = digits.lstrip("0")
    return size if len(digits) > len(str(size)) else min(int(digits or "0"), size)


def _error(status: int) -> Reply:
    # The page itself comes from enlace.web.pages; the server fills it in.
    return Reply(status)
