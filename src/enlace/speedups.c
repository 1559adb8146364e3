/*
 * enlace.speedups: the message server's per-frame loops, in C.
 *
 * Each function here has a pure-Python twin in enlace/protocol/fastpath.py that
 * defines what it must return; tests/protocol/test_fastpath.py checks that the
 * two agree on arbitrary input.  The module is optional: without a C compiler
 * enlace installs and runs on the Python twins, only slower.
 *
 * Nothing here does I/O or keeps state between calls; every input is a Python
 * object checked on entry, and every limit is the caller's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define HEADER_SIZE 4
/* A command name longer than this is left to the general path (no command has one). */
#define MAX_QUICK_NAME 64

static PyObject *strip_method; /* "strip", interned */

static inline Py_ssize_t
read_header(const unsigned char *p)
{
    return ((Py_ssize_t)p[0] << 24) | ((Py_ssize_t)p[1] << 16) | ((Py_ssize_t)p[2] << 8) |
           (Py_ssize_t)p[3];
}

/* The ASCII characters str.isspace() accepts. */
static inline int
is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* The (data, limit) arguments both functions take (limit None: no limit): 0, or -1 with
 * an exception set.
 * On success the caller owns *view and must release it. */
static int
data_and_limit(const char *function, PyObject *const *args, Py_ssize_t nargs, Py_buffer *view,
               Py_ssize_t *limit)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (%zd given)", function, nargs);
        return -1;
    }
    if (args[1] == Py_None) {
        *limit = PY_SSIZE_T_MAX; /* no limit */
    }
    else {
        *limit = PyLong_AsSsize_t(args[1]);
        if (*limit == -1 && PyErr_Occurred())
            return -1;
    }
    return PyObject_GetBuffer(args[0], view, PyBUF_SIMPLE);
}

/* The (name, rest) pair of the command payload p[0:size] (p[0] is '/'), or NULL with
 * no exception set when the general path must read it. */
static PyObject *
read_command(const unsigned char *p, Py_ssize_t size)
{
    const unsigned char *name = p + 1, *end = p + size;
    const unsigned char *space = memchr(name, ' ', (size_t)(end - name));
    const unsigned char *name_end = space ? space : end;
    Py_ssize_t name_size = name_end - name;
    char lowered[MAX_QUICK_NAME];

    if (name_size == 0 || name_size > MAX_QUICK_NAME)
        return NULL;
    if (is_space(name[0]) || is_space(name_end[-1]))
        return NULL; /* parse_payload refuses a name with spaces around it */
    for (Py_ssize_t i = 0; i < name_size; i++) {
        unsigned char c = name[i];
        if (c >= 0x80)
            return NULL;
        lowered[i] = (char)((c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c);
    }
    const unsigned char *rest = space ? space + 1 : end, *rest_end = end;
    while (rest < rest_end && is_space(*rest))
        rest++;
    while (rest_end > rest && is_space(rest_end[-1]))
        rest_end--;
    /* The bytes left out are ASCII: the payload is valid UTF-8 if and only if this is. */
    PyObject *text = PyUnicode_DecodeUTF8((const char *)rest, rest_end - rest, NULL);
    if (text == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return NULL;
        PyErr_Clear();
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(text)) {
        /* Non-ASCII whitespace (U+00A0, U+3000, ...) is stripped too, as str.strip() does. */
        PyObject *stripped = PyObject_CallMethodNoArgs(text, strip_method);
        Py_DECREF(text);
        if (stripped == NULL)
            return NULL;
        text = stripped;
    }
    PyObject *key = PyUnicode_FromStringAndSize(lowered, name_size);
    if (key == NULL) {
        Py_DECREF(text);
        return NULL;
    }
    PyObject *pair = PyTuple_Pack(2, key, text);
    Py_DECREF(key);
    Py_DECREF(text);
    return pair;
}

PyDoc_STRVAR(cut_text_commands_doc,
             "cut_text_commands(data, limit, /)\n--\n\n"
             "See enlace.protocol.fastpath.cut_text_commands.");

static PyObject *
cut_text_commands(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t limit, position = 0;

    if (data_and_limit("cut_text_commands", args, nargs, &view, &limit) < 0)
        return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t end = view.len;
    PyObject *commands = PyList_New(0);
    if (commands == NULL)
        goto error;
    while (end - position >= HEADER_SIZE) {
        Py_ssize_t size = read_header(data + position);
        if (size > limit)
            goto general;
        Py_ssize_t start = position + HEADER_SIZE;
        if (end - start < size)
            break;
        position = start + size;
        if (size == 0)
            continue; /* a keep-alive */
        const unsigned char *payload = data + start;
        if (payload[0] != '/' || (size > 1 && payload[1] == '/'))
            goto general; /* JSON, chat text, or escaped chat text */
        PyObject *pair = read_command(payload, size);
        if (pair == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto general;
        }
        int failed = PyList_Append(commands, pair);
        Py_DECREF(pair);
        if (failed)
            goto error;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nn)", commands, position);

general:
    Py_DECREF(commands);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;

error:
    Py_XDECREF(commands);
    PyBuffer_Release(&view);
    return NULL;
}

PyDoc_STRVAR(frame_text_doc,
             "frame_text(text, /)\n--\n\n"
             "See enlace.protocol.fastpath.frame_text.");

static PyObject *
frame_text(PyObject *module, PyObject *text)
{
    Py_ssize_t size;

    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "frame_text() takes a str, not %.100s",
                     Py_TYPE(text)->tp_name);
        return NULL;
    }
    /* An ASCII str's UTF-8 form is its own buffer: no encoding, one copy. */
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
    if (utf8 == NULL)
        return NULL; /* UnicodeEncodeError: a lone surrogate, as str.encode() raises */
    if (size > 0xFFFFFFFFLL) {
        PyErr_SetString(PyExc_ValueError, "the text is too long for a frame header");
        return NULL;
    }
    PyObject *frame = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + size);
    if (frame == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(frame);
    out[0] = (unsigned char)(size >> 24);
    out[1] = (unsigned char)(size >> 16);
    out[2] = (unsigned char)(size >> 8);
    out[3] = (unsigned char)size;
    memcpy(out + HEADER_SIZE, utf8, (size_t)size);
    return frame;
}

PyDoc_STRVAR(scan_frames_doc,
             "scan_frames(data, limit, /)\n--\n\n"
             "See enlace.protocol.fastpath.scan_frames.");

static PyObject *
scan_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t limit, position = 0, empty = 0, oversize = -1;

    if (data_and_limit("scan_frames", args, nargs, &view, &limit) < 0)
        return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t end = view.len;
    while (end - position >= HEADER_SIZE) {
        Py_ssize_t size = read_header(data + position);
        if (size > limit) {
            oversize = size;
            break;
        }
        if (end - position - HEADER_SIZE < size)
            break;
        position += HEADER_SIZE + size;
        empty += size == 0;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nnn)", position, empty, oversize);
}

static PyMethodDef speedups_methods[] = {
    {"cut_text_commands", (PyCFunction)(void (*)(void))cut_text_commands, METH_FASTCALL,
     cut_text_commands_doc},
    {"frame_text", frame_text, METH_O, frame_text_doc},
    {"scan_frames", (PyCFunction)(void (*)(void))scan_frames, METH_FASTCALL, scan_frames_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "enlace.speedups",
    .m_doc = "The message server's per-frame loops in C (see enlace.protocol.fastpath).",
    .m_size = -1,
    .m_methods = speedups_methods,
};

PyMODINIT_FUNC
PyInit_speedups(void)
{
    strip_method = PyUnicode_InternFromString("strip");
    if (strip_method == NULL)
        return NULL;
    return PyModule_Create(&speedups_module);
}
