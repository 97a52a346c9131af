# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled hot path (Cython): Envoy/Istio access-log decoding, resolution, aggregation.

Optional: ``detector.fastpath`` imports it when it was built (``pip install -e .`` compiles it
with the machine's C compiler) and ``DETECTOR_PURE_PYTHON`` is not set; the pure-Python modules
stay the reference, and this module must behave exactly like them (tests compare both).

Contract:
* ``decode_envoy_json(data, source, offset)`` returns exactly what
  ``detector.decoders.envoy.decode_json`` returns (or raises what it raises). It scans one JSON
  object in C, keeping only the keys the decoder reads and turning only those values into Python
  objects. It handles the common shape: one flat object whose values are ASCII strings without
  escapes, integers of up to 18 digits, short decimals, ``true``/``false``/``null``. Any other
  input (nesting, escapes, non-ASCII, exponents, less common keys, malformed JSON, odd value
  types in the keys read) is handed whole to the pure-Python decoder, which decides.
  Rare branches (auth classification, host parsing, timestamp parsing on a cache miss) call the
  pure-Python helpers, so the mapping rules live in one place.
* ``decode_envoy_text(data, source, offset)`` is exactly ``envoy.decode_text``: the Istio >= 1.9
  text layout (the one tried first) is tokenised here; other layouts and unusual lines are
  handed to the pure-Python decoder.
* ``decode_envoy_json_units`` / ``decode_envoy_text_units(units, offsets, stream, max_bytes,
  slow)`` decode a batch: ``(records, bad_units)``; every unit not taken here (oversized, not
  the common shape, failing) goes to ``slow(unit, offset)``, the pipeline's per-unit path.
  ``decode_k8s_audit_units`` is the same for Kubernetes audit events (one ``Event`` per unit;
  ``EventList``s go to ``slow``), and ``decode_auto_units`` for ``auto`` batches: the units
  ``sniff`` names Envoy JSON or text or audit events are decoded here, any other unit goes to
  ``slow`` (which sniffs it). ``audit_time(v)`` is ``hubble.parse_time(v)``.
* ``resolve_records(records, resolver, static)`` is ``[resolver.resolve(r, static) ...]``.
* ``aggregate(agg, stream, records, first_offset)`` is ``WindowAggregator.add_batch`` for the
  same aggregator state; ``Acc`` is the compiled edge-window accumulator it creates (the
  attributes of ``detector.flows._Acc``; containers None until first needed), and
  ``materialise(w, ws, edges)`` turns a closed window's accumulators into ``EdgeWindow``s.
* ``iso_seconds(head)`` is the whole-second part of ``envoy.parse_ts`` (None where it raises),
  computed in C by the compiled time paths instead of a cache of seconds seen.
* ``forest_leaf_depths(...)`` walks ``multivariate.PackedForest``'s flat trees in C.
* ``template_path(path)`` is ``flows.template_path``; ``has_spans(records)`` the pipeline's
  check for span halves.
* Records made here hold only strings, numbers and None and are not tracked by the cyclic
  collector; nor are the accumulators and the keys made per record (no cycle is possible).
"""

cimport cython
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE
from libc.string cimport memchr, memcmp, memcpy
from libc.stdint cimport uint64_t
from libc.math cimport fmod, copysign

cdef extern from "Python.h":
    object PyUnicode_FromStringAndSize(const char *u, Py_ssize_t size)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    void* PyUnicode_DATA(object o)
    int PyUnicode_IS_COMPACT_ASCII(object o)
    ctypedef unsigned char Py_UCS1
    void PyObject_GC_UnTrack(object o)
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow_exception) except? -1.0

cdef extern from *:
    """
    #include <stdint.h>
    static PyObject *fp_alloc_tuple(PyTypeObject *tp, Py_ssize_t n) {
        return tp->tp_alloc(tp, n);
    }
    static void fp_set(PyObject *t, Py_ssize_t i, PyObject *o) {
        Py_INCREF(o);
        PyTuple_SET_ITEM(t, i, o);
    }
    static void fp_set_replace(PyObject *t, Py_ssize_t i, PyObject *o) {
        PyObject *old = PyTuple_GET_ITEM(t, i);
        Py_INCREF(o);
        PyTuple_SET_ITEM(t, i, o);
        Py_XDECREF(old);
    }
    static PyTypeObject *fp_type(PyObject *o) { return Py_TYPE(o); }
    #define FP_ONES 0x0101010101010101ULL
    #define FP_HIGH 0x8080808080808080ULL
    #define FP_ICACHE 2048
    #define FP_IMAX 96
    #define FP_MAXKEY 48
    """
    const uint64_t _ONES "FP_ONES"
    const uint64_t _HIGH "FP_HIGH"
    enum: _ICACHE "FP_ICACHE"
    enum: _IMAX "FP_IMAX"
    enum: _MAXKEY "FP_MAXKEY"
    object fp_alloc_tuple(PyTypeObject *tp, Py_ssize_t n)
    void fp_set(object t, Py_ssize_t i, object o)
    void fp_set_replace(object t, Py_ssize_t i, object o)
    PyTypeObject* Py_TYPE "fp_type"(object o)

from detector.decoders import envoy as _envoy
from detector.errors import DecodeError
from detector.records import FlowRecord
from detector.records import AUTH_FAILURE, CONNECTION, REQUEST, API_AUDIT, SPAN
from detector.records import OK, ERROR, DENIED, UNAUTHENTICATED, UNKNOWN

# ---------------------------------------------------------------------------------------------
# Shared state of the pure-Python decoder (the same dict objects: caches stay one cache)

cdef dict _sec_cache = _envoy._sec_cache
cdef dict _dest_cache = _envoy._dest_cache
cdef dict _spiffe_ns_cache = _envoy._spiffe_ns_cache
cdef dict _status_outcome = _envoy._STATUS_OUTCOME
cdef object _py_decode_json = _envoy.decode_json
cdef object _ts_of = _envoy._ts_of
cdef object _dest = _envoy._dest
cdef object _addr_port = _envoy._addr_port
cdef object _principal_ns = _envoy._principal_ns
cdef object _connection_outcome = _envoy._connection_outcome
cdef object _classify_auth = _envoy.classify_auth
cdef object _outcome_for_status = _envoy.outcome_for_status
cdef object _ip_of = _envoy.ip_of
cdef object _xff_peer = _envoy._xff_peer
cdef object _xfcc_uri = _envoy._xfcc_uri
cdef object _i = _envoy._i
cdef object _f = _envoy._f
cdef PyTypeObject* _record_type = <PyTypeObject*>FlowRecord
if len(FlowRecord._fields) != 25:  # the record layout this module was written for
    raise ImportError("detector._fastpath is out of date with FlowRecord; rebuild it")

# ---------------------------------------------------------------------------------------------
# Interned short strings: access-log values repeat (methods, clusters, hosts, principals), and a
# string made once has its hash cached, which every later dict lookup reuses.

cdef PyObject* _ic_obj[_ICACHE]
cdef uint64_t _ic_hash[_ICACHE]


cdef inline uint64_t _load8(const unsigned char* p) noexcept nogil:
    cdef uint64_t x
    memcpy(&x, p, 8)
    return x


cdef inline uint64_t _hash(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """A cheap 64-bit hash of ``p[:n]``, eight bytes at a time (cache slots, not security)."""
    cdef uint64_t h = <uint64_t>n * 0x9E3779B97F4A7C15ULL, x = 0
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        h = (h ^ _load8(p + i)) * 0xFF51AFD7ED558CCDULL
        h ^= h >> 29
        i += 8
    if i < n:
        memcpy(&x, p + i, n - i)
        h = (h ^ x) * 0xC4CEB9FE1A85EC53ULL
        h ^= h >> 29
    return h


cdef object _str(const unsigned char* p, Py_ssize_t n):
    """The ASCII bytes ``p[:n]`` as a str, interned in a small direct-mapped cache."""
    if n > _IMAX:
        return PyUnicode_FromStringAndSize(<const char*>p, n)
    cdef uint64_t h = _hash(p, n)
    cdef Py_ssize_t i = <Py_ssize_t>(h & (_ICACHE - 1))
    cdef PyObject* o = _ic_obj[i]
    if (
        o != NULL
        and _ic_hash[i] == h
        and PyUnicode_GET_LENGTH(<object>o) == n
        and memcmp(PyUnicode_DATA(<object>o), p, n) == 0
    ):
        return <object>o
    s = PyUnicode_FromStringAndSize(<const char*>p, n)
    Py_INCREF(s)
    Py_XDECREF(o)
    _ic_obj[i] = <PyObject*>s
    _ic_hash[i] = h
    return s


cdef inline object _untracked(object o):
    """``o`` (a container of strings and numbers only: no cycle possible) out of the cyclic
    collector's sight. CPython re-tracks a dict that is given a container, never these."""
    PyObject_GC_UnTrack(o)
    return o


# ---------------------------------------------------------------------------------------------
# The keys read. Every other key is skipped (its value only validated).

cdef enum:
    K_START_TIME = 0
    K_TIMESTAMP
    K_METHOD
    K_PATH
    K_PROTOCOL
    K_FLAGS
    K_DETAILS
    K_TERM
    K_UTFR
    K_REQUEST_ID
    K_AUTHORITY
    K_UCLUSTER
    K_DLOCAL
    K_DREMOTE
    K_SNI
    K_PRINCIPAL
    K_PEER_SAN
    K_XFF
    K_CODE
    K_BIN
    K_BOUT
    K_DUR
    K_LOCAL_SAN
    K_XFCC
    K_SRC_CLUSTER
    K_SRC_NS
    K_SRC_WL
    K_DST_CLUSTER
    K_DST_NS
    K_DST_SVC_NS
    K_DST_SVC_NAME
    K_NSLOTS
    K_RARE = 100  # a less common key the pure-Python decoder reads (``_extras``): hand over
    K_OTHER = 101

cdef enum:
    V_ABSENT = 0
    V_NULL
    V_STR
    V_INT
    V_OTHER  # true, false, a decimal: only ever skipped

_KEYS = [
    (b"start_time", K_START_TIME),
    (b"timestamp", K_TIMESTAMP),
    (b"method", K_METHOD),
    (b"path", K_PATH),
    (b"protocol", K_PROTOCOL),
    (b"response_flags", K_FLAGS),
    (b"response_code_details", K_DETAILS),
    (b"connection_termination_details", K_TERM),
    (b"upstream_transport_failure_reason", K_UTFR),
    (b"request_id", K_REQUEST_ID),
    (b"authority", K_AUTHORITY),
    (b"upstream_cluster", K_UCLUSTER),
    (b"downstream_local_address", K_DLOCAL),
    (b"downstream_remote_address", K_DREMOTE),
    (b"requested_server_name", K_SNI),
    (b"source_principal", K_PRINCIPAL),
    (b"downstream_peer_uri_san", K_PEER_SAN),
    (b"x_forwarded_for", K_XFF),
    (b"response_code", K_CODE),
    (b"bytes_received", K_BIN),
    (b"bytes_sent", K_BOUT),
    (b"duration", K_DUR),
    (b"upstream_local_uri_san", K_LOCAL_SAN),
    (b"x_forwarded_client_cert", K_XFCC),
    (b"source_cluster", K_SRC_CLUSTER),
    (b"source_namespace", K_SRC_NS),
    (b"source_workload", K_SRC_WL),
    (b"destination_cluster", K_DST_CLUSTER),
    (b"destination_namespace", K_DST_NS),
    (b"destination_service_namespace", K_DST_SVC_NS),
    (b"destination_service_name", K_DST_SVC_NAME),
]
# ``_extras`` keys beyond the plain labels above; kept equal to the decoder's by a test.
RARE_KEYS = frozenset(_envoy._EXTRA_KEYS - _envoy._SIMPLE_EXTRA_KEYS)
_KEYS.extend((k.encode(), K_RARE) for k in sorted(RARE_KEYS))
KNOWN_KEYS = frozenset(k.decode() for k, _ in _KEYS)

cdef int _nkeys = len(_KEYS)
cdef const char* _key_ptr[64]
cdef Py_ssize_t _key_len[64]
cdef int _key_slot[64]
cdef uint64_t _key_head[64]  # the first (up to) 8 bytes, zero-padded: most keys differ there
cdef int _by_len_start[_MAXKEY + 1]
cdef int _by_len_end[_MAXKEY + 1]
_KEYS.sort(key=lambda kv: len(kv[0]))
_keep_alive = [k for k, _ in _KEYS]


cdef inline uint64_t _head8(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t x = 0
    memcpy(&x, p, n if n < 8 else 8)
    return x


cdef void _init_keys():
    cdef int j, n
    for n in range(_MAXKEY + 1):
        _by_len_start[n] = 0
        _by_len_end[n] = 0
    for j in range(_nkeys):
        k = _keep_alive[j]
        _key_ptr[j] = PyBytes_AS_STRING(k)
        _key_len[j] = PyBytes_GET_SIZE(k)
        _key_slot[j] = _KEYS[j][1]
        _key_head[j] = _head8(<const unsigned char*>_key_ptr[j], _key_len[j])
        n = <int>_key_len[j]
        if _by_len_end[n] == 0:
            _by_len_start[n] = j
        _by_len_end[n] = j + 1


_init_keys()


cdef inline int _slot_of(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    if n > _MAXKEY:
        return K_OTHER
    cdef int j
    cdef uint64_t head = _head8(p, n)
    for j in range(_by_len_start[n], _by_len_end[n]):
        if _key_head[j] == head and (n <= 8 or memcmp(_key_ptr[j] + 8, p + 8, n - 8) == 0):
            return _key_slot[j]
    return K_OTHER


# Byte classes inside a JSON string: 0 plain, 1 closing quote, 2 hand over (escape, control
# character, non-ASCII: the pure-Python decoder decides about those).
cdef unsigned char _strclass[256]


cdef void _init_classes():
    cdef int c
    for c in range(256):
        _strclass[c] = 2 if (c < 0x20 or c >= 0x80 or c == 0x5C) else 0
    _strclass[0x22] = 1


_init_classes()




cdef inline bint _plain8(const unsigned char* p) noexcept nogil:
    """True when none of the 8 bytes at ``p`` is a quote, a backslash, a control character or
    non-ASCII (word-at-a-time test; a false alarm only sends the caller byte by byte)."""
    cdef uint64_t x = _load8(p)
    cdef uint64_t q = x ^ (_ONES * 0x22)
    cdef uint64_t b = x ^ (_ONES * 0x5C)
    return (
        ((q - _ONES) & ~q) | ((b - _ONES) & ~b) | ((x - _ONES * 0x20) & ~x) | x
    ) & _HIGH == 0


cdef inline bint _ws(unsigned char c) noexcept nogil:
    return c == 0x20 or c == 0x0A or c == 0x0D or c == 0x09


cdef struct Scan:
    int kind[K_NSLOTS]
    Py_ssize_t start[K_NSLOTS]
    Py_ssize_t length[K_NSLOTS]
    long long ival[K_NSLOTS]


cdef inline void memset_scan(Scan* s) noexcept nogil:
    cdef int j
    for j in range(K_NSLOTS):
        s.kind[j] = V_ABSENT


cdef bint _scan(const unsigned char* p, Py_ssize_t n, Scan* s) noexcept nogil:
    """Fill ``s`` from one flat JSON object; False when the pure-Python decoder must decide."""
    cdef Py_ssize_t i = 0, ks, kn, vs, digits
    cdef int slot, kind
    cdef unsigned char c, cls
    cdef long long v
    cdef bint neg
    memset_scan(s)
    while i < n and _ws(p[i]):
        i += 1
    if i >= n or p[i] != 0x7B:  # {
        return False
    i += 1
    while i < n and _ws(p[i]):
        i += 1
    if i < n and p[i] == 0x7D:  # {}: no start_time, let the decoder say so
        return False
    while True:
        # key
        if i >= n or p[i] != 0x22:
            return False
        i += 1
        ks = i
        while True:
            while i + 8 <= n and _plain8(p + i):
                i += 8
            if i >= n:
                return False
            cls = _strclass[p[i]]
            if cls == 0:
                i += 1
            elif cls == 1:
                break
            else:
                return False
        kn = i - ks
        i += 1
        slot = _slot_of(p + ks, kn)
        if slot == K_RARE:
            return False
        while i < n and _ws(p[i]):
            i += 1
        if i >= n or p[i] != 0x3A:  # :
            return False
        i += 1
        while i < n and _ws(p[i]):
            i += 1
        if i >= n:
            return False
        # value
        c = p[i]
        if c == 0x22:
            i += 1
            vs = i
            while True:
                while i + 8 <= n and _plain8(p + i):
                    i += 8
                if i >= n:
                    return False
                cls = _strclass[p[i]]
                if cls == 0:
                    i += 1
                elif cls == 1:
                    break
                else:
                    return False
            if slot < K_NSLOTS:
                s.kind[slot] = V_STR
                s.start[slot] = vs
                s.length[slot] = i - vs
            i += 1
        elif c == 0x6E:  # null
            if i + 4 > n or memcmp(p + i, b"null", 4) != 0:
                return False
            i += 4
            if slot < K_NSLOTS:
                s.kind[slot] = V_NULL
        elif c == 0x74:  # true
            if i + 4 > n or memcmp(p + i, b"true", 4) != 0:
                return False
            i += 4
            if slot < K_NSLOTS:
                s.kind[slot] = V_OTHER
        elif c == 0x66:  # false
            if i + 5 > n or memcmp(p + i, b"false", 5) != 0:
                return False
            i += 5
            if slot < K_NSLOTS:
                s.kind[slot] = V_OTHER
        elif c == 0x2D or (0x30 <= c <= 0x39):
            neg = c == 0x2D
            if neg:
                i += 1
            if i >= n or not (0x30 <= p[i] <= 0x39):
                return False
            digits = 0
            v = 0
            if p[i] == 0x30:
                i += 1
                digits = 1
            else:
                while i < n and 0x30 <= p[i] <= 0x39:
                    v = v * 10 + (p[i] - 0x30)
                    digits += 1
                    i += 1
                    if digits > 18:
                        return False
            kind = V_INT
            if i < n and p[i] == 0x2E:  # a decimal: skipped keys only
                i += 1
                if i >= n or not (0x30 <= p[i] <= 0x39):
                    return False
                while i < n and 0x30 <= p[i] <= 0x39:
                    digits += 1
                    i += 1
                    if digits > 18:
                        return False
                kind = V_OTHER
            if i < n and (p[i] == 0x65 or p[i] == 0x45):  # exponent
                return False
            if slot < K_NSLOTS:
                s.kind[slot] = kind
                s.ival[slot] = -v if neg else v
        else:
            return False  # nested object or array, or not JSON
        while i < n and _ws(p[i]):
            i += 1
        if i >= n:
            return False
        if p[i] == 0x2C:  # ,
            i += 1
            while i < n and _ws(p[i]):
                i += 1
            continue
        if p[i] == 0x7D:  # }
            i += 1
            break
        return False
    while i < n and _ws(p[i]):
        i += 1
    return i == n




class _Handover(Exception):
    """The pure-Python decoder must decide about this unit."""


cdef inline object _sval(const unsigned char* p, Scan* s, int slot):
    """A string-valued key as the decoder reads it: None for absent, null, ``-`` and ``""``."""
    cdef int k = s.kind[slot]
    cdef Py_ssize_t n
    if k == V_STR:
        n = s.length[slot]
        if n == 0 or (n == 1 and p[s.start[slot]] == 0x2D):
            return None
        return _str(p + s.start[slot], n)
    if k == V_ABSENT or k == V_NULL:
        return None
    raise _Handover()  # a number or boolean where a string is read: ``_s`` decides


cdef inline object _ival(const unsigned char* p, Scan* s, int slot):
    """An integer-valued key as ``from_mapping`` reads it (``_i`` for the unusual encodings)."""
    cdef int k = s.kind[slot]
    if k == V_INT:
        if s.ival[slot] >= 0:
            return s.ival[slot]
        return None
    if k == V_ABSENT or k == V_NULL:
        return None
    if k == V_STR:
        return _i(PyUnicode_FromStringAndSize(<const char*>p + s.start[slot], s.length[slot]))
    raise _Handover()


cdef double _POW10[16]
_POW10[0] = 1.0
for _k in range(1, 16):
    _POW10[_k] = _POW10[_k - 1] * 10.0


cdef inline int _d2(const unsigned char* t) noexcept nogil:
    """Two ASCII digits as a number, or -1."""
    if 0x30 <= t[0] <= 0x39 and 0x30 <= t[1] <= 0x39:
        return (t[0] - 0x30) * 10 + (t[1] - 0x30)
    return -1


cdef bint _iso_seconds(const unsigned char* t, double* out) noexcept nogil:
    """``YYYY-MM-DD[Tt ]HH:MM:SS`` (the first 19 bytes of ``t``) -> epoch seconds (UTC), with the
    checks and result of ``envoy.parse_ts``: days past a month's end and second 60 roll over as
    ``calendar.timegm`` rolls them. False when it is not such a time (the caller hands over)."""
    cdef int hi = _d2(t), lo = _d2(t + 2), mo = _d2(t + 5), da = _d2(t + 8)
    cdef int h = _d2(t + 11), mi = _d2(t + 14), se = _d2(t + 17)
    cdef long long y, era, yoe, doy, doe, m
    if (
        hi < 0 or lo < 0 or t[4] != 0x2D or t[7] != 0x2D or t[13] != 0x3A or t[16] != 0x3A
        or not (t[10] == 0x54 or t[10] == 0x74 or t[10] == 0x20)
        or not (1 <= mo <= 12 and 1 <= da <= 31 and 0 <= h <= 23 and 0 <= mi <= 59 and 0 <= se <= 60)
    ):
        return False
    y = hi * 100 + lo
    if y < 1:
        return False  # timegm refuses year 0
    # days from 1970-01-01 to the month's first day (H. Hinnant's days_from_civil), then the
    # day of the month added as timegm adds it (date(y, m, 1).toordinal() + day - 1)
    m = mo
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    out[0] = <double>(
        ((era * 146097 + doe - 719468) + da - 1) * 86400 + h * 3600 + mi * 60 + se
    )
    return True


def iso_seconds(bytes head):
    """``_iso_seconds`` for tests: epoch seconds of a 19-byte time head, or None."""
    cdef double out
    if len(head) < 19 or not _iso_seconds(<const unsigned char*>PyBytes_AS_STRING(head), &out):
        return None
    return out


cdef object _ts_fast(const unsigned char* p, Scan* s, int slot):
    """``start_time`` as ``from_mapping`` reads it: the cached-second fast path, else ``_ts_of``."""
    cdef int k = s.kind[slot]
    cdef Py_ssize_t n = s.length[slot], j
    cdef const unsigned char* t = p + s.start[slot]
    cdef char buf[40]
    cdef double frac
    if k != V_STR:
        raise _Handover()  # epoch numbers: rare, the decoder reads them
    cdef double base
    if n >= 22 and n - 21 <= 36 and t[19] == 0x2E and t[n - 1] == 0x5A:  # ".", "Z"
        if _iso_seconds(t, &base):
            for j in range(20, n - 1):
                if not (0x30 <= t[j] <= 0x39):
                    break
            else:
                if n - 21 <= 15:
                    # digits / 10**k of two exact doubles: IEEE division rounds once, exactly
                    # as float("0." + digits) does
                    frac = 0.0
                    for j in range(20, n - 1):
                        frac = frac * 10.0 + (t[j] - 0x30)
                    return base + frac / _POW10[n - 21]
                buf[0] = 0x30  # "0." + digits, read the way float() reads it
                buf[1] = 0x2E
                memcpy(buf + 2, t + 20, n - 21)
                buf[n - 19] = 0
                return base + PyOS_string_to_double(buf, NULL, NULL)
    return _ts_of(PyUnicode_FromStringAndSize(<const char*>t, n))


cdef object _spiffe_ns(str principal):
    """``envoy.spiffe_namespace``: ``spiffe://<td>/ns/<ns>/...`` -> ``<ns>``, else None."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(principal), i, a, b
    cdef const unsigned char* d
    if not PyUnicode_IS_COMPACT_ASCII(principal):
        return _principal_ns(principal)
    d = <const unsigned char*>PyUnicode_DATA(principal)
    if n < 9 or memcmp(d, b"spiffe://", 9) != 0:
        return None
    i = 9
    while i < n and d[i] != 0x2F:  # the trust domain
        i += 1
    if i + 3 >= n or d[i + 1] != 0x6E or d[i + 2] != 0x73 or d[i + 3] != 0x2F:  # "/ns/"
        return None
    a = i + 4
    b = a
    while b < n and d[b] != 0x2F:
        b += 1
    return _str(d + a, b - a) if b > a else None


cdef object _make_record(
    object ts, object kind, object principal, object src_cluster, object src_ns,
    object src_workload, object src_ip, object dst_cluster, object dst_ns, object svc,
    object port, object method, object route, object status, object outcome, object b_in,
    object b_out, object dur, object request_id, object detail, object source, object offset,
):
    rec = fp_alloc_tuple(_record_type, 25)
    cdef object none = None
    fp_set(rec, 0, ts)
    fp_set(rec, 1, kind)
    fp_set(rec, 2, principal)
    fp_set(rec, 3, src_cluster)
    fp_set(rec, 4, src_ns)
    fp_set(rec, 5, src_workload)
    fp_set(rec, 6, src_ip)
    fp_set(rec, 7, dst_cluster)
    fp_set(rec, 8, dst_ns)
    fp_set(rec, 9, svc)
    fp_set(rec, 10, port)
    fp_set(rec, 11, method)
    fp_set(rec, 12, route)
    fp_set(rec, 13, status)
    fp_set(rec, 14, outcome)
    fp_set(rec, 15, b_in)
    fp_set(rec, 16, b_out)
    fp_set(rec, 17, dur)
    fp_set(rec, 18, none)
    fp_set(rec, 19, none)
    fp_set(rec, 20, none)
    fp_set(rec, 21, request_id)
    fp_set(rec, 22, detail)
    fp_set(rec, 23, source)
    fp_set(rec, 24, offset)
    # Only strings, numbers and None inside: the record cannot be part of a cycle, so the cyclic
    # collector need not visit it again and again while batches are in flight.
    PyObject_GC_UnTrack(rec)
    return rec


def decode_envoy_json(data, source=None, offset=None):
    """Exactly ``envoy.decode_json`` (see the module docstring)."""
    if not PyBytes_CheckExact(data):
        return _py_decode_json(data, source, offset)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Scan s
    if not _scan(p, n, &s):
        return _py_decode_json(data, source, offset)
    try:
        return [_record_of(p, &s, source, offset)]
    except _Handover:
        return _py_decode_json(data, source, offset)


cdef object _record_of(const unsigned char* p, Scan* s, object source, object offset):
    cdef int tslot = K_START_TIME
    if s.kind[K_START_TIME] == V_ABSENT or s.kind[K_START_TIME] == V_NULL:
        tslot = K_TIMESTAMP
        if s.kind[K_TIMESTAMP] == V_ABSENT or s.kind[K_TIMESTAMP] == V_NULL:
            raise _Handover()  # not an access log: the decoder says so
    return _record_from(_ts_fast(p, s, tslot), p, s, source, offset)


cdef object _record_from(
    object ts, const unsigned char* p, Scan* s, object source, object offset
):
    """``from_mapping`` + ``_build`` on what the scan found (``ts`` already read)."""
    cdef Py_ssize_t j, n, colons, first_colon
    cdef const unsigned char* q
    method = _sval(p, s, K_METHOD)
    protocol = _sval(p, s, K_PROTOCOL)
    flags = _sval(p, s, K_FLAGS)
    details = _sval(p, s, K_DETAILS)
    term = _sval(p, s, K_TERM)
    utfr = _sval(p, s, K_UTFR)
    authority = _sval(p, s, K_AUTHORITY)
    upstream_cluster = _sval(p, s, K_UCLUSTER)
    sni = _sval(p, s, K_SNI)
    principal = _sval(p, s, K_PRINCIPAL)
    peer_san = _sval(p, s, K_PEER_SAN)
    # Values read only in some cases are checked for type here, made later if needed.
    if s.kind[K_DLOCAL] > V_STR or s.kind[K_DREMOTE] > V_STR or s.kind[K_XFF] > V_STR:
        raise _Handover()
    if s.kind[K_PATH] > V_STR or s.kind[K_REQUEST_ID] > V_STR:
        raise _Handover()
    if principal is None:
        principal = peer_san
        if principal is None:
            if (
                s.kind[K_LOCAL_SAN] != V_ABSENT
                and upstream_cluster is not None
                and upstream_cluster.startswith("outbound|")
            ):
                principal = _sval(p, s, K_LOCAL_SAN)
            if principal is None and s.kind[K_XFCC] != V_ABSENT:
                principal = _xfcc_uri(_sval(p, s, K_XFCC))
    status = _ival(p, s, K_CODE)
    b_in = _ival(p, s, K_BIN)
    b_out = _ival(p, s, K_BOUT)
    k = s.kind[K_DUR]
    if k == V_INT:
        dur = <double>s.ival[K_DUR]
    elif k == V_ABSENT or k == V_NULL:
        dur = None
    elif k == V_STR:
        dur = _f(PyUnicode_FromStringAndSize(<const char*>p + s.start[K_DUR], s.length[K_DUR]))
    else:
        raise _Handover()
    # -- _build
    key = (upstream_cluster, sni, authority)
    hit = _dest_cache.get(key)
    if hit is None:
        hit = _dest(upstream_cluster, sni, authority)
    svc = (<tuple>hit)[0]
    ns = (<tuple>hit)[1]
    port = (<tuple>hit)[2]
    if port is None:
        port = _addr_port(_sval(p, s, K_DLOCAL))
    detail = details if details is not None else term
    if method is None and protocol is None:
        outcome = _connection_outcome(flags, detail, utfr)
        kind = CONNECTION
    else:
        if flags is None and (detail is None or detail == "via_upstream"):
            outcome = _status_outcome.get(status)
            if outcome is None:
                outcome = _outcome_for_status(status)
        else:
            outcome = _classify_auth(status, flags, detail, utfr)
        kind = REQUEST
    if outcome == DENIED or outcome == UNAUTHENTICATED:
        kind = AUTH_FAILURE
    # src_ip: the IP of downstream_remote_address, else the nearest X-Forwarded-For hop
    if s.kind[K_DREMOTE] == V_STR and s.length[K_DREMOTE] > 0 and not (
        s.length[K_DREMOTE] == 1 and p[s.start[K_DREMOTE]] == 0x2D
    ):
        q = p + s.start[K_DREMOTE]
        n = s.length[K_DREMOTE]
        colons = 0
        first_colon = -1
        for j in range(n):
            if q[j] == 0x3A:
                colons += 1
                if first_colon < 0:
                    first_colon = j
        if colons == 1 and q[0] != 0x5B:  # "a.b.c.d:port"
            src_ip = (
                PyUnicode_FromStringAndSize(<const char*>q, first_colon)
                if first_colon > 0
                else None
            )
        else:
            src_ip = _ip_of(_str(q, n))
    else:
        src_ip = _xff_peer(_sval(p, s, K_XFF))
    # route: the path up to its query string
    route = None
    if s.kind[K_PATH] == V_STR:
        n = s.length[K_PATH]
        q = p + s.start[K_PATH]
        if n > 0 and not (n == 1 and q[0] == 0x2D):
            for j in range(n):
                if q[j] == 0x3F:  # ?
                    n = j
                    break
            if n > 0:
                route = PyUnicode_FromStringAndSize(<const char*>q, n)
    if principal is not None:
        src_ns = _spiffe_ns(principal)
    else:
        src_ns = None
    request_id = None
    if s.kind[K_REQUEST_ID] == V_STR:
        n = s.length[K_REQUEST_ID]
        if n > 0 and not (n == 1 and p[s.start[K_REQUEST_ID]] == 0x2D):
            request_id = PyUnicode_FromStringAndSize(
                <const char*>p + s.start[K_REQUEST_ID], n
            )
    # plain label keys, in ``_EXTRA_FIELDS`` order: the last one wins
    src_cluster = None
    src_workload = None
    dst_cluster = None
    if s.kind[K_SRC_CLUSTER] != V_ABSENT:
        src_cluster = _sval(p, s, K_SRC_CLUSTER)
    if s.kind[K_SRC_NS] != V_ABSENT:
        v = _sval(p, s, K_SRC_NS)
        if v is not None:
            src_ns = v
    if s.kind[K_SRC_WL] != V_ABSENT:
        src_workload = _sval(p, s, K_SRC_WL)
    if s.kind[K_DST_CLUSTER] != V_ABSENT:
        dst_cluster = _sval(p, s, K_DST_CLUSTER)
    if s.kind[K_DST_NS] != V_ABSENT:
        v = _sval(p, s, K_DST_NS)
        if v is not None:
            ns = v
    if s.kind[K_DST_SVC_NS] != V_ABSENT:
        v = _sval(p, s, K_DST_SVC_NS)
        if v is not None:
            ns = v
    if s.kind[K_DST_SVC_NAME] != V_ABSENT:
        v = _sval(p, s, K_DST_SVC_NAME)
        if v is not None:
            svc = v
    return _make_record(
        ts,
        kind,
        principal,
        src_cluster,
        src_ns,
        src_workload,
        src_ip,
        dst_cluster,
        ns,
        svc,
        port,
        method,
        route,
        status,
        outcome,
        b_in if b_in else 0,
        b_out if b_out else 0,
        dur,
        request_id,
        detail if detail is not None else flags,
        source,
        offset,
    )



cdef bint _json_unit(const unsigned char* p, Py_ssize_t size, stream, off, list out):
    """One Envoy JSON unit of the common shape into ``out``; False: the per-unit path's."""
    cdef Scan s
    if not _scan(p, size, &s):
        return False
    try:
        out.append(_record_of(p, &s, stream, off))
        return True
    except Exception:  # _Handover too: the per-unit path decides (and dead-letters the unit)
        return False


cdef enum:
    _UNITS_JSON = 0
    _UNITS_TEXT = 1
    _UNITS_AUDIT = 2
    _UNITS_AUTO = 3


cdef tuple _decode_units(
    list units, list offsets, stream, Py_ssize_t max_bytes, slow, int kind
):
    """The batch loop of every ``decode_*_units``: each unit the compiled decoder of ``kind``
    takes becomes its record here, any other goes to ``slow(unit, offset)``."""
    cdef list out = []
    cdef Py_ssize_t bad = 0, i, size, n = min(len(units), len(offsets))
    cdef const unsigned char* p
    cdef bint done
    for i in range(n):
        unit = units[i]
        off = offsets[i]
        if PyBytes_CheckExact(unit) and PyBytes_GET_SIZE(unit) <= max_bytes:
            p = <const unsigned char*>PyBytes_AS_STRING(unit)
            size = PyBytes_GET_SIZE(unit)
            if kind == _UNITS_JSON:
                done = _json_unit(p, size, stream, off, out)
            elif kind == _UNITS_TEXT:
                done = _text_unit(p, size, stream, off, out)
            elif kind == _UNITS_AUDIT:
                done = _audit_unit(unit, stream, off, out)
            else:
                done = _auto_unit(unit, p, size, stream, off, out)
            if done:
                continue
        recs = slow(unit, off)
        if recs is None:
            bad += 1
        else:
            out.extend(recs)
    return out, bad


def decode_envoy_json_units(list units, list offsets, stream, Py_ssize_t max_bytes, slow):
    """Decode a batch of Envoy/Istio JSON units: ``(records, bad_units)``.

    A unit the compiled decoder takes (bytes, at most ``max_bytes``, the common shape) becomes
    its record here; any other unit goes to ``slow(unit, offset)``, the pipeline's own per-unit
    path (full decoder, dead letters), which returns its records or None for a bad unit.
    """
    return _decode_units(units, offsets, stream, max_bytes, slow, _UNITS_JSON)


def resolve_records(list records, resolver, static):
    """``[resolver.resolve(r, static) for r in records]`` (``flows.Resolver``), compiled:
    records naming both clusters and the destination namespace are kept as they are; the
    trust-domain and address lookups are asked once per distinct principal and address in
    the batch."""
    cdef list out = []
    cdef tuple t
    cdef dict by_principal = {}, by_ip = {}
    cdef object cfp = resolver.cluster_for_principal
    cdef object cfi = resolver.cluster_for_ip
    # What the stream's static attributes give, the same for every record of the batch.
    dst_default = static.dst_cluster or static.cluster or UNKNOWN
    src_static = static.src_cluster
    ns_static = static.namespace
    cdef Py_ssize_t j
    for r in records:
        if not PyTuple_Check(r) or PyTuple_GET_SIZE(r) != 25:
            raise TypeError("resolve_records() takes FlowRecords")
        t = <tuple>r
        src_cluster = t[3]
        dst_cluster = t[7]
        dst_ns = t[8]
        if src_cluster is not None and dst_cluster is not None and dst_ns is not None:
            out.append(r)
            continue
        if dst_cluster is None:
            dst_cluster = dst_default
        if src_cluster is None:
            src_cluster = src_static
            if not src_cluster:
                principal = t[2]
                if principal in by_principal:
                    src_cluster = by_principal[principal]
                else:
                    src_cluster = by_principal[principal] = cfp(principal)
            if not src_cluster:
                ip = t[6]
                if ip in by_ip:
                    src_cluster = by_ip[ip]
                else:
                    src_cluster = by_ip[ip] = cfi(ip)
            if not src_cluster:
                # Kubernetes users and service-account tokens belong to the cluster whose API
                # server they call: an audit event's caller is in the apiserver's cluster.
                src_cluster = dst_cluster if t[1] == API_AUDIT and dst_cluster != UNKNOWN else None
            if not src_cluster:
                src_cluster = UNKNOWN
        rec = fp_alloc_tuple(Py_TYPE(r), 25)
        for j in range(25):
            fp_set(rec, j, t[j])
        fp_set_replace(rec, 3, src_cluster)
        fp_set_replace(rec, 7, dst_cluster)
        fp_set_replace(rec, 8, dst_ns or ns_static)
        PyObject_GC_UnTrack(rec)
        out.append(rec)
    return out

# ---------------------------------------------------------------------------------------------
# Text access logs: the Istio >= 1.9 layout (``envoy._TEXT_LAYOUTS[0]``), the one tried first.
# The line is read into the same slots as a JSON object; a line this does not take (another
# layout, non-ASCII or control bytes, a user agent the lazy match would have to stretch) goes to
# ``envoy.decode_text`` whole.

cdef object _py_decode_text = _envoy.decode_text
cdef object _parse_ts = _envoy.parse_ts
cdef object _DecodeError = DecodeError


cdef inline Py_ssize_t _until(
    const unsigned char* p, Py_ssize_t i, Py_ssize_t n, unsigned char stop
) noexcept nogil:
    """Index of the first ``stop`` at or after ``i`` (``n`` if none)."""
    while i < n and p[i] != stop:
        i += 1
    return i


cdef inline void _put(Scan* s, int slot, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    s.kind[slot] = V_STR
    s.start[slot] = start
    s.length[slot] = end - start


cdef inline bint _put_num(
    const unsigned char* p, Scan* s, int slot, Py_ssize_t start, Py_ssize_t end
) noexcept nogil:
    """``\\d+|-`` read as the text decoder's ``_ni``: digits (fewer than 19) are the int, the
    rest None. False when the field is neither (the layout does not match)."""
    cdef Py_ssize_t j
    cdef long long v = 0
    if end - start == 1 and p[start] == 0x2D:
        s.kind[slot] = V_NULL
        return True
    if end == start:
        return False
    for j in range(start, end):
        if not (0x30 <= p[j] <= 0x39):
            return False
        if end - start < 19:
            v = v * 10 + (p[j] - 0x30)
    if end - start < 19:
        s.kind[slot] = V_INT
        s.ival[slot] = v
    else:
        s.kind[slot] = V_NULL
    return True


cdef inline Py_ssize_t _word(
    const unsigned char* p, Py_ssize_t i, Py_ssize_t n, bint no_quote
) noexcept nogil:
    """End of the run of non-spaces at ``i`` (``[^\\s"]+`` when ``no_quote``); -1 if empty
    or a quote stops it."""
    cdef Py_ssize_t j = i
    while j < n and p[j] != 0x20:
        if no_quote and p[j] == 0x22:
            return -1
        j += 1
    return j if j > i else -1


cdef bint _scan_text(const unsigned char* p, Py_ssize_t n, Scan* s) noexcept nogil:
    """Fill ``s`` from an Istio >= 1.9 text line exactly as the layout's regex reads it; False
    when the pure-Python decoder must decide."""
    cdef Py_ssize_t i, j, e, k, last_space, first_space
    cdef int f
    cdef int word_slots[3]
    memset_scan(s)
    for j in range(n):
        if not (0x20 <= p[j] <= 0x7E):
            return False  # (trailing CR/LF are cut by the caller) the regex's \s and . differ
    if n < 2 or p[0] != 0x5B:  # [
        return False
    e = _until(p, 1, n, 0x5D)  # ]
    if e == 1 or e + 2 >= n or p[e + 1] != 0x20 or p[e + 2] != 0x22:
        return False
    _put(s, K_START_TIME, 1, e)
    i = e + 3
    e = _until(p, i, n, 0x22)  # the request: "METHOD PATH PROTOCOL"
    if e + 1 >= n or p[e + 1] != 0x20:
        return False
    # "%REQ(:METHOD)% %PATH% %PROTOCOL%": "- - -" for TCP, "- - HTTP/1.1" for codec errors;
    # more than three words: the middle ones are the path; fewer: the missing ones are "-".
    first_space = -1
    last_space = -1
    for j in range(i, e):
        if p[j] == 0x20:
            if first_space < 0:
                first_space = j
            last_space = j
    if first_space < 0:
        _put(s, K_METHOD, i, e)
    elif first_space == last_space:
        _put(s, K_METHOD, i, first_space)
        _put(s, K_PATH, first_space + 1, e)
    else:
        _put(s, K_METHOD, i, first_space)
        _put(s, K_PATH, first_space + 1, last_space)
        _put(s, K_PROTOCOL, last_space + 1, e)
    i = e + 2
    e = _word(p, i, n, False)  # status: \d+|-
    if e < 0 or e >= n or not _put_num(p, s, K_CODE, i, e):
        return False
    i = e + 1
    word_slots[0] = K_FLAGS
    word_slots[1] = K_DETAILS
    word_slots[2] = K_TERM
    for f in range(3):  # flags, details, termination details: [^\s"]+
        e = _word(p, i, n, True)
        if e < 0 or e >= n:
            return False
        _put(s, word_slots[f], i, e)
        i = e + 1
    if i >= n or p[i] != 0x22:
        return False
    e = _until(p, i + 1, n, 0x22)  # "upstream transport failure reason"
    if e + 1 >= n or p[e + 1] != 0x20:
        return False
    _put(s, K_UTFR, i + 1, e)
    i = e + 2
    word_slots[0] = K_BIN
    word_slots[1] = K_BOUT
    word_slots[2] = K_DUR
    for f in range(3):  # bytes received, bytes sent, duration: \d+|-
        e = _word(p, i, n, False)
        if e < 0 or e >= n or not _put_num(p, s, word_slots[f], i, e):
            return False
        i = e + 1
    e = _word(p, i, n, False)  # upstream service time: \S+
    if e < 0 or e + 1 >= n or p[e + 1] != 0x22:
        return False
    i = e + 2
    e = _until(p, i, n, 0x22)  # "x-forwarded-for"
    if e + 2 >= n or p[e + 1] != 0x20 or p[e + 2] != 0x22:
        return False
    _put(s, K_XFF, i, e)
    i = e + 3
    # The user agent is matched lazily: it ends at the first '" "' after which the rest
    # matches. Only that first candidate is tried; if the rest does not match, hand over.
    e = i
    while e + 2 < n and not (p[e] == 0x22 and p[e + 1] == 0x20 and p[e + 2] == 0x22):
        e += 1
    if e + 2 >= n:
        return False
    i = e + 3
    word_slots[0] = K_REQUEST_ID
    word_slots[1] = K_AUTHORITY
    word_slots[2] = K_OTHER  # upstream host
    for f in range(3):  # "request id" "authority" "upstream host"
        e = _until(p, i, n, 0x22)
        if e >= n:
            return False
        if word_slots[f] != K_OTHER:
            _put(s, word_slots[f], i, e)
        if f < 2:
            if e + 2 >= n or p[e + 1] != 0x20 or p[e + 2] != 0x22:
                return False
            i = e + 3
        else:
            if e + 1 >= n or p[e + 1] != 0x20:
                return False
            i = e + 2
    # upstream cluster, upstream local, downstream local, downstream remote, SNI, [route]
    for f in range(5):
        e = _word(p, i, n, False)
        if e < 0:
            return False
        if f == 0:
            _put(s, K_UCLUSTER, i, e)
        elif f == 2:
            _put(s, K_DLOCAL, i, e)
        elif f == 3:
            _put(s, K_DREMOTE, i, e)
        elif f == 4:
            _put(s, K_SNI, i, e)
        i = e
        if f < 4:
            if i >= n or p[i] != 0x20:
                return False
            i += 1
    if i + 1 < n and p[i] == 0x20 and p[i + 1] != 0x20:  # the route name
        e = _word(p, i + 1, n, False)
        i = e
    for j in range(i, n):  # \s*$
        if p[j] != 0x20:
            return False
    return True


cdef object _text_ts(const unsigned char* p, Scan* s):
    """The text decoder's time: the cached-second fast path, else ``parse_ts``; a time it
    cannot read is ``bad_timestamp`` (no epoch numbers in text lines)."""
    cdef Py_ssize_t n = s.length[K_START_TIME], j
    cdef const unsigned char* t = p + s.start[K_START_TIME]
    cdef double frac, base
    if n >= 22 and n - 21 <= 15 and t[19] == 0x2E and t[n - 1] == 0x5A:
        if _iso_seconds(t, &base):
            frac = 0.0
            for j in range(20, n - 1):
                if not (0x30 <= t[j] <= 0x39):
                    break
                frac = frac * 10.0 + (t[j] - 0x30)
            else:
                return base + frac / _POW10[n - 21]
    try:
        return _parse_ts(PyUnicode_FromStringAndSize(<const char*>t, n))
    except ValueError:
        raise _DecodeError("bad_timestamp") from None


cdef inline Py_ssize_t _text_len(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Length without trailing CR/LF (``rstrip("\\r\\n")``)."""
    while n > 0 and (p[n - 1] == 0x0A or p[n - 1] == 0x0D):
        n -= 1
    return n


def decode_envoy_text(data, source=None, offset=None):
    """Exactly ``envoy.decode_text`` (see the text section above)."""
    if not PyBytes_CheckExact(data):
        return _py_decode_text(data, source, offset)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = _text_len(p, PyBytes_GET_SIZE(data))
    cdef Scan s
    if not _scan_text(p, n, &s):
        return _py_decode_text(data, source, offset)
    try:
        return [_record_from(_text_ts(p, &s), p, &s, source, offset)]
    except _Handover:
        return _py_decode_text(data, source, offset)


cdef bint _text_unit(const unsigned char* p, Py_ssize_t size, stream, off, list out):
    """One Envoy text line of the common layout into ``out``; False: the per-unit path's."""
    cdef Scan s
    if not _scan_text(p, _text_len(p, size), &s):
        return False
    try:
        out.append(_record_from(_text_ts(p, &s), p, &s, stream, off))
        return True
    except Exception:  # the per-unit path raises it again and dead-letters the unit
        return False


def decode_envoy_text_units(list units, list offsets, stream, Py_ssize_t max_bytes, slow):
    """``decode_envoy_json_units`` for text lines (same contract)."""
    return _decode_units(units, offsets, stream, max_bytes, slow, _UNITS_TEXT)


# ---------------------------------------------------------------------------------------------
# Kubernetes audit events (``k8s_audit._event_record`` for one parsed ``Event``)

from detector.decoders import hubble as _hubble
from detector.decoders import k8s_audit as _k8s
from detector.decoders.sniff import sniff as _sniff
from detector.records import outcome_for_status as _status_outcome_of
import orjson as _orjson

cdef object _py_parse_time = _hubble.parse_time
cdef object _orjson_loads = _orjson.loads
cdef str _API_SERVER = _k8s.API_SERVER
cdef str _SA_PREFIX = _k8s._SA_PREFIX
cdef Py_ssize_t _SA_LEN = len(_k8s._SA_PREFIX)
cdef str _DECISION = _k8s._DECISION
cdef int _MONTH_DAYS[13]
_MONTH_DAYS[:] = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


cdef object _audit_time(object v):
    """``hubble.parse_time(v)``: ``YYYY-MM-DDTHH:MM:SS[.digits]Z`` of a real calendar time is
    computed here (as ``datetime.fromisoformat(...).timestamp()`` computes it), anything else
    by ``parse_time`` itself."""
    cdef Py_ssize_t n, j, k
    cdef const unsigned char* t
    cdef double base
    cdef long long y, mo, da
    cdef unsigned long long digits
    if type(v) is not str or not PyUnicode_IS_COMPACT_ASCII(v):
        return _py_parse_time(v)
    n = PyUnicode_GET_LENGTH(v)
    t = <const unsigned char*>PyUnicode_DATA(v)
    if n < 20 or t[n - 1] != 0x5A or t[10] != 0x54 or not _iso_seconds(t, &base):  # "Z", "T"
        return _py_parse_time(v)
    y = (t[0] - 0x30) * 1000 + (t[1] - 0x30) * 100 + (t[2] - 0x30) * 10 + (t[3] - 0x30)
    mo = (t[5] - 0x30) * 10 + (t[6] - 0x30)
    da = (t[8] - 0x30) * 10 + (t[9] - 0x30)
    # fromisoformat refuses what timegm rolls over: second 60, a day past the month's end
    if t[17] == 0x36 or da > _MONTH_DAYS[mo] + (
        1 if mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else 0
    ):
        return _py_parse_time(v)
    if n == 20:
        return base
    if t[19] != 0x2E or n == 21 or n - 21 > 40:  # "." and at least one digit
        return _py_parse_time(v)
    for j in range(20, n - 1):
        if not (0x30 <= t[j] <= 0x39):
            return _py_parse_time(v)
    k = n - 21 if n - 21 < 9 else 9  # nanoseconds: the digits parse_time reads
    digits = 0
    for j in range(20, 20 + k):
        digits = digits * 10 + (t[j] - 0x30)
    return base + <double>digits / _POW10[k]


cdef object _audit_record(dict ev, object source, object offset):
    """``k8s_audit._event_record(ev, source, offset)`` for a dict; raises ``_Handover`` where
    that raises (or where a time needs the fallbacks), so the per-unit path decides."""
    if "auditID" not in ev and "verb" not in ev and "requestURI" not in ev:
        raise _Handover()
    stage = ev.get("stage")
    rs = ev.get("responseStatus")
    if type(rs) is not dict:
        rs = {}
    code = rs.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) else None
    if stage == "RequestReceived":
        return None
    user = ev.get("user")
    username = user.get("username") if type(user) is dict else None
    principal = username if type(username) is str and username else None
    cdef bint failed_authn = status == 401
    if not failed_authn and principal is None:
        message = rs.get("message")
        failed_authn = isinstance(message, str) and message.startswith("Authentication failed")
    if stage == "ResponseStarted" and not failed_authn and status != 101:
        return None
    if stage == "ResponseComplete" and status == 101:
        return None
    annotations = ev.get("annotations")
    decision = annotations.get(_DECISION) if type(annotations) is dict else None
    if failed_authn:
        outcome = UNAUTHENTICATED
    elif decision == "forbid" or status == 403:
        outcome = DENIED
    elif stage == "Panic":
        outcome = ERROR
    else:
        outcome = _status_outcome_of(status)

    ts = _audit_time(ev.get("requestReceivedTimestamp"))
    if ts is None:
        raise _Handover()  # the other time fields: the pure decoder's fallbacks
    stage_ts = _audit_time(ev.get("stageTimestamp"))
    duration = (stage_ts - ts) * 1000.0 if stage_ts is not None and stage_ts >= ts else None

    verb = ev.get("verb")
    if not (type(verb) is str and verb):
        verb = None
    uri = ev.get("requestURI")
    route = uri.split("?", 1)[0] if type(uri) is str and uri else None
    obj = ev.get("objectRef")
    if type(obj) is not dict:
        obj = {}
    resource = obj.get("resource")
    if not isinstance(resource, str):
        resource = None
    sub = obj.get("subresource")
    if resource and isinstance(sub, str) and sub:
        resource = f"{resource}/{sub}"
    detail_parts = [p for p in (resource, verb) if p]
    imp = ev.get("impersonatedUser")
    if type(imp) is dict and isinstance(imp.get("username"), str):
        detail_parts.append(f"as {imp['username']}")
    ns = obj.get("namespace")
    src_ns = None
    if principal is not None and principal.startswith(_SA_PREFIX):
        src_ns = principal[_SA_LEN:].split(":", 1)[0] or None
    ips = ev.get("sourceIPs")
    src_ip = ips[0] if type(ips) is list and ips and isinstance(ips[0], str) else None
    audit_id = ev.get("auditID")
    return _make_record(
        ts, API_AUDIT, principal, None, src_ns, None, src_ip, None,
        ns if isinstance(ns, str) and ns else None, _API_SERVER, None, verb, route, status,
        outcome, 0, 0, duration, audit_id if isinstance(audit_id, str) and audit_id else None,
        " ".join(detail_parts) or None, source, offset,
    )


cdef inline bint _audit_unit(object unit, object stream, object off, list out):
    """Decode one unit holding one audit ``Event`` into ``out``; False: the per-unit path's."""
    try:
        ev = _orjson_loads(unit)
    except Exception:
        return False
    if type(ev) is not dict or "items" in ev:  # an EventList: ``slow`` reports each bad item
        return False
    try:
        rec = _audit_record(<dict>ev, stream, off)
    except Exception:
        return False
    if rec is not None:
        out.append(rec)
    return True


def audit_time(v):
    """``_audit_time`` for tests: exactly ``hubble.parse_time(v)``."""
    return _audit_time(v)


def decode_k8s_audit_units(list units, list offsets, stream, Py_ssize_t max_bytes, slow):
    """``decode_envoy_json_units`` for ``k8s_audit`` batches (same contract): a unit holding
    one ``Event`` of the common shape is decoded here; ``EventList``s and the rest go to
    ``slow``."""
    return _decode_units(units, offsets, stream, max_bytes, slow, _UNITS_AUDIT)


# ---------------------------------------------------------------------------------------------
# ``auto`` batches: the access-log units ``sniff`` would name, decoded here

cdef enum:
    _SNIFF_HEAD = 600  # ``sniff._HEAD``


cdef bint _wrapper_head(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """``b'"log":' in head or b'"kubernetes":' in head`` (``sniff``'s wrapper check)."""
    cdef const unsigned char* q = p
    cdef const unsigned char* end = p + n
    while q < end:
        q = <const unsigned char*>memchr(q, 34, end - q)  # the next '"'
        if q == NULL:
            return False
        if end - q >= 6 and memcmp(q, b'"log":', 6) == 0:
            return True
        if end - q >= 13 and memcmp(q, b'"kubernetes":', 13) == 0:
            return True
        q += 1
    return False


cdef bint _auto_unit(unit, const unsigned char* p, Py_ssize_t size, stream, off, list out):
    """A unit ``sniff`` names Envoy JSON (it opens with ``{"start_time"`` and its head holds no
    wrapper key), Envoy text (``[`` and two digits) or a Kubernetes audit event, decoded by
    that format's compiled path; False: the per-unit path's (which sniffs it itself)."""
    if size >= 13 and memcmp(p, b'{"start_time"', 13) == 0:
        return not _wrapper_head(p, size if size < _SNIFF_HEAD else _SNIFF_HEAD) and _json_unit(
            p, size, stream, off, out
        )
    if size >= 3 and p[0] == 91 and 48 <= p[1] <= 57 and 48 <= p[2] <= 57:  # "[dd"
        return _text_unit(p, size, stream, off, out)
    if p[0] == 123 and _sniff(unit) == "k8s_audit":  # "{"
        return _audit_unit(unit, stream, off, out)  # an EventList goes to ``slow`` there
    return False


def decode_auto_units(list units, list offsets, stream, Py_ssize_t max_bytes, slow):
    """``decode_envoy_json_units`` for ``auto`` batches (same contract): every unit
    ``_auto_unit`` takes is decoded here; every other unit, and any unit the compiled decoders
    do not take whole, goes to ``slow``."""
    return _decode_units(units, offsets, stream, max_bytes, slow, _UNITS_AUTO)


# ---------------------------------------------------------------------------------------------
# Windowed aggregation (``WindowAggregator.add_batch``)

# Read from ``detector.flows`` on first use: that module imports this one (via fastpath).
cdef object _flows = None
cdef object _ANONYMOUS, _OTHER_ROUTE, _template_segment_py, _quantiles_py, _route_name_py
cdef object _EdgeWindow
cdef dict _route_names
cdef tuple _EW_FIELDS
cdef Py_ssize_t _Q_SMALL
cdef tuple _OVERFLOW_KEY, _OTHER_ROUTE_KEY  # untracked, as the keys made per record
cdef Py_ssize_t _MAX_DURATIONS, _MAX_SRC_IPS, _MAX_ROUTES
cdef double _NEG_INF = float("-inf")
cdef str _ID = "{id}"


cdef _init_flows():
    global _flows, _ANONYMOUS, _OTHER_ROUTE, _OVERFLOW_KEY, _OTHER_ROUTE_KEY
    global _MAX_DURATIONS, _MAX_SRC_IPS, _MAX_ROUTES, _template_segment_py
    global _quantiles_py, _route_name_py, _EdgeWindow, _route_names, _EW_FIELDS, _Q_SMALL
    import dataclasses
    from detector import flows

    _quantiles_py = flows._quantiles
    _route_name_py = flows._route_name
    _route_names = flows._route_names
    _EdgeWindow = flows.EdgeWindow
    _EW_FIELDS = tuple(f.name for f in dataclasses.fields(flows.EdgeWindow))
    if len(_EW_FIELDS) != 24:
        raise RuntimeError("detector._fastpath is out of date with flows.EdgeWindow")
    _Q_SMALL = flows._Q_SMALL
    _ANONYMOUS = flows.ANONYMOUS
    _OTHER_ROUTE = flows.OTHER_ROUTE
    _OVERFLOW_KEY = _untracked(
        (flows.OVERFLOW, flows.OVERFLOW, "", flows.OVERFLOW, flows.OVERFLOW)
    )
    _OTHER_ROUTE_KEY = _untracked((None, flows.OTHER_ROUTE))
    _MAX_DURATIONS = flows.MAX_DURATIONS
    _MAX_SRC_IPS = flows.MAX_SRC_IPS
    _MAX_ROUTES = flows.MAX_ROUTES_PER_EDGE
    _template_segment_py = flows._template_segment
    if flows._ID != _ID:
        raise RuntimeError("detector._fastpath is out of date with detector.flows")
    _flows = flows


# ---------------------------------------------------------------------------------------------
# Route templates (``flows.template_path``): ASCII segments are classified by C loops with the
# same outcome as the str methods there; the regular expressions and any non-ASCII segment go
# to ``flows._template_segment`` itself.

cdef inline bint _is_hex(Py_UCS1 c) noexcept nogil:
    return (0x30 <= c <= 0x39) or (0x61 <= c <= 0x66) or (0x41 <= c <= 0x46)


cdef object _segment(str seg):
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(seg), j
    cdef const Py_UCS1* d
    cdef bint digits = True, alpha = True, hexa = True, at = False
    cdef Py_UCS1 c
    if not PyUnicode_IS_COMPACT_ASCII(seg):
        return _template_segment_py(seg)
    d = <const Py_UCS1*>PyUnicode_DATA(seg)
    for j in range(n):
        c = d[j]
        if not (0x30 <= c <= 0x39):
            digits = False
        if not ((0x61 <= c <= 0x7A) or (0x41 <= c <= 0x5A)):
            alpha = False
        if not _is_hex(c):
            hexa = False
        if c == 0x40:
            at = True
    if n < 8:
        # too short for the hex/token/UUID patterns: only digits and e-mail-like ids remain
        return _ID if (n and digits) or at else seg
    if digits:
        return _ID
    if n <= 64 and alpha:
        return seg
    if hexa:
        return _ID  # >= 8 hex digits, at least one a digit
    return _template_segment_py(seg)  # the patterns, "@", length: decided there


def template_path(str path):
    """``flows.template_path``, compiled (same templates for every path)."""
    if _flows is None:
        _init_flows()
    cdef Py_ssize_t q = path.find("?")
    if q >= 0:
        path = path[:q]
    if path.startswith("http://") or path.startswith("https://"):
        # absolute-form request target (Linkerd writes these): keep only the path
        slash = path.find("/", path.find("//") + 2)
        path = path[slash:] if slash >= 0 else "/"
    cdef list parts = path.split("/")
    cdef Py_ssize_t i, n = min(len(parts), 16)
    cdef list out = []
    for i in range(n):
        out.append(_segment(<str>parts[i]))
    return "/".join(out)


def has_spans(list records):
    """``pipeline._has_spans``: any record a span half or carrying a parent span id."""
    cdef tuple t
    for r in records:
        if not PyTuple_Check(r) or PyTuple_GET_SIZE(r) != 25:
            raise TypeError("has_spans() takes FlowRecords")
        t = <tuple>r
        if t[1] == SPAN or t[20] is not None:
            return True
    return False


@cython.no_gc
cdef class Acc:
    """Mutable accumulator of one edge in one window (``detector.flows._Acc``, compiled).

    Made by the kernel, its containers are None until first needed; made from Python, they
    are made at once, as ``_Acc`` does. It holds only counts, times and containers of strings
    and numbers, so it cannot be part of a reference cycle: the cyclic collector does not
    track it (nor, once made here, its containers). An edge-heavy mesh keeps millions alive,
    and walking them on every full collection was half of the aggregation time."""

    cdef public long long requests, connections, api, ok, error, denied, unauthenticated
    cdef public object bytes_in, bytes_out
    cdef public list durations
    cdef public dict routes
    cdef public set src_ips
    cdef public dict ip_failures
    cdef public double first_ts, last_ts

    def __init__(self, double ts):
        self.requests = 0
        self.connections = 0
        self.api = 0
        self.ok = 0
        self.error = 0
        self.denied = 0
        self.unauthenticated = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.durations = []
        self.routes = {}
        self.src_ips = set()
        self.ip_failures = {}
        self.first_ts = ts
        self.last_ts = ts


cdef object _template_miss(object rt, tuple key, object service, str path):
    """``RouteTemplates.template`` after its cache missed: the same bound per service, the same
    cache and counter, with the compiled ``template_path``."""
    tpl = template_path(path)
    cdef dict per = rt._per_service
    known = per.get(service)
    if known is None:
        known = set()
        per[service] = known
    if tpl not in <set>known:
        if len(<set>known) >= rt.max_per_service:
            rt.overflowed += 1
            tpl = _OTHER_ROUTE
        else:
            (<set>known).add(tpl)
    cdef dict cache = rt._cache
    if len(cache) >= rt.cache_size:
        cache.clear()  # cheap bound; hot paths refill it at once
    cache[key] = tpl
    return tpl


cdef Acc _new_acc(double ts):
    """An accumulator for the kernel: its containers are made when first needed (an edge-heavy
    mesh has one record per edge-window, and most never need a failure map)."""
    cdef Acc acc = Acc.__new__(Acc)
    acc.bytes_in = 0
    acc.bytes_out = 0
    acc.first_ts = ts
    acc.last_ts = ts
    return acc


cdef inline double _window_of(double ts, double ws) noexcept:
    """``ts - ts % ws`` with Python's float modulo (the sign of the divisor)."""
    cdef double r = fmod(ts, ws)
    if r != 0.0:
        if (ws < 0.0) != (r < 0.0):
            r += ws
    else:
        r = copysign(0.0, ws)
    return ts - r


def aggregate(agg, str stream, list records, first_offset):
    """``WindowAggregator.add_batch`` (see ``detector.flows``) over ``agg``'s own state."""
    if not records:
        return
    if _flows is None:
        _init_flows()
    cdef double window_s = agg.window_s
    cdef double closed_before = agg._closed_before
    cdef dict windows = agg._windows
    cdef object route_templates = agg.routes
    cdef dict tcache = route_templates._cache
    cdef dict wofs = agg._window_offsets
    cdef dict last_seen = agg._edge_last_seen
    cdef dict stream_max = agg._stream_max_ts
    stats = agg.stats
    max_ts_obj = stream_max.get(stream, _NEG_INF)
    cdef double max_ts = max_ts_obj
    cdef double cur_w = 0.0, w, ts
    cdef bint have_w = False
    cdef dict cur_edges = None
    cdef dict per, routes, fails
    cdef list durs
    cdef set ips
    cdef Py_ssize_t late = 0, overflow = 0
    cdef Py_ssize_t open_edges = agg._open_edges
    cdef Py_ssize_t max_open = agg.max_open_edges - 1  # one slot kept for overflow
    cdef tuple t
    cdef Acc acc
    cdef bint track_offsets = first_offset is not None
    for rec in records:
        if not PyTuple_Check(rec) or PyTuple_GET_SIZE(rec) != 25:
            raise TypeError("aggregate() takes FlowRecords")
        t = <tuple>rec
        ts_obj = t[0]
        ts = ts_obj
        w = _window_of(ts, window_s)
        if w < closed_before:
            late += 1
            continue
        if ts > max_ts:
            max_ts = ts
            max_ts_obj = ts_obj
        if not have_w or w != cur_w:
            have_w = True
            cur_w = w
            wkey = w
            edges_w = windows.get(wkey)
            if edges_w is None:
                edges_w = {}
                windows[wkey] = edges_w
            cur_edges = <dict>edges_w
            if track_offsets:
                per_obj = wofs.get(wkey)
                if per_obj is None:
                    wofs[wkey] = {stream: first_offset}
                else:
                    per = <dict>per_obj
                    if first_offset < per.get(stream, first_offset + 1):
                        per[stream] = first_offset
        principal = t[2]
        if not principal:
            src_workload = t[5]
            principal = f"{t[4]}/{src_workload}" if src_workload else _ANONYMOUS
        dst_svc = t[9]
        # strings only: untracked at once, so the dicts it goes into stay untracked too
        key = _untracked((
            principal,
            t[3] or UNKNOWN,
            t[8] or "",
            dst_svc or UNKNOWN,
            t[7] or UNKNOWN,
        ))
        acc_obj = cur_edges.get(key)
        if acc_obj is None:
            if open_edges >= max_open:
                overflow += 1
                key = _OVERFLOW_KEY
                acc_obj = cur_edges.get(key)
            if acc_obj is None:
                acc_obj = _new_acc(ts)
                cur_edges[key] = acc_obj
                open_edges += 1
        acc = <Acc>acc_obj
        kind = t[1]
        if kind == CONNECTION:
            acc.connections += 1
        elif kind == API_AUDIT:
            acc.api += 1
        else:
            acc.requests += 1
        outcome = t[14]
        ip = t[6]
        if outcome == OK:
            acc.ok += 1
        elif outcome == ERROR:
            acc.error += 1
        elif outcome == DENIED or outcome == UNAUTHENTICATED:
            if outcome == DENIED:
                acc.denied += 1
            else:
                acc.unauthenticated += 1
            if ip is not None:
                if acc.ip_failures is None:
                    acc.ip_failures = _untracked({})
                fails = acc.ip_failures
                n_obj = fails.get(ip)
                if n_obj is not None:
                    fails[ip] = n_obj + 1
                elif len(fails) < _MAX_SRC_IPS:
                    fails[ip] = 1
        acc.bytes_in = acc.bytes_in + t[15]
        acc.bytes_out = acc.bytes_out + t[16]
        d = t[17]
        if d is not None:
            if acc.durations is None:
                acc.durations = _untracked([])
            durs = acc.durations
            if len(durs) < _MAX_DURATIONS:
                durs.append(d)
        route = t[12]
        method = t[11]
        if route is not None or method is not None:
            if route is None:
                tpl = None
            else:
                tkey = _untracked((dst_svc, route))
                tpl = tcache.get(tkey)
                if tpl is None:
                    tpl = _template_miss(route_templates, tkey, dst_svc, route)
            rk = _untracked((method, tpl))
            if acc.routes is None:
                acc.routes = _untracked({})
            routes = acc.routes
            n_obj = routes.get(rk)
            if n_obj is not None:
                routes[rk] = n_obj + 1
            elif len(routes) < _MAX_ROUTES:
                routes[rk] = 1
            else:
                routes[_OTHER_ROUTE_KEY] = routes.get(_OTHER_ROUTE_KEY, 0) + 1
        if ip is not None:
            if acc.src_ips is None:
                acc.src_ips = _untracked(set())
            ips = acc.src_ips
            if len(ips) < _MAX_SRC_IPS:
                ips.add(ip)
        if ts < acc.first_ts:
            acc.first_ts = ts
        elif ts > acc.last_ts:
            acc.last_ts = ts
        last_seen[key] = ts_obj
    agg._open_edges = open_edges
    if overflow:
        stats.overflow += overflow
    stats.records += len(records) - late
    if late:
        stats.late += late
        stats.late_by_stream[stream] = stats.late_by_stream.get(stream, 0) + late
    if max_ts > _NEG_INF:
        stream_max[stream] = max_ts_obj
    agg._stream_idle.discard(stream)


# ---------------------------------------------------------------------------------------------
# Closing windows (``flows._materialise``)

cdef extern from "Python.h":
    int PyObject_GenericSetAttr(object o, object name, object value) except -1

cdef double[3] _QS = [0.5, 0.9, 0.99]


cdef object _quantiles(list durations):
    """``flows._quantiles`` (numpy's linear quantiles, rounded to 3) for small float lists;
    anything else (large, NaN/inf, not all floats) is computed there."""
    cdef Py_ssize_t n = len(durations), j, last, lo
    cdef double vi, a, b, t, diff, v
    if n > _Q_SMALL:
        return _quantiles_py(durations)
    for j in range(n):
        if not PyFloat_CheckExact(durations[j]):
            return _quantiles_py(durations)
    total = sum(durations)
    if not (PyFloat_AS_DOUBLE(total) - PyFloat_AS_DOUBLE(total) == 0.0):  # NaN or inf
        return _quantiles_py(durations)
    cdef list xs = list(durations)
    xs.sort()
    last = n - 1
    out = []
    for j in range(3):
        vi = <double>last * _QS[j]
        if vi >= last:
            v = PyFloat_AS_DOUBLE(xs[last])
        else:
            lo = <Py_ssize_t>vi  # floor: vi >= 0
            a = PyFloat_AS_DOUBLE(xs[lo])
            b = PyFloat_AS_DOUBLE(xs[lo + 1])
            t = vi - <double>lo
            diff = b - a
            # numpy's _lerp: from the upper neighbour when t >= 0.5 (same rounding as numpy)
            v = b - diff * (1.0 - t) if t >= 0.5 else a + diff * t
        out.append(round(v, 3))
    return out


def materialise(double w, double ws, dict edges):
    """``[flows._materialise(w, ws, key, acc) for key, acc in edges.items()]`` (compiled)."""
    if _flows is None:
        _init_flows()
    cdef list out = []
    cdef Acc acc
    cdef dict routes
    cdef tuple k
    cdef tuple names = _EW_FIELDS
    wo = w
    we = w + ws
    for key, acc_obj in edges.items():
        k = <tuple>key
        acc = <Acc?>acc_obj
        p50 = p90 = p99 = None
        if acc.durations:  # None or [] when the edge logged no duration
            q = _quantiles(acc.durations)
            p50 = q[0]
            p90 = q[1]
            p99 = q[2]
        routes = {}
        if acc.routes is not None:
            for mt, cnt in acc.routes.items():
                name = _route_names.get(mt)
                if name is None:
                    name = _route_name_py(mt)
                routes[name] = cnt
        values = (
            wo, we, k[0], k[1], k[2], k[3], k[4],
            acc.requests, acc.connections, acc.api, acc.ok, acc.error, acc.denied,
            acc.unauthenticated, acc.bytes_in, acc.bytes_out, p50, p90, p99,
            routes,
            tuple(sorted(acc.src_ips)) if acc.src_ips is not None else (),
            acc.ip_failures if acc.ip_failures is not None else {},
            acc.first_ts,
            acc.last_ts,
        )
        ew = _EdgeWindow.__new__(_EdgeWindow)
        for j in range(24):
            PyObject_GenericSetAttr(ew, names[j], values[j])
        out.append(ew)
    return out


# ---------------------------------------------------------------------------------------------
# Isolation forest (``multivariate.PackedForest``): every row down every tree


def forest_leaf_depths(
    const Py_ssize_t[::1] feature, const double[::1] threshold, const Py_ssize_t[::1] child,
    const double[::1] leaf_depth, Py_ssize_t n_trees, Py_ssize_t width,
    const double[:, ::1] x, double[:, ::1] out,
):
    """``out[t, r]``: the leaf depth of row ``r`` of ``x`` in tree ``t`` of the flat forest
    (``PackedForest``'s arrays: a leaf's children are itself). As the numpy walk: a value goes
    right unless ``value <= threshold`` (so NaN goes right)."""
    cdef Py_ssize_t t, r, node, nxt
    cdef Py_ssize_t n = x.shape[0]
    with nogil:
        for t in range(n_trees):
            for r in range(n):
                node = t * width
                while True:
                    nxt = child[2 * node + (0 if x[r, feature[node]] <= threshold[node] else 1)]
                    if nxt == node:
                        break
                    node = nxt
                out[t, r] = leaf_depth[node]
