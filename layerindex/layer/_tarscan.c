/* The walker's fast path: tar members read in C while they are plain.
 *
 * scan() reads members from a buffer of the tar stream and appends one entry per member, as
 * long as each member is one that walker.py would read without any of its special cases, and
 * returns the offset of the first member it did not read. walker.py reads that member itself
 * and calls scan() again. So this file holds no rule of its own: every member it is not sure
 * about (GNU long names, pax keys other than times and paths, base-256 or odd numbers,
 * whiteouts, paths to canonicalise, names that are not UTF-8, a bad checksum, the end of the
 * archive, a member whose data runs past the buffer) is handed back, and the Python code
 * decides, raises or yields exactly as it would without this module. tests/test_walker.py
 * runs its corpus both ways; tests/test_tarscan.py compares the two on damaged headers.
 *
 * Members read here: ustar and v7 headers (the ustar prefix field included) of types 0, \0, 7
 * (files), 1-6 (links, devices, directories, fifos), each optionally preceded by a pax header
 * of mtime/atime/ctime and path/linkpath records, which is what containerd, Go's archive/tar
 * and tarfile write.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 512
#define SPECIAL_MAX (1 << 20) /* walker.SPECIAL_MAX (a test keeps them equal): bigger is an error */
#define PATH_BYTES 4096 /* walker.PATH_MAX: longer names and link targets are Python's to refuse */
#define NAME_BYTES 255  /* walker.NAME_MAX: so are names with a longer component */

enum { T_FILE, T_DIR, T_SYMLINK, T_HARDLINK, T_CHAR, T_BLOCK, T_FIFO, T_COUNT };

/* An octal header field as walker.py's int(field.rstrip(b"\0"), 8) reads it, in the forms
 * tar writers use: spaces, digits, then spaces or NULs. Anything else returns -1 and the
 * member goes back to Python (base-256, empty, odd padding). Fields are at most 12 octal
 * digits: no overflow. */
static int64_t octal(const unsigned char *field, size_t len) {
    size_t i = 0, end = len;
    while (end > 0 && field[end - 1] == 0) end--;
    while (i < end && field[i] == ' ') i++;
    size_t first = i;
    int64_t value = 0;
    while (i < end && field[i] >= '0' && field[i] <= '7') {
        value = value * 8 + (field[i] - '0');
        i++;
    }
    if (i == first) return -1;
    while (i < end && field[i] == ' ') i++;
    return i == end ? value : -1;
}

/* The header checksum, unsigned or (old tars) signed; 0 if neither matches or the field is odd.
 * The field ends at its first NUL, as walker.py reads it. */
static int checksum_ok(const unsigned char *h) {
    size_t len = 0;
    while (len < 8 && h[148 + len] != 0) len++;
    int64_t expected = octal(h + 148, len);
    if (expected < 0) return 0;
    int64_t unsigned_sum = 8 * ' ', signed_sum = 8 * ' ';
    for (int i = 0; i < BLOCK; i++) {
        if (i == 148) i = 156;
        unsigned_sum += h[i];
        signed_sum += (signed char)h[i];
    }
    return expected == unsigned_sum || expected == signed_sum;
}

static const unsigned char *find_nul(const unsigned char *p, size_t len) {
    const unsigned char *nul = memchr(p, 0, len);
    return nul ? nul : p + len;
}

static int contains(const char *p, size_t len, const char *needle, size_t nlen) {
    if (len < nlen) return 0;
    for (size_t i = 0; i + nlen <= len; i++)
        if (p[i] == needle[0] && memcmp(p + i, needle, nlen) == 0) return 1;
    return 0;
}

/* walker._canonical's fast path: "./a/b/", "a/b" → "/a/b" when no component is empty, "." or
 * "..", there is no backslash and the bytes are UTF-8. NULL (no exception set) otherwise. */
static PyObject *canonical(const unsigned char *raw, size_t len) {
    char path[PATH_BYTES + 2];
    if (len > PATH_BYTES) return NULL;
    if (len >= 2 && raw[0] == '.' && raw[1] == '/') raw += 2, len -= 2;
    if (memchr(raw, '\\', len)) return NULL;
    while (len > 0 && raw[len - 1] == '/') len--;
    path[0] = '/';
    memcpy(path + 1, raw, len);
    path[len + 1] = '/'; /* the probe: "." and ".." show as /./ and /../ wherever they are */
    size_t probe = len + 2;
    if (contains(path, probe, "//", 2) || contains(path, probe, "/./", 3) ||
        contains(path, probe, "/../", 4))
        return NULL;
    /* The root and whiteouts are walker._special's business. */
    if (len == 0 || contains(path, len + 1, ".wh.", 4)) return NULL;
    for (size_t i = 0, start = 0; i <= len; i++) {
        if (i < len && raw[i] != '/') continue;
        if (i - start > NAME_BYTES) return NULL;
        start = i + 1;
    }
    PyObject *text = PyUnicode_DecodeUTF8(path, (Py_ssize_t)(len + 1), NULL);
    if (!text) PyErr_Clear();
    return text;
}

/* A symlink target as entries.path_text keeps it: UTF-8 without backslashes, as written. */
static PyObject *as_written(const unsigned char *raw, size_t len) {
    if (len > PATH_BYTES || memchr(raw, '\\', len)) return NULL;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)raw, (Py_ssize_t)len, NULL);
    if (!text) PyErr_Clear();
    return text;
}

/* What a pax header may say for its member to stay plain: times, path and linkpath. */
struct pax {
    int has_mtime;
    int64_t mtime;
    const unsigned char *path, *linkpath; /* NULL when not given */
    size_t path_len, linkpath_len;
};

static int is_key(const unsigned char *key, size_t len, const char *name) {
    return len == strlen(name) && memcmp(key, name, len) == 0;
}

/* A pax header's records into *pax; 0 if it holds any other key (size, uid, GNU.sparse.*, ...)
 * or is malformed: Python reads it then. The last of repeated keys wins, as in a dict. */
static int plain_pax(const unsigned char *data, size_t size, struct pax *pax) {
    size_t pos = 0;
    while (pos < size && data[pos] != 0) {
        size_t length = 0, i = pos;
        /* At most 18 digits, no overflow: a longer length is Python's to refuse. */
        while (i < size && i < pos + 18 && data[i] >= '0' && data[i] <= '9') {
            length = length * 10 + (data[i] - '0');
            i++;
        }
        if (i == pos || i >= size || data[i] != ' ' || length == 0 || pos + length > size ||
            data[pos + length - 1] != '\n')
            return 0;
        /* key <= end: data[end] is the newline, data[i] the space before the key. */
        const unsigned char *key = data + i + 1, *end = data + pos + length - 1;
        const unsigned char *equals = memchr(key, '=', end - key);
        if (!equals) return 0;
        size_t key_len = equals - key, value_len = end - (equals + 1);
        const unsigned char *value = equals + 1;
        if (is_key(key, key_len, "mtime")) {
            const unsigned char *p = value;
            int negative = p < end && *p == '-';
            p += negative;
            const unsigned char *digits = p;
            int64_t seconds = 0;
            while (p < end && *p >= '0' && *p <= '9' && p - digits < 18)
                seconds = seconds * 10 + (*p++ - '0');
            if (p == digits || (p < end && *p != '.')) return 0;
            int fraction = 0; /* any byte but '0' after the point */
            for (const unsigned char *f = p + (p < end); f < end; f++) fraction |= *f != '0';
            pax->has_mtime = 1;
            pax->mtime = negative ? -seconds - (fraction ? 1 : 0) : seconds;
        } else if (is_key(key, key_len, "path") || is_key(key, key_len, "linkpath")) {
            if (memchr(value, 0, value_len)) return 0;
            if (key_len == 4) pax->path = value, pax->path_len = value_len;
            else pax->linkpath = value, pax->linkpath_len = value_len;
        } else if (!is_key(key, key_len, "atime") && !is_key(key, key_len, "ctime")) {
            return 0;
        }
        pos += length;
    }
    return 1;
}

static int64_t padded(int64_t size) { return (size + BLOCK - 1) & ~(int64_t)(BLOCK - 1); }

/* The entry for the plain member whose header is h, and in *data_size the bytes of data that
 * follow the header; NULL without an exception if Python must read this member, NULL with one
 * on a real error (out of memory). */
static PyObject *member(const unsigned char *h, PyTypeObject *entry_class, PyObject **types,
                        int hash_files, const struct pax *pax, int64_t *data_size) {
    unsigned char typeflag = h[156];
    int kind;
    switch (typeflag) {
    case '0': case 0: case '7': kind = T_FILE; break;
    case '1': kind = T_HARDLINK; break;
    case '2': kind = T_SYMLINK; break;
    case '3': kind = T_CHAR; break;
    case '4': kind = T_BLOCK; break;
    case '5': kind = T_DIR; break;
    case '6': kind = T_FIFO; break;
    default: return NULL;
    }
    int64_t size = octal(h + 124, 12), mode = octal(h + 100, 8), uid = octal(h + 108, 8),
            gid = octal(h + 116, 8), mtime = octal(h + 136, 12);
    if (size < 0 || mode < 0 || uid < 0 || gid < 0 || mtime < 0) return NULL;
    if (pax->has_mtime) mtime = pax->mtime;

    unsigned char name[BLOCK];
    const unsigned char *name_end = find_nul(h, 100);
    size_t name_len = name_end - h;
    if (h[345] && memcmp(h + 257, "ustar\0", 6) == 0) {
        size_t prefix_len = find_nul(h + 345, 155) - (h + 345);
        memcpy(name, h + 345, prefix_len);
        name[prefix_len] = '/';
        memcpy(name + prefix_len + 1, h, name_len);
        name_len += prefix_len + 1;
    } else {
        memcpy(name, h, name_len);
    }
    /* Types 1-6 have no data, whatever their size field says; a v7 directory (type \0 and a
     * trailing slash) keeps its size as data length, as in walker.py. */
    *data_size = kind == T_FILE ? size : 0;
    if (typeflag == 0 && name_len > 0 && name[name_len - 1] == '/') kind = T_DIR;
    if (kind == T_FILE && hash_files) return NULL; /* walker._hash reads the data */

    PyObject *path = pax->path ? canonical(pax->path, pax->path_len) : canonical(name, name_len);
    if (!path) return NULL;
    PyObject *target = Py_None;
    const unsigned char *link = pax->linkpath ? pax->linkpath : h + 157;
    size_t link_len = pax->linkpath ? pax->linkpath_len : (size_t)(find_nul(link, 100) - link);
    if (kind == T_SYMLINK) {
        target = as_written(link, link_len);
    } else if (kind == T_HARDLINK) {
        target = canonical(link, link_len);
    } else {
        Py_INCREF(target);
    }
    if (!target) {
        Py_DECREF(path);
        return NULL;
    }
    PyObject *entry = entry_class->tp_alloc(entry_class, 9);
    if (!entry) {
        Py_DECREF(path);
        Py_DECREF(target);
        return NULL;
    }
    PyObject *values[9] = {
        path,
        Py_NewRef(types[kind]),
        PyLong_FromLongLong(kind == T_FILE ? size : 0),
        PyLong_FromLongLong(mode & 07777),
        PyLong_FromLongLong(uid),
        PyLong_FromLongLong(gid),
        PyLong_FromLongLong(mtime),
        target,
        Py_NewRef(Py_None),
    };
    for (int i = 0; i < 9; i++) {
        if (!values[i]) {
            for (int j = 0; j < 9; j++) Py_XDECREF(values[j]);
            Py_DECREF(entry);
            return NULL;
        }
    }
    for (int i = 0; i < 9; i++) PyTuple_SET_ITEM(entry, i, values[i]);
    return entry;
}

PyDoc_STRVAR(scan_doc,
"scan(buffer, pos, out, entry_class, types, hash_files) -> int\n\n"
"Append an entry_class tuple to out for each plain member from buffer[pos:] and return the\n"
"offset of the first member left to the caller. types: the EntryType values for file, dir,\n"
"symlink, hardlink, char, block, fifo.");

static PyObject *scan(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer view;
    Py_ssize_t start;
    PyObject *out, *entry_class, *types_tuple;
    int hash_files;
    if (!PyArg_ParseTuple(args, "y*nO!O!O!p", &view, &start, &PyList_Type, &out, &PyType_Type,
                          &entry_class, &PyTuple_Type, &types_tuple, &hash_files))
        return NULL;
    PyObject *result = NULL;
    if (PyTuple_GET_SIZE(types_tuple) != T_COUNT ||
        !PyType_IsSubtype((PyTypeObject *)entry_class, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "scan: types must hold 7 values, entry_class a tuple");
        goto done;
    }
    PyObject **types = &PyTuple_GET_ITEM(types_tuple, 0);
    const unsigned char *buf = view.buf;
    int64_t len = view.len, pos = start;
    while (pos >= 0 && pos + BLOCK <= len) {
        const unsigned char *h = buf + pos;
        int64_t header = pos;
        struct pax pax = {0};
        if (!checksum_ok(h)) break; /* the end blocks, or a bad header Python will report */
        if (h[156] == 'x') {
            int64_t size = octal(h + 124, 12);
            if (size < 0 || size > SPECIAL_MAX) break;
            header = pos + BLOCK + padded(size);
            if (header + BLOCK > len ||
                !plain_pax(h + BLOCK, (size_t)size, &pax))
                break;
            h = buf + header;
            if (!checksum_ok(h)) break;
        }
        int64_t data_size = 0;
        PyObject *entry = member(h, (PyTypeObject *)entry_class, types, hash_files, &pax,
                                 &data_size);
        if (!entry) {
            if (PyErr_Occurred()) goto done;
            break;
        }
        int64_t next = header + BLOCK + padded(data_size);
        if (next > len) { /* its data runs on into the next chunk: Python skips it */
            Py_DECREF(entry);
            break;
        }
        int appended = PyList_Append(out, entry);
        Py_DECREF(entry);
        if (appended < 0) goto done;
        pos = next;
    }
    result = PyLong_FromLongLong(pos);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "layerindex.layer._tarscan",
    "The tar walker's fast path for plain members; see walker.py.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tarscan(void) {
    PyObject *m = PyModule_Create(&module);
    /* For the test that keeps them equal to walker.SPECIAL_MAX, PATH_MAX and NAME_MAX. */
    if (m && (PyModule_AddIntConstant(m, "SPECIAL_MAX", SPECIAL_MAX) < 0 ||
              PyModule_AddIntConstant(m, "PATH_MAX", PATH_BYTES) < 0 ||
              PyModule_AddIntConstant(m, "NAME_MAX", NAME_BYTES) < 0))
        Py_CLEAR(m);
    return m;
}
