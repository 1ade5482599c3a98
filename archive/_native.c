/* weightvault.archive._native: one-pass byte transforms of the float codecs.
 *
 * The numpy reference implementations live beside their codecs
 * (archive/floatsplit.py, archive/delta.py); this module computes exactly the
 * same bytes in one pass over the data, with the GIL released so the snapshot
 * and restore thread pools scale across cores. tests/test_native.py checks
 * every function against its numpy reference. The module is optional: a
 * build without a C compiler falls back to numpy (archive/native.py).
 *
 * Byte order: the formats are little-endian; the build refuses big-endian
 * hosts (the numpy path handles them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "weightvault._native assumes a little-endian host"
#endif

#define ESCAPE 15

/* A new bytes object of n bytes, contents uninitialised. */
static PyObject *new_bytes(Py_ssize_t n, char **data) {
    PyObject *o = PyBytes_FromStringAndSize(NULL, n);
    if (o) *data = PyBytes_AS_STRING(o);
    return o;
}

/* The output of a join: the writable buffer dest when given (returns True,
 * *have_dest set so the caller releases db), else a new bytes object. */
static PyObject *join_output(PyObject *dest, Py_buffer *db, int *have_dest, Py_ssize_t len, char **od) {
    if (dest == Py_None) return new_bytes(len, od);
    if (PyObject_GetBuffer(dest, db, PyBUF_WRITABLE) < 0) return NULL;
    *have_dest = 1;
    if (db->len != len) {
        PyErr_SetString(PyExc_ValueError, "destination length differs from the decoded length");
        return NULL;
    }
    *od = db->buf;
    Py_INCREF(Py_True);
    return Py_True;
}

/* ---- fsplit ------------------------------------------------------------ */

/* The window top T: argmax over t of counts[t-14..t] (first maximum), counting
 * every 8th exponent when n >= 16384 (floatsplit.window_top). */
static int window_top(const uint8_t *rb, Py_ssize_t n, int s) {
    int64_t counts[256] = {0};
    Py_ssize_t stride = n >= (1 << 14) ? 8 : 1;
    for (Py_ssize_t i = 0; i < n; i += stride) {
        const uint8_t *el = rb + i * s;
        uint8_t e = (uint8_t)((el[s - 1] << 1) | (el[s - 2] >> 7));
        counts[e]++;
    }
    int64_t best = -1, win = 0;
    int top = 0;
    for (int t = 0; t < 256; t++) {
        win += counts[t];
        if (t >= ESCAPE) win -= counts[t - ESCAPE];
        if (win > best) { best = win; top = t; }
    }
    return top;
}

/* One element's j byte (rank clamped to ESCAPE) and nibble from its top two bytes. */
static inline void split_top(uint16_t t, uint8_t top, uint8_t *jv, uint8_t *lo) {
    uint8_t hi = (uint8_t)(t >> 8), mid = (uint8_t)t;
    uint8_t e = (uint8_t)((hi << 1) | (mid >> 7));
    uint8_t rank = (uint8_t)(top - e);
    rank = rank < ESCAPE ? rank : ESCAPE;
    *jv = (uint8_t)((rank << 4) | ((mid >> 3) & 0x0F));
    *lo = (uint8_t)(((mid & 7) << 1) | (hi >> 7));
}

static inline uint16_t load_top(const uint8_t *rb, Py_ssize_t i, int s) {
    uint16_t t;
    memcpy(&t, rb + s * i + s - 2, 2);
    return t;
}

/* Runs BODY with I set to each index whose j byte is an escape (rank 15), in
 * order. Escapes are rare (~0.05% of weights), so 16 j bytes are tested per
 * step with SSE2 (a scalar scan was half of join's time). */
#ifdef __SSE2__
#define FOR_EACH_ESCAPE(J, n, I, BODY)                                                      \
    do {                                                                                  \
        const __m128i fe_hi = _mm_set1_epi8((char)0xF0);                                  \
        Py_ssize_t fe_b = 0;                                                              \
        for (; fe_b + 16 <= (n); fe_b += 16) {                                            \
            __m128i fe_v = _mm_and_si128(_mm_loadu_si128((const __m128i *)((J) + fe_b)), fe_hi); \
            unsigned fe_m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(fe_v, fe_hi));      \
            while (fe_m) {                                                                \
                Py_ssize_t I = fe_b + __builtin_ctz(fe_m);                                \
                fe_m &= fe_m - 1;                                                         \
                BODY                                                                      \
            }                                                                             \
        }                                                                                 \
        for (Py_ssize_t I = fe_b; I < (n); I++)                                           \
            if (((J)[I] >> 4) == ESCAPE) BODY                                             \
    } while (0)
#else
#define FOR_EACH_ESCAPE(J, n, I, BODY)                                                      \
    do {                                                                                  \
        for (Py_ssize_t I = 0; I < (n); I++)                                              \
            if (((J)[I] >> 4) == ESCAPE) BODY                                             \
    } while (0)
#endif

/* A branch-free pass (vectorisable), then the escaped exponents collected into X. */
static Py_ssize_t split_any(const uint8_t *restrict rb, Py_ssize_t n, int s, uint8_t top, uint8_t *restrict J,
                            uint8_t *restrict N, uint8_t *restrict P0, uint8_t *restrict P1, uint8_t *restrict X) {
    Py_ssize_t pairs = n / 2;
    if (s == 4) {
        for (Py_ssize_t h = 0; h < pairs; h++) {
            uint64_t w;
            memcpy(&w, rb + 8 * h, 8);
            uint8_t j0, j1, l0, l1;
            split_top((uint16_t)(w >> 16), top, &j0, &l0);
            split_top((uint16_t)(w >> 48), top, &j1, &l1);
            P0[2 * h] = (uint8_t)w;
            P1[2 * h] = (uint8_t)(w >> 8);
            P0[2 * h + 1] = (uint8_t)(w >> 32);
            P1[2 * h + 1] = (uint8_t)(w >> 40);
            J[2 * h] = j0;
            J[2 * h + 1] = j1;
            N[h] = (uint8_t)(l0 | (l1 << 4));
        }
    } else {
        for (Py_ssize_t h = 0; h < pairs; h++) {
            uint32_t w;
            memcpy(&w, rb + 4 * h, 4);
            uint8_t j0, j1, l0, l1;
            split_top((uint16_t)w, top, &j0, &l0);
            split_top((uint16_t)(w >> 16), top, &j1, &l1);
            J[2 * h] = j0;
            J[2 * h + 1] = j1;
            N[h] = (uint8_t)(l0 | (l1 << 4));
        }
    }
    if (n & 1) {
        uint8_t jv, lo;
        split_top(load_top(rb, n - 1, s), top, &jv, &lo);
        J[n - 1] = jv;
        N[n >> 1] = lo;
        if (s == 4) {
            P0[n - 1] = rb[4 * (n - 1)];
            P1[n - 1] = rb[4 * (n - 1) + 1];
        }
    }
    Py_ssize_t nx = 0;
    FOR_EACH_ESCAPE(J, n, i, {
        uint16_t t = load_top(rb, i, s);
        X[nx++] = (uint8_t)(((t >> 8) << 1) | ((t & 0xFF) >> 7));
    });
    return nx;
}

/* fsplit_split(raw, itemsize) -> (top, j, n, (p0, ...), x) */
static PyObject *fsplit_split(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int s;
    if (!PyArg_ParseTuple(args, "y*i", &buf, &s)) return NULL;
    PyObject *result = NULL, *j = NULL, *nib = NULL, *planes = NULL, *x = NULL;
    uint8_t *xtmp = NULL;
    if ((s != 2 && s != 4) || buf.len % s || buf.len < 4 * s) {
        PyErr_SetString(PyExc_ValueError, "fsplit needs itemsize 2 or 4 and at least 4 whole elements");
        goto done;
    }
    Py_ssize_t n = buf.len / s;
    const uint8_t *rb = (const uint8_t *)buf.buf;
    char *jd = NULL, *nd = NULL, *pd[2] = {NULL, NULL};
    j = new_bytes(n, &jd);
    nib = new_bytes((n + 1) / 2, &nd);
    planes = PyTuple_New(s - 2);
    if (!j || !nib || !planes) goto done;
    for (int k = 0; k < s - 2; k++) {
        PyObject *p = new_bytes(n, &pd[k]);
        if (!p) goto done;
        PyTuple_SET_ITEM(planes, k, p);
    }
    xtmp = (uint8_t *)PyMem_RawMalloc(n ? n : 1);
    if (!xtmp) { PyErr_NoMemory(); goto done; }
    Py_ssize_t nx = 0;
    int top;
    Py_BEGIN_ALLOW_THREADS
    top = window_top(rb, n, s);
    nx = split_any(rb, n, s, (uint8_t)top, (uint8_t *)jd, (uint8_t *)nd, (uint8_t *)pd[0], (uint8_t *)pd[1], xtmp);
    Py_END_ALLOW_THREADS
    x = PyBytes_FromStringAndSize((const char *)xtmp, nx);
    if (!x) goto done;
    result = Py_BuildValue("(iOOOO)", top, j, nib, planes, x);
done:
    PyMem_RawFree(xtmp);
    Py_XDECREF(j); Py_XDECREF(nib); Py_XDECREF(planes); Py_XDECREF(x);
    PyBuffer_Release(&buf);
    return result;
}

/* The top two bytes of an element (mid | hi << 8) from its j byte, nibble and exponent. */
static inline uint16_t top16(uint8_t jv, uint8_t lo, uint8_t e) {
    uint8_t hi = (uint8_t)(((lo & 1) << 7) | (e >> 1));
    uint8_t mid = (uint8_t)(((e & 1) << 7) | ((jv & 0x0F) << 3) | (lo >> 1));
    return (uint16_t)(mid | (hi << 8));
}

/* Two passes, both free of data-dependent branches in the common case so the
 * compiler vectorises them: every element as if not escaped, then the few
 * escaped elements (rank 15) patched with their exponents from X in order.
 * Returns 1 when X does not hold exactly one byte per escaped element. */
static int join_s(uint8_t *restrict O, const uint8_t *restrict J, const uint8_t *restrict N,
                  const uint8_t *restrict P0, const uint8_t *restrict P1, const uint8_t *restrict X,
                  Py_ssize_t nx, Py_ssize_t n, uint8_t top, int s) {
    Py_ssize_t full = 0;
#ifdef __SSE2__
    if (s == 4) {  /* 16 elements per step with SSE2 (every x86-64 has it) */
        full = n / 16 * 16;
        const __m128i m0f = _mm_set1_epi8(0x0F), m01 = _mm_set1_epi8(1), m7f = _mm_set1_epi8(0x7F),
                      m07 = _mm_set1_epi8(0x07), vtop = _mm_set1_epi8((char)top);
        for (Py_ssize_t b = 0; b < full; b += 16) {
            __m128i jv = _mm_loadu_si128((const __m128i *)(J + b));
            __m128i nb = _mm_loadl_epi64((const __m128i *)(N + b / 2));
            __m128i lo = _mm_unpacklo_epi8(_mm_and_si128(nb, m0f), _mm_and_si128(_mm_srli_epi16(nb, 4), m0f));
            __m128i e = _mm_sub_epi8(vtop, _mm_and_si128(_mm_srli_epi16(jv, 4), m0f));
            __m128i hi = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(lo, m01), 7),
                                      _mm_and_si128(_mm_srli_epi16(e, 1), m7f));
            __m128i mid = _mm_or_si128(_mm_or_si128(_mm_slli_epi16(_mm_and_si128(e, m01), 7),
                                                    _mm_slli_epi16(_mm_and_si128(jv, m0f), 3)),
                                       _mm_and_si128(_mm_srli_epi16(lo, 1), m07));
            __m128i p0 = _mm_loadu_si128((const __m128i *)(P0 + b));
            __m128i p1 = _mm_loadu_si128((const __m128i *)(P1 + b));
            __m128i low_lo = _mm_unpacklo_epi8(p0, p1), low_hi = _mm_unpackhi_epi8(p0, p1);
            __m128i top_lo = _mm_unpacklo_epi8(mid, hi), top_hi = _mm_unpackhi_epi8(mid, hi);
            _mm_storeu_si128((__m128i *)(O + 4 * b), _mm_unpacklo_epi16(low_lo, top_lo));
            _mm_storeu_si128((__m128i *)(O + 4 * b + 16), _mm_unpackhi_epi16(low_lo, top_lo));
            _mm_storeu_si128((__m128i *)(O + 4 * b + 32), _mm_unpacklo_epi16(low_hi, top_hi));
            _mm_storeu_si128((__m128i *)(O + 4 * b + 48), _mm_unpackhi_epi16(low_hi, top_hi));
        }
    }
#endif
    /* Blocks of BLK elements through small stack arrays: every inner loop is
     * straight-line byte arithmetic the compiler vectorises. */
    enum { BLK = 64 };
    Py_ssize_t blocks_end = full + (n - full) / BLK * BLK;
    for (Py_ssize_t b = full; b < blocks_end; b += BLK) {
        uint8_t lo[BLK], hi[BLK], mid[BLK];
        const uint8_t *Nb = N + b / 2, *Jb = J + b;
        for (int k = 0; k < BLK / 2; k++) {
            lo[2 * k] = Nb[k] & 0x0F;
            lo[2 * k + 1] = Nb[k] >> 4;
        }
        for (int i = 0; i < BLK; i++) {
            uint8_t e = (uint8_t)(top - (Jb[i] >> 4));
            hi[i] = (uint8_t)(((lo[i] & 1) << 7) | (e >> 1));
            mid[i] = (uint8_t)(((e & 1) << 7) | ((Jb[i] & 0x0F) << 3) | (lo[i] >> 1));
        }
        if (s == 4) {
            uint32_t w[BLK];
            for (int i = 0; i < BLK; i++)
                w[i] = (uint32_t)P0[b + i] | ((uint32_t)P1[b + i] << 8) | ((uint32_t)mid[i] << 16) |
                       ((uint32_t)hi[i] << 24);
            memcpy(O + 4 * b, w, sizeof w);
        } else {
            uint16_t w[BLK];
            for (int i = 0; i < BLK; i++) w[i] = (uint16_t)(mid[i] | (hi[i] << 8));
            memcpy(O + 2 * b, w, sizeof w);
        }
    }
    for (Py_ssize_t i = blocks_end; i < n; i++) {  /* the tail, one element at a time */
        uint8_t lo = (i & 1) ? (uint8_t)(N[i >> 1] >> 4) : (uint8_t)(N[i >> 1] & 0x0F);
        uint16_t t = top16(J[i], lo, (uint8_t)(top - (J[i] >> 4)));
        if (s == 4) { O[4 * i] = P0[i]; O[4 * i + 1] = P1[i]; }
        memcpy(O + s * i + s - 2, &t, 2);
    }
    Py_ssize_t xi = 0;
    int short_x = 0;
    FOR_EACH_ESCAPE(J, n, i, {
        if (xi == nx) { short_x = 1; continue; }
        uint8_t lo = (i & 1) ? (uint8_t)(N[i >> 1] >> 4) : (uint8_t)(N[i >> 1] & 0x0F);
        uint16_t t = top16(J[i], lo, X[xi++]);
        memcpy(O + s * i + s - 2, &t, 2);
    });
    return short_x || xi != nx;
}

/* fsplit_join(j, n, (p0, ...), x, top, itemsize[, dest]) -> bytes (True when
 * written into the writable buffer dest), or None when the escape stream x
 * does not hold exactly one byte per escaped element (the caller names the
 * chunk). Stream lengths are checked here too. */
static PyObject *fsplit_join(PyObject *self, PyObject *args) {
    Py_buffer jb, nb, xb, pb[2], db = {0};
    PyObject *planes, *dest = Py_None;
    int top, s;
    if (!PyArg_ParseTuple(args, "y*y*Oy*ii|O", &jb, &nb, &planes, &xb, &top, &s, &dest)) return NULL;
    int np_ = 0, have_dest = 0;
    PyObject *out = NULL;
    if ((s != 2 && s != 4) || !PyTuple_Check(planes) || PyTuple_GET_SIZE(planes) != s - 2 || top < 0 || top > 255) {
        PyErr_SetString(PyExc_ValueError, "bad fsplit parameters");
        goto done;
    }
    for (; np_ < s - 2; np_++)
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(planes, np_), &pb[np_], PyBUF_SIMPLE) < 0) goto done;
    Py_ssize_t n = jb.len;
    if (nb.len != (n + 1) / 2) { PyErr_SetString(PyExc_ValueError, "fsplit nibble stream length"); goto done; }
    for (int k = 0; k < s - 2; k++)
        if (pb[k].len != n) { PyErr_SetString(PyExc_ValueError, "fsplit plane length"); goto done; }
    char *od = NULL;
    out = join_output(dest, &db, &have_dest, n * s, &od);
    if (!out) goto done;
    const uint8_t *J = jb.buf, *N = nb.buf, *X = xb.buf;
    Py_ssize_t nx = xb.len;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    bad = join_s((uint8_t *)od, J, N, s == 4 ? pb[0].buf : NULL, s == 4 ? pb[1].buf : NULL, X, nx, n,
                 (uint8_t)top, s);
    Py_END_ALLOW_THREADS
    if (bad) { Py_DECREF(out); out = Py_None; Py_INCREF(out); }
done:
    for (int k = 0; k < np_; k++) PyBuffer_Release(&pb[k]);
    if (have_dest) PyBuffer_Release(&db);
    PyBuffer_Release(&jb); PyBuffer_Release(&nb); PyBuffer_Release(&xb);
    return out;
}

/* ---- byte planes and deltas -------------------------------------------- */

enum { MODE_NONE = 0, MODE_XOR = 1, MODE_SUB = 2 };

#define DEFINE_SPLIT(T, S)                                                              \
    static void split_##S(const uint8_t *raw, const uint8_t *base, Py_ssize_t n,        \
                          int mode, uint8_t **pl) {                                     \
        for (Py_ssize_t i = 0; i < n; i++) {                                            \
            T u, b = 0, d;                                                              \
            memcpy(&u, raw + i * S, S);                                                 \
            if (mode != MODE_NONE) memcpy(&b, base + i * S, S);                         \
            if (mode == MODE_XOR) d = u ^ b;                                            \
            else if (mode == MODE_SUB) {                                                \
                T diff = (T)(u - b);                                                    \
                d = (T)((T)(diff << 1) ^ (T)(0 - (T)(diff >> (S * 8 - 1))));            \
            } else d = u;                                                               \
            for (int k = 0; k < S; k++) pl[k][i] = (uint8_t)(d >> (8 * k));             \
        }                                                                               \
    }

#define DEFINE_JOIN(T, S)                                                               \
    static void join_##S(uint8_t *out, const uint8_t *base, Py_ssize_t n, int mode,     \
                         const uint8_t **pl) {                                          \
        for (Py_ssize_t i = 0; i < n; i++) {                                            \
            T d = 0, b = 0, u;                                                          \
            for (int k = 0; k < S; k++) d |= (T)((T)pl[k][i] << (8 * k));               \
            if (mode != MODE_NONE) memcpy(&b, base + i * S, S);                         \
            if (mode == MODE_XOR) u = d ^ b;                                            \
            else if (mode == MODE_SUB) u = (T)((T)((d >> 1) ^ (T)(0 - (T)(d & 1))) + b); \
            else u = d;                                                                 \
            memcpy(out + i * S, &u, S);                                                 \
        }                                                                               \
    }

DEFINE_SPLIT(uint8_t, 1)
DEFINE_SPLIT(uint64_t, 8)
DEFINE_JOIN(uint8_t, 1)
DEFINE_JOIN(uint16_t, 2)
DEFINE_JOIN(uint32_t, 4)
DEFINE_JOIN(uint64_t, 8)

/* split_4 with the planes as restrict pointers and the mode hoisted: the
 * generic loop cannot be vectorised (its byte stores may alias each other). */
#define SPLIT4_LOOP(EXPR)                                                               \
    for (Py_ssize_t i = 0; i < n; i++) {                                                \
        uint32_t u, b = 0, d;                                                           \
        memcpy(&u, raw + 4 * i, 4);                                                     \
        if (base) memcpy(&b, base + 4 * i, 4);                                          \
        d = (EXPR);                                                                     \
        p0[i] = (uint8_t)d; p1[i] = (uint8_t)(d >> 8);                                  \
        p2[i] = (uint8_t)(d >> 16); p3[i] = (uint8_t)(d >> 24);                         \
    }
static void split_4r(const uint8_t *restrict raw, const uint8_t *restrict base, Py_ssize_t n, int mode,
                     uint8_t **pl) {
    uint8_t *restrict p0 = pl[0], *restrict p1 = pl[1], *restrict p2 = pl[2], *restrict p3 = pl[3];
    if (mode == MODE_XOR) { SPLIT4_LOOP(u ^ b) }
    else if (mode == MODE_SUB) { SPLIT4_LOOP((uint32_t)(((u - b) << 1) ^ (0u - ((u - b) >> 31)))) }
    else { SPLIT4_LOOP(u) }
}

#define SPLIT2_LOOP(EXPR)                                                               \
    for (Py_ssize_t i = 0; i < n; i++) {                                                \
        uint16_t u, b = 0, d;                                                           \
        memcpy(&u, raw + 2 * i, 2);                                                     \
        if (base) memcpy(&b, base + 2 * i, 2);                                          \
        d = (uint16_t)(EXPR);                                                           \
        p0[i] = (uint8_t)d; p1[i] = (uint8_t)(d >> 8);                                  \
    }
static void split_2r(const uint8_t *restrict raw, const uint8_t *restrict base, Py_ssize_t n, int mode,
                     uint8_t **pl) {
    uint8_t *restrict p0 = pl[0], *restrict p1 = pl[1];
    if (mode == MODE_XOR) { SPLIT2_LOOP(u ^ b) }
    else if (mode == MODE_SUB) {
        SPLIT2_LOOP((((uint16_t)(u - b)) << 1) ^ (0u - (((uint16_t)(u - b)) >> 15)))
    }
    else { SPLIT2_LOOP(u) }
}

/* ---- exponent segments (delta-xor-exp, delta-sub-exp) -------------------
 * An element's key is its base element's (v >> (8 * S - 9)) & 0xFF: the
 * exponent of an fp32 or bf16 value (delta.exp_keys). A segment map (256
 * bytes) names each key's segment; the planes hold the elements stably
 * partitioned by segment. */
static inline unsigned exp_key(const uint8_t *b, Py_ssize_t i, int S) {
    if (S == 4) { uint32_t v; memcpy(&v, b + 4 * i, 4); return (v >> 23) & 0xFF; }
    uint16_t v; memcpy(&v, b + 2 * i, 2); return (v >> 7) & 0xFF;
}

/* Four tables, so that runs of one key do not wait on each other's increments. */
static void exp_count(const uint8_t *base, Py_ssize_t n, int S, Py_ssize_t cnt[256]) {
    Py_ssize_t c[4][256];
    memset(c, 0, sizeof c);
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        c[0][exp_key(base, i, S)]++;
        c[1][exp_key(base, i + 1, S)]++;
        c[2][exp_key(base, i + 2, S)]++;
        c[3][exp_key(base, i + 3, S)]++;
    }
    for (; i < n; i++) c[0][exp_key(base, i, S)]++;
    for (int k = 0; k < 256; k++) cnt[k] = c[0][k] + c[1][k] + c[2][k] + c[3][k];
}

/* The chunk is walked as four quarters in step, each with its own cursors
 * (cur[q][segment]: where that quarter's next element of the segment goes), so
 * that consecutive elements of one segment do not wait on each other's cursor
 * increment (per 4 MiB fp32 chunk here, before sid[] below: split 5.0 ms
 * against 6.2 with one cursor array, join 2.2 against 2.3; with sid[], 5.3-6.0
 * and 2.3-2.8; the element-order transforms take 1.7 and 0.44).
 * Each element's segment is read from the base once, into sid[]: the cursors
 * are laid out from those counts and the walk uses the same sid[], so a base
 * buffer that changed under the released GIL can give wrong bytes (caught by
 * the chunk's hash) but never a position outside tmp. */
#define NQ 4
static void seg_cursors(const uint8_t *base, Py_ssize_t n, int S, const uint8_t *map, uint8_t *sid,
                        Py_ssize_t cur[NQ][256], Py_ssize_t *quarter) {
    Py_ssize_t cnt[NQ][256], at = 0;
    memset(cnt, 0, sizeof cnt);
    *quarter = n / NQ;
    Py_ssize_t m = *quarter;
    for (Py_ssize_t i = 0; i < m; i++)
        for (int q = 0; q < NQ; q++) {
            uint8_t j = map[exp_key(base, q * m + i, S)];
            sid[q * m + i] = j;
            cnt[q][j]++;
        }
    for (Py_ssize_t i = NQ * m; i < n; i++) {
        uint8_t j = map[exp_key(base, i, S)];
        sid[i] = j;
        cnt[NQ - 1][j]++;
    }
    for (int j = 0; j < 256; j++)
        for (int q = 0; q < NQ; q++) { cur[q][j] = at; at += cnt[q][j]; }
}

/* exp_counts(base, itemsize) -> 256 u64: how many elements have each key (delta.exp_cuts). */
static PyObject *exp_counts(PyObject *self, PyObject *args) {
    Py_buffer bb;
    int s;
    if (!PyArg_ParseTuple(args, "y*i", &bb, &s)) return NULL;
    PyObject *o = NULL;
    if ((s != 2 && s != 4) || bb.len % s) {
        PyErr_SetString(PyExc_ValueError, "bad itemsize or length");
        goto done;
    }
    Py_ssize_t cnt[256];
    Py_BEGIN_ALLOW_THREADS
    exp_count(bb.buf, bb.len / s, s, cnt);
    Py_END_ALLOW_THREADS
    char *d;
    o = new_bytes(256 * 8, &d);
    if (o) for (int k = 0; k < 256; k++) { uint64_t v = (uint64_t)cnt[k]; memcpy(d + 8 * k, &v, 8); }
done:
    PyBuffer_Release(&bb);
    return o;
}

/* Both go through a temporary array of whole elements in segment order, so
 * that each scattered access moves one element instead of one byte per plane;
 * the plane loops around it vectorise. They return -1 when the temporary
 * cannot be allocated. Positions within a segment follow element order
 * whichever quarter an element is in (seg_cursors lays the quarters' runs of
 * each segment end to end). */

/* the next slot of i's segment in tmp = d(raw[i], base[i]): XOR, or the zigzagged difference */
#define SPLIT_AT(T, S, i, c, XOR)                                                       \
    do {                                                                                \
        Py_ssize_t at_ = (i);                                                           \
        T u_, b_, d_;                                                                   \
        memcpy(&u_, raw + at_ * S, S);                                                  \
        memcpy(&b_, base + at_ * S, S);                                                 \
        if (XOR) d_ = u_ ^ b_;                                                          \
        else {                                                                          \
            T diff_ = (T)(u_ - b_);                                                     \
            d_ = (T)((T)(diff_ << 1) ^ (T)(0 - (T)(diff_ >> (S * 8 - 1))));             \
        }                                                                               \
        tmp[(c)[sid[at_]]++] = d_;                                                      \
    } while (0)

/* out[i] = the next element of i's segment (in tmp) OP base[i] */
#define JOIN_AT(T, S, i, c, OP)                                                         \
    do {                                                                                \
        Py_ssize_t at_ = (i);                                                           \
        T b_, u_;                                                                       \
        memcpy(&b_, base + at_ * S, S);                                                 \
        u_ = (T)(tmp[(c)[sid[at_]]++] OP b_);                                           \
        memcpy(out + at_ * S, &u_, S);                                                  \
    } while (0)

#define DEFINE_SEGMENTED(T, S)                                                          \
    static int split_seg_##S(const uint8_t *raw, const uint8_t *base, Py_ssize_t n,     \
                             int mode, const uint8_t *map, uint8_t **pl) {              \
        /* whole elements scattered into segment order, then split into planes */      \
        T *tmp = malloc((size_t)(n ? n : 1) * S);                                       \
        uint8_t *sid = malloc((size_t)(n ? n : 1));                                     \
        if (!tmp || !sid) { free(tmp); free(sid); return -1; }                          \
        Py_ssize_t cur[NQ][256], m;                                                     \
        seg_cursors(base, n, S, map, sid, cur, &m);                                     \
        if (mode == MODE_XOR) {                                                         \
            for (Py_ssize_t i = 0; i < m; i++)                                          \
                for (int q = 0; q < NQ; q++) SPLIT_AT(T, S, q * m + i, cur[q], 1);      \
            for (Py_ssize_t i = NQ * m; i < n; i++) SPLIT_AT(T, S, i, cur[NQ - 1], 1);  \
        } else {                                                                        \
            for (Py_ssize_t i = 0; i < m; i++)                                          \
                for (int q = 0; q < NQ; q++) SPLIT_AT(T, S, q * m + i, cur[q], 0);      \
            for (Py_ssize_t i = NQ * m; i < n; i++) SPLIT_AT(T, S, i, cur[NQ - 1], 0);  \
        }                                                                               \
        split_##S##r((const uint8_t *)tmp, NULL, n, MODE_NONE, pl);                     \
        free(tmp);                                                                      \
        free(sid);                                                                      \
        return 0;                                                                       \
    }                                                                                   \
    static int join_seg_##S(uint8_t *out, const uint8_t *base, Py_ssize_t n, int mode,  \
                            const uint8_t *map, const uint8_t **pl) {                   \
        /* the planes' elements, un-zigzagged, in segment order (a loop that vectorises) */ \
        T *tmp = malloc((size_t)(n ? n : 1) * S);                                       \
        uint8_t *sid = malloc((size_t)(n ? n : 1));                                     \
        if (!tmp || !sid) { free(tmp); free(sid); return -1; }                          \
        for (Py_ssize_t i = 0; i < n; i++) {                                            \
            T d = 0;                                                                    \
            for (int k = 0; k < S; k++) d |= (T)((T)pl[k][i] << (8 * k));               \
            tmp[i] = mode == MODE_XOR ? d : (T)((d >> 1) ^ (T)(0 - (T)(d & 1)));        \
        }                                                                               \
        Py_ssize_t cur[NQ][256], m;                                                     \
        seg_cursors(base, n, S, map, sid, cur, &m);                                     \
        if (mode == MODE_XOR) {                                                         \
            for (Py_ssize_t i = 0; i < m; i++)                                          \
                for (int q = 0; q < NQ; q++) JOIN_AT(T, S, q * m + i, cur[q], ^);       \
            for (Py_ssize_t i = NQ * m; i < n; i++) JOIN_AT(T, S, i, cur[NQ - 1], ^);   \
        } else {                                                                        \
            for (Py_ssize_t i = 0; i < m; i++)                                          \
                for (int q = 0; q < NQ; q++) JOIN_AT(T, S, q * m + i, cur[q], +);       \
            for (Py_ssize_t i = NQ * m; i < n; i++) JOIN_AT(T, S, i, cur[NQ - 1], +);   \
        }                                                                               \
        free(tmp);                                                                      \
        free(sid);                                                                      \
        return 0;                                                                       \
    }

DEFINE_SEGMENTED(uint16_t, 2)
DEFINE_SEGMENTED(uint32_t, 4)

static int valid_itemsize(int s) { return s == 1 || s == 2 || s == 4 || s == 8; }

/* A segment map (256 bytes) needs a base, mode XOR or SUB and itemsize 2 or 4. */
static int get_segmap(PyObject *o, int s, int mode, Py_buffer *mb, int *have) {
    if (o == Py_None) return 0;
    if (!((s == 2 || s == 4) && mode != MODE_NONE)) {
        PyErr_SetString(PyExc_ValueError, "a segment map needs a base and itemsize 2 or 4");
        return -1;
    }
    if (PyObject_GetBuffer(o, mb, PyBUF_SIMPLE) < 0) return -1;
    *have = 1;
    if (mb->len != 256) {
        PyErr_SetString(PyExc_ValueError, "a segment map has 256 bytes");
        return -1;
    }
    return 0;
}

/* planes_split(raw, base or None, itemsize, mode[, segmap]) -> tuple of itemsize planes:
 * byte k of every element of d, where d = raw (mode 0), raw ^ base (1) or
 * zigzag(raw - base) (2) per little-endian element; in element order, or
 * stably partitioned by segment when a segment map is given. */
static PyObject *planes_split(PyObject *self, PyObject *args) {
    Py_buffer rb, bb = {0}, mb = {0};
    PyObject *baseobj, *mapobj = Py_None;
    int s, mode;
    if (!PyArg_ParseTuple(args, "y*Oii|O", &rb, &baseobj, &s, &mode, &mapobj)) return NULL;
    PyObject *tuple = NULL;
    int have_base = 0, have_map = 0;
    if (!valid_itemsize(s) || rb.len % s || mode < 0 || mode > 2) {
        PyErr_SetString(PyExc_ValueError, "bad itemsize, length or mode");
        goto done;
    }
    if (get_segmap(mapobj, s, mode, &mb, &have_map) < 0) goto done;
    if (mode != MODE_NONE) {
        if (PyObject_GetBuffer(baseobj, &bb, PyBUF_SIMPLE) < 0) goto done;
        have_base = 1;
        if (bb.len != rb.len) { PyErr_SetString(PyExc_ValueError, "base length differs"); goto done; }
    }
    Py_ssize_t n = rb.len / s;
    uint8_t *pl[8];
    tuple = PyTuple_New(s);
    if (!tuple) goto done;
    for (int k = 0; k < s; k++) {
        char *d;
        PyObject *p = new_bytes(n, &d);
        if (!p) { Py_CLEAR(tuple); goto done; }
        pl[k] = (uint8_t *)d;
        PyTuple_SET_ITEM(tuple, k, p);
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *r = rb.buf, *b = have_base ? bb.buf : NULL, *map = have_map ? mb.buf : NULL;
    if (map && s == 2) failed = split_seg_2(r, b, n, mode, map, pl);
    else if (map) failed = split_seg_4(r, b, n, mode, map, pl);
    else switch (s) {
    case 1: split_1(r, b, n, mode, pl); break;
    case 2: split_2r(r, b, n, mode, pl); break;
    case 4: split_4r(r, b, n, mode, pl); break;
    default: split_8(r, b, n, mode, pl); break;
    }
    Py_END_ALLOW_THREADS
    if (failed) { Py_CLEAR(tuple); PyErr_NoMemory(); }
done:
    if (have_map) PyBuffer_Release(&mb);
    if (have_base) PyBuffer_Release(&bb);
    PyBuffer_Release(&rb);
    return tuple;
}

/* planes_join(planes tuple, base or None, mode[, dest[, segmap]]) -> bytes: inverse of
 * planes_split (True when written into the writable buffer dest; dest None for bytes). */
static PyObject *planes_join(PyObject *self, PyObject *args) {
    PyObject *planes, *baseobj, *dest = Py_None, *mapobj = Py_None;
    int mode;
    if (!PyArg_ParseTuple(args, "OOi|OO", &planes, &baseobj, &mode, &dest, &mapobj)) return NULL;
    if (!PyTuple_Check(planes) || !valid_itemsize((int)PyTuple_GET_SIZE(planes)) || mode < 0 || mode > 2) {
        PyErr_SetString(PyExc_ValueError, "bad planes or mode");
        return NULL;
    }
    int s = (int)PyTuple_GET_SIZE(planes), got = 0, have_base = 0, have_dest = 0, have_map = 0;
    Py_buffer pb[8], bb = {0}, db = {0}, mb = {0};
    PyObject *out = NULL;
    if (get_segmap(mapobj, s, mode, &mb, &have_map) < 0) goto done;
    for (; got < s; got++)
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(planes, got), &pb[got], PyBUF_SIMPLE) < 0) goto done;
    Py_ssize_t n = pb[0].len;
    for (int k = 1; k < s; k++)
        if (pb[k].len != n) { PyErr_SetString(PyExc_ValueError, "planes differ in length"); goto done; }
    if (mode != MODE_NONE) {
        if (PyObject_GetBuffer(baseobj, &bb, PyBUF_SIMPLE) < 0) goto done;
        have_base = 1;
        if (bb.len != n * s) { PyErr_SetString(PyExc_ValueError, "base length differs"); goto done; }
    }
    char *od = NULL;
    out = join_output(dest, &db, &have_dest, n * s, &od);
    if (!out) goto done;
    const uint8_t *pl[8];
    for (int k = 0; k < s; k++) pl[k] = pb[k].buf;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    uint8_t *o = (uint8_t *)od;
    const uint8_t *b = have_base ? bb.buf : NULL, *map = have_map ? mb.buf : NULL;
    if (map && s == 2) failed = join_seg_2(o, b, n, mode, map, pl);
    else if (map) failed = join_seg_4(o, b, n, mode, map, pl);
    else switch (s) {
    case 1: join_1(o, b, n, mode, pl); break;
    case 2: join_2(o, b, n, mode, pl); break;
    case 4: join_4(o, b, n, mode, pl); break;
    default: join_8(o, b, n, mode, pl); break;
    }
    Py_END_ALLOW_THREADS
    if (failed) { Py_CLEAR(out); PyErr_NoMemory(); }
done:
    for (int k = 0; k < got; k++) PyBuffer_Release(&pb[k]);
    if (have_map) PyBuffer_Release(&mb);
    if (have_base) PyBuffer_Release(&bb);
    if (have_dest) PyBuffer_Release(&db);
    return out;
}

/* ---- casts -------------------------------------------------------------- */

/* cast_bf16(f32 bytes, rne) -> bytes: the bf16 bit patterns of little-endian
 * fp32 values, rounded to nearest even (NaN -> 0x7FC0) or truncated (cast.apply). */
static PyObject *cast_bf16(PyObject *self, PyObject *args) {
    Py_buffer bb;
    int rne;
    if (!PyArg_ParseTuple(args, "y*p", &bb, &rne)) return NULL;
    PyObject *out = NULL;
    if (bb.len % 4) {
        PyErr_SetString(PyExc_ValueError, "fp32 bytes must be a multiple of 4");
        goto done;
    }
    Py_ssize_t n = bb.len / 4;
    char *od;
    out = new_bytes(2 * n, &od);
    if (!out) goto done;
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *restrict in = bb.buf;
    uint8_t *restrict o = (uint8_t *)od;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, in + 4 * i, 4);
        uint16_t r;
        if (rne) {
            r = (uint16_t)((uint32_t)(u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
            r = (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)0x7FC0 : r;
        } else {
            r = (uint16_t)(u >> 16);
        }
        memcpy(o + 2 * i, &r, 2);
    }
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&bb);
    return out;
}

/* Elements of width s that differ between A and B. An exact match (the common case: a
 * faithful cast) is settled by memcmp; otherwise typed loops the compiler vectorises. */
static Py_ssize_t count_differing(const uint8_t *A, const uint8_t *B, Py_ssize_t n, int s) {
    if (memcmp(A, B, (size_t)n * s) == 0) return 0;
    Py_ssize_t diff = 0;
    if (s == 2) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint16_t a, b;
            memcpy(&a, A + 2 * i, 2);
            memcpy(&b, B + 2 * i, 2);
            diff += a != b;
        }
    } else if (s == 4) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t a, b;
            memcpy(&a, A + 4 * i, 4);
            memcpy(&b, B + 4 * i, 4);
            diff += a != b;
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) diff += memcmp(A + i * s, B + i * s, s) != 0;
    }
    return diff;
}

/* xor_count(a, b, itemsize) -> (number of differing elements, a ^ b as bytes or None when equal). */
static PyObject *xor_count(PyObject *self, PyObject *args) {
    Py_buffer ab, bb;
    int s;
    if (!PyArg_ParseTuple(args, "y*y*i", &ab, &bb, &s)) return NULL;
    PyObject *out = NULL, *x = NULL;
    if (!valid_itemsize(s) || ab.len != bb.len || ab.len % s) {
        PyErr_SetString(PyExc_ValueError, "xor_count needs equal lengths of whole elements");
        goto done;
    }
    Py_ssize_t n = ab.len / s, diff = 0;
    const uint8_t *A = ab.buf, *B = bb.buf;
    Py_BEGIN_ALLOW_THREADS
    diff = count_differing(A, B, n, s);
    Py_END_ALLOW_THREADS
    if (diff) {
        char *xd;
        x = new_bytes(ab.len, &xd);
        if (!x) goto done;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < ab.len; i++) xd[i] = (char)(A[i] ^ B[i]);
        Py_END_ALLOW_THREADS
    } else {
        x = Py_None;
        Py_INCREF(x);
    }
    out = Py_BuildValue("(nO)", diff, x);
done:
    Py_XDECREF(x);
    PyBuffer_Release(&ab);
    PyBuffer_Release(&bb);
    return out;
}

/* ---- rANS ---------------------------------------------------------------
 *
 * An order-0 range-ANS coder for byte streams whose zstd Huffman literals sit
 * measurably above their entropy (fsplit's j stream: 1.2%). Format (rans.py
 * holds the numpy reference and the description): version byte 1, scale bits
 * n, u32 count, a 32-byte bitmap of present symbols, a u16 frequency per
 * present symbol (summing to 2^n), RANS_LANES u32 lane states, then u16
 * words. Symbol i is coded by lane i % RANS_LANES; a lane's 32-bit state
 * lives in [2^16, 2^32) and renormalises by at most one 16-bit word per
 * symbol, so a decoder step reads words in lane order. */

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define RANS_SIMD 1
#endif

#define RANS_LANES 32
#define RANS_L (1u << 16)
#define RANS_HEAD (1 + 1 + 4 + 32)

static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* Encoding. Symbols are encoded backwards (the decoder reads forwards); a
 * step of RANS_LANES symbols visits its lanes from the last down, each lane
 * writing its renormalisation word (if any) below the previous one. Per
 * symbol s: need = x >= xmax(s) = 2^(32-n) f(s); x >>= 16 if need; then
 * x = x + c(s) + floor(x / f(s)) (2^n - f(s)), which is
 * floor(x / f) 2^n + x mod f + c. */
typedef struct {
    uint64_t xmax, rcp; /* rcp = ceil(2^64 / f): x / f = (x * rcp) >> 64 for x < 2^32, 2 <= f < 2^16 */
    uint32_t f, c;
} rans_sym;

static inline __attribute__((always_inline)) uint8_t *
rans_enc_step(const uint8_t *restrict d, int lanes, const int n, const rans_sym *sy, uint32_t *x,
              uint8_t *w, uint32_t *zero) {
    for (int l = lanes - 1; l >= 0; l--) {
        const rans_sym *e = &sy[d[l]];
        uint32_t v = x[l];
        uint32_t need = (uint64_t)v >= e->xmax;
        w[-2] = (uint8_t)v; /* written always, kept only when needed: no branch */
        w[-1] = (uint8_t)(v >> 8);
        w -= 2 * need;
        v >>= need << 4;
        uint32_t fs = e->f, q;
        *zero |= fs == 0;
#ifdef __SIZEOF_INT128__
        q = fs >= 2 ? (uint32_t)(((unsigned __int128)v * e->rcp) >> 64) : v;
#else
        q = fs ? v / fs : 0;
#endif
        x[l] = (q << n) + (v - q * fs) + e->c;
    }
    return w;
}

#ifdef RANS_SIMD
/* The encoder's tables for the SSE4.1 step, per symbol: xmax - 1 capped at
 * 2^32 - 1 (so an unsigned "x > xm" is "x >= xmax"), 2^n - f, c, a
 * reciprocal 1/f biased up by 2^-50 (floor(x * inv) = floor(x / f) exactly
 * for x < 2^32, f < 2^16: the product lands in [x/f, x/f + 2^-17/f]), and
 * whether f is 0 (a symbol the table lacks). */
typedef struct {
    uint32_t xm[256], cf[256], c[256];
    double inv[256];
    uint8_t missing[256];
} rans_simd_tab;

/* pshufb masks that gather the low 16 bits of the lanes set in m, ascending,
 * into the top 2 * popcount(m) bytes of the low 8 bytes */
static uint8_t rans_pack[16][16];

static void rans_pack_init(void) {
    for (int m = 0; m < 16; m++) {
        memset(rans_pack[m], 0x80, 16);
        int k = __builtin_popcount((unsigned)m), i = 0;
        for (int l = 0; l < 4; l++)
            if (m >> l & 1) {
                rans_pack[m][8 - 2 * k + 2 * i] = (uint8_t)(4 * l);
                rans_pack[m][8 - 2 * k + 2 * i + 1] = (uint8_t)(4 * l + 1);
                i++;
            }
    }
}

/* One whole step, lanes 31..0 four at a time: the same bytes as rans_enc_step. */
__attribute__((target("sse4.1,popcnt")))
static uint8_t *rans_enc_step_sse41(const uint8_t *restrict d, const rans_simd_tab *t, uint32_t M, uint32_t *x,
                                    uint8_t *w, uint32_t *zero) {
    const __m128i sign = _mm_set1_epi32((int)0x80000000u), m1 = _mm_set1_epi32((int)(M - 1));
    const __m128d two31 = _mm_set1_pd(2147483648.0);
    uint32_t z = 0;
    for (int g = RANS_LANES - 4; g >= 0; g -= 4) {
        unsigned s0 = d[g], s1 = d[g + 1], s2 = d[g + 2], s3 = d[g + 3];
        z |= t->missing[s0] | t->missing[s1] | t->missing[s2] | t->missing[s3];
        __m128i xv = _mm_loadu_si128((const __m128i *)(x + g));
        __m128i xm = _mm_set_epi32((int)t->xm[s3], (int)t->xm[s2], (int)t->xm[s1], (int)t->xm[s0]);
        __m128i need = _mm_cmpgt_epi32(_mm_xor_si128(xv, sign), _mm_xor_si128(xm, sign));
        int m = _mm_movemask_ps(_mm_castsi128_ps(need));
        _mm_storel_epi64((__m128i *)(w - 8), _mm_shuffle_epi8(xv, _mm_loadu_si128((const __m128i *)rans_pack[m])));
        w -= 2 * _mm_popcnt_u32((unsigned)m);
        xv = _mm_blendv_epi8(xv, _mm_srli_epi32(xv, 16), need);
        __m128i xs = _mm_xor_si128(xv, sign);
        __m128d lo = _mm_add_pd(_mm_cvtepi32_pd(xs), two31), hi = _mm_add_pd(_mm_cvtepi32_pd(_mm_srli_si128(xs, 8)), two31);
        lo = _mm_mul_pd(lo, _mm_set_pd(t->inv[s1], t->inv[s0]));
        hi = _mm_mul_pd(hi, _mm_set_pd(t->inv[s3], t->inv[s2]));
        __m128i q = _mm_unpacklo_epi64(_mm_cvttpd_epi32(lo), _mm_cvttpd_epi32(hi));
        __m128i cf = _mm_set_epi32((int)t->cf[s3], (int)t->cf[s2], (int)t->cf[s1], (int)t->cf[s0]);
        q = _mm_blendv_epi8(q, xv, _mm_cmpeq_epi32(cf, m1)); /* f = 1: q = x, which may pass 2^31 */
        __m128i c = _mm_set_epi32((int)t->c[s3], (int)t->c[s2], (int)t->c[s1], (int)t->c[s0]);
        xv = _mm_add_epi32(_mm_add_epi32(xv, c), _mm_mullo_epi32(q, cf));
        _mm_storeu_si128((__m128i *)(x + g), xv);
    }
    *zero |= z;
    return w;
}
#endif

/* Encode d[0..count) backwards into the words ending at w (at least 8 bytes
 * of room below the lowest word); returns the new start of the words, or
 * NULL when a symbol has frequency 0. */
static uint8_t *rans_encode_lanes(const uint8_t *restrict d, Py_ssize_t count, int n, const uint32_t *f,
                                  const uint32_t *c, const uint64_t *xmax, uint32_t *st, uint8_t *w) {
    rans_sym sy[256];
    for (int s = 0; s < 256; s++) {
        sy[s].xmax = xmax[s];
        sy[s].f = f[s];
        sy[s].c = c[s];
#ifdef __SIZEOF_INT128__
        sy[s].rcp = f[s] >= 2 ? (uint64_t)((((unsigned __int128)1 << 64) + f[s] - 1) / f[s]) : 0;
#else
        sy[s].rcp = 0;
#endif
    }
    uint32_t x[RANS_LANES], zero = 0;
    for (int l = 0; l < RANS_LANES; l++) x[l] = RANS_L;
    if (count > 0) {
        Py_ssize_t i = (count - 1) / RANS_LANES * RANS_LANES;
        if (count - i < RANS_LANES) { /* the partial last step comes first */
            w = rans_enc_step(d + i, (int)(count - i), n, sy, x, w, &zero);
            i -= RANS_LANES;
        }
#ifdef RANS_SIMD
        if (i >= 0 && __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("popcnt")) {
            rans_simd_tab t;
            for (int s = 0; s < 256; s++) {
                t.xm[s] = xmax[s] > 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)(xmax[s] - (xmax[s] != 0));
                t.cf[s] = (1u << n) - f[s];
                t.c[s] = c[s];
                t.inv[s] = f[s] ? 1.0 / f[s] * (1.0 + 0x1p-50) : 0.0;
                t.missing[s] = f[s] == 0;
            }
            for (; i >= 0; i -= RANS_LANES) w = rans_enc_step_sse41(d + i, &t, 1u << n, x, w, &zero);
        }
#endif
        for (; i >= 0; i -= RANS_LANES)
            w = n == 14 ? rans_enc_step(d + i, RANS_LANES, 14, sy, x, w, &zero)
                        : rans_enc_step(d + i, RANS_LANES, n, sy, x, w, &zero);
    }
    memcpy(st, x, sizeof x);
    return zero ? NULL : w;
}

/* rans_encode(data, freqs, scale) -> bytes. freqs: 256 little-endian u32
 * (rans.normalize's table: every symbol of data present, summing to 2^scale). */
static PyObject *rans_encode(PyObject *self, PyObject *args) {
    Py_buffer db, fb;
    int n;
    if (!PyArg_ParseTuple(args, "y*y*i", &db, &fb, &n)) return NULL;
    PyObject *out = NULL;
    uint8_t *tmp = NULL;
    uint32_t f[256], c[256], sum = 0;
    uint64_t xmax[256]; /* 2^32 for a symbol of frequency 2^scale */
    int present = 0;
    if (fb.len != 1024 || n < 8 || n > 15 || db.len < 1 || db.len > 0xFFFFFFFFu) {
        PyErr_SetString(PyExc_ValueError, "bad frequency table, scale or length");
        goto done;
    }
    for (int s = 0; s < 256; s++) {
        f[s] = rd32((const uint8_t *)fb.buf + 4 * s);
        c[s] = sum;
        sum += f[s];
        present += f[s] != 0;
        xmax[s] = ((uint64_t)(RANS_L >> n) << 16) * f[s];
    }
    if (sum != (1u << n)) { PyErr_SetString(PyExc_ValueError, "frequencies do not sum to 2^scale"); goto done; }
    const uint8_t *d = db.buf;
    Py_ssize_t count = db.len;
    /* words are written backwards from the end of tmp */
    Py_ssize_t cap = 2 * count + 16;
    tmp = PyMem_RawMalloc(cap);
    if (!tmp) { PyErr_NoMemory(); goto done; }
    uint32_t st[RANS_LANES];
    uint8_t *w = tmp + cap;
    Py_BEGIN_ALLOW_THREADS
    w = rans_encode_lanes(d, count, n, f, c, xmax, st, w);
    Py_END_ALLOW_THREADS
    if (!w) { PyErr_SetString(PyExc_ValueError, "a symbol of the data has frequency 0"); goto done; }
    Py_ssize_t nwords = (tmp + cap - w) / 2;
    Py_ssize_t head = RANS_HEAD + 2 * present + 4 * RANS_LANES;
    char *o;
    out = new_bytes(head + 2 * nwords, &o);
    if (!out) goto done;
    uint8_t *p = (uint8_t *)o;
    p[0] = 1;
    p[1] = (uint8_t)n;
    wr32(p + 2, (uint32_t)count);
    memset(p + 6, 0, 32);
    uint8_t *q = p + RANS_HEAD;
    for (int s = 0; s < 256; s++)
        if (f[s]) { p[6 + s / 8] |= (uint8_t)(1u << (s % 8)); q[0] = (uint8_t)f[s]; q[1] = (uint8_t)(f[s] >> 8); q += 2; }
    for (int l = 0; l < RANS_LANES; l++, q += 4) wr32(q, st[l]);
    memcpy(q, w, 2 * nwords);
done:
    PyMem_RawFree(tmp);
    PyBuffer_Release(&db);
    PyBuffer_Release(&fb);
    return out;
}

#ifdef RANS_SIMD
/* shuffle masks that spread the first popcount(m) u16 words of a register
 * into the 32-bit lanes whose bit is set in m (other lanes get zero) */
static uint8_t rans_spread[16][16];

static void rans_spread_init(void) {
    for (int m = 0; m < 16; m++) {
        int w = 0;
        for (int l = 0; l < 4; l++) {
            uint8_t *o = rans_spread[m] + 4 * l;
            if (m >> l & 1) { o[0] = (uint8_t)(2 * w); o[1] = (uint8_t)(2 * w + 1); w++; }
            else o[0] = o[1] = 0x80;
            o[2] = o[3] = 0x80;
        }
    }
}

/* rans_decode_lanes's fast path: a whole step of 32 lanes, 4 at a time
 * (SSE4.1), when at least 32 words remain (no read can overrun). */
__attribute__((target("sse4.1,popcnt")))
static void rans_step_sse41(uint8_t *restrict od, uint32_t *restrict x, int n, const uint8_t *restrict sym,
                            const uint32_t *restrict tab, const uint8_t *restrict words, Py_ssize_t *pos) {
    const __m128i mask = _mm_set1_epi32((1 << n) - 1), lo16 = _mm_set1_epi32(0xFFFF), zero = _mm_setzero_si128();
    const __m128i shift = _mm_cvtsi32_si128(n);
    Py_ssize_t p = *pos;
    for (int g = 0; g < RANS_LANES; g += 4) {
        __m128i xv = _mm_loadu_si128((const __m128i *)(x + g));
        __m128i sl = _mm_and_si128(xv, mask);
        uint32_t s0 = (uint32_t)_mm_cvtsi128_si32(sl), s1 = (uint32_t)_mm_extract_epi32(sl, 1);
        uint32_t s2 = (uint32_t)_mm_extract_epi32(sl, 2), s3 = (uint32_t)_mm_extract_epi32(sl, 3);
        od[g] = sym[s0]; od[g + 1] = sym[s1]; od[g + 2] = sym[s2]; od[g + 3] = sym[s3];
        __m128i e = _mm_set_epi32((int)tab[s3], (int)tab[s2], (int)tab[s1], (int)tab[s0]);
        xv = _mm_add_epi32(_mm_mullo_epi32(_mm_srli_epi32(e, 16), _mm_srl_epi32(xv, shift)), _mm_and_si128(e, lo16));
        __m128i need = _mm_cmpeq_epi32(_mm_srli_epi32(xv, 16), zero);
        int m = _mm_movemask_ps(_mm_castsi128_ps(need));
        __m128i w = _mm_loadl_epi64((const __m128i *)(words + 2 * p));
        w = _mm_shuffle_epi8(w, _mm_loadu_si128((const __m128i *)rans_spread[m]));
        xv = _mm_blendv_epi8(xv, _mm_or_si128(_mm_slli_epi32(xv, 16), w), need);
        _mm_storeu_si128((__m128i *)(x + g), xv);
        p += _mm_popcnt_u32((unsigned)m);
    }
    *pos = p;
}
#endif

/* Decode count symbols into od. Per step of RANS_LANES symbols, first every
 * lane decodes its symbol (independent work), then the lanes renormalise in
 * order (the word cursor is the only serial part). Returns 1 on an over-read. */
static int rans_decode_lanes(uint8_t *restrict od, Py_ssize_t count, uint32_t *restrict st, int n,
                             const uint8_t *restrict sym, const uint32_t *restrict tab,
                             const uint8_t *restrict words, Py_ssize_t nwords, Py_ssize_t *pos_out) {
    uint32_t mask = (1u << n) - 1, x[RANS_LANES];
    Py_ssize_t pos = 0;
    int bad = 0;
    memcpy(x, st, sizeof x);
    Py_ssize_t i = 0;
#ifdef RANS_SIMD
    if (__builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("popcnt"))
        for (; i + RANS_LANES <= count && pos + RANS_LANES + 4 <= nwords; i += RANS_LANES)
            rans_step_sse41(od + i, x, n, sym, tab, words, &pos);
#endif
    for (; i < count; i += RANS_LANES) {
        int lanes = count - i >= RANS_LANES ? RANS_LANES : (int)(count - i);
        for (int l = 0; l < lanes; l++) {
            uint32_t slot = x[l] & mask, e = tab[slot];
            od[i + l] = sym[slot];
            x[l] = (e >> 16) * (x[l] >> n) + (e & 0xFFFF);
        }
        if (pos + lanes <= nwords) {
            for (int l = 0; l < lanes; l++) {
                uint16_t w;
                memcpy(&w, words + 2 * pos, 2);
                /* arithmetic, not a branch: a lane needs a word about half the time */
                uint32_t need = x[l] < RANS_L;
                x[l] = (x[l] << (need << 4)) | ((uint32_t)w & (0u - need));
                pos += need;
            }
        } else {
            for (int l = 0; l < lanes; l++) {
                if (x[l] >= RANS_L) continue;
                if (pos >= nwords) { bad = 1; break; }
                x[l] = x[l] << 16 | words[2 * pos] | (uint32_t)words[2 * pos + 1] << 8;
                pos++;
            }
            if (bad) break;
        }
    }
    memcpy(st, x, sizeof x);
    *pos_out = pos;
    return bad;
}

/* rans_decode(blob, cap) -> bytes (at most cap symbols). ValueError with the
 * reason when the blob is malformed or does not decode to its own end. */
static PyObject *rans_decode(PyObject *self, PyObject *args) {
    Py_buffer bb;
    Py_ssize_t cap;
    if (!PyArg_ParseTuple(args, "y*n", &bb, &cap)) return NULL;
    PyObject *out = NULL;
    uint8_t *sym = NULL;
    uint32_t *tab = NULL;
    const char *err = NULL;
    const uint8_t *p = bb.buf;
    Py_ssize_t len = bb.len;
    if (len < RANS_HEAD || p[0] != 1 || p[1] < 8 || p[1] > 15) { err = "bad rANS header"; goto done; }
    int n = p[1];
    uint32_t M = 1u << n;
    Py_ssize_t count = rd32(p + 2);
    if (count < 1 || count > cap) { err = "rANS count out of range"; goto done; }
    uint32_t f[256] = {0}, sum = 0;
    const uint8_t *q = p + RANS_HEAD;
    for (int s = 0; s < 256; s++) {
        if (!(p[6 + s / 8] >> (s % 8) & 1)) continue;
        if (q + 2 > p + len) { err = "truncated rANS table"; goto done; }
        f[s] = q[0] | (uint32_t)q[1] << 8;
        q += 2;
        if (!f[s]) { err = "zero rANS frequency"; goto done; }
        sum += f[s];
    }
    if (sum != M) { err = "rANS frequencies do not sum to 2^scale"; goto done; }
    if (q + 4 * RANS_LANES > p + len || (p + len - q - 4 * RANS_LANES) % 2) { err = "truncated rANS stream"; goto done; }
    sym = PyMem_RawMalloc(M);
    tab = PyMem_RawMalloc(4 * (size_t)M);
    if (!sym || !tab) { PyErr_NoMemory(); goto done; }
    for (uint32_t s = 0, slot = 0; s < 256; s++)
        for (uint32_t k = 0; k < f[s]; k++, slot++) { sym[slot] = (uint8_t)s; tab[slot] = f[s] << 16 | k; }
    uint32_t st[RANS_LANES];
    for (int l = 0; l < RANS_LANES; l++, q += 4) {
        st[l] = rd32(q);
        if (st[l] < RANS_L) { err = "bad rANS state"; goto done; }
    }
    const uint8_t *words = q;
    Py_ssize_t nwords = (p + len - q) / 2, pos = 0;
    char *o;
    out = new_bytes(count, &o);
    if (!out) goto done;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    bad = rans_decode_lanes((uint8_t *)o, count, st, n, sym, tab, words, nwords, &pos);
    Py_END_ALLOW_THREADS
    if (bad || pos != nwords) err = "rANS stream does not decode to its end";
    for (int l = 0; l < RANS_LANES && !err; l++)
        if (st[l] != RANS_L) err = "rANS stream does not decode to its initial state";
done:
    if (err) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_ValueError, err);
    }
    PyMem_RawFree(sym);
    PyMem_RawFree(tab);
    PyBuffer_Release(&bb);
    return out;
}

/* Counts of the byte values of d[::stride] into tot (u32 sub-tables,
 * flushed before a count could wrap). */
static void hist_into(const uint8_t *d, Py_ssize_t n, Py_ssize_t stride, uint64_t tot[256]) {
    uint32_t h[4][256];
    memset(h, 0, sizeof h);
    memset(tot, 0, 256 * sizeof(uint64_t));
    Py_ssize_t i = 0, block = stride * ((Py_ssize_t)1 << 30);
    while (i < n) {
        Py_ssize_t end = n - i > block ? i + block : n;
        if (stride == 1)
            for (; i + 4 <= end; i += 4) { h[0][d[i]]++; h[1][d[i + 1]]++; h[2][d[i + 2]]++; h[3][d[i + 3]]++; }
        for (; i < end; i += stride) h[0][d[i]]++;
        for (int s = 0; s < 256; s++) {
            tot[s] += (uint64_t)h[0][s] + h[1][s] + h[2][s] + h[3][s];
            h[0][s] = h[1][s] = h[2][s] = h[3][s] = 0;
        }
    }
}

/* byte_hist(data[, stride]) -> bytes: 256 little-endian u64 counts of the
 * byte values of data[::stride]. */
static PyObject *byte_hist(PyObject *self, PyObject *args) {
    Py_buffer db;
    Py_ssize_t stride = 1;
    if (!PyArg_ParseTuple(args, "y*|n", &db, &stride)) return NULL;
    if (stride < 1) {
        PyBuffer_Release(&db);
        PyErr_SetString(PyExc_ValueError, "stride must be at least 1");
        return NULL;
    }
    uint64_t tot[256];
    Py_BEGIN_ALLOW_THREADS
    hist_into(db.buf, db.len, stride, tot);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&db);
    char *o;
    PyObject *out = new_bytes(256 * 8, &o);
    if (!out) return NULL;
    memcpy(o, tot, sizeof tot);
    return out;
}

/* order0_bytes(data[, stride]) -> float: the order-0 entropy of
 * data[::stride], in bytes, scaled to the length of data (an estimate of
 * what an order-0 coder needs for data). The plug-in entropy of N samples
 * with K distinct values is biased low by about (K - 1) / (2 N ln 2) bits per
 * symbol; that Miller-Madow term is added, so a near-uniform sample is not
 * mistaken for a compressible one. */
static PyObject *order0_bytes(PyObject *self, PyObject *args) {
    Py_buffer db;
    Py_ssize_t stride = 1;
    if (!PyArg_ParseTuple(args, "y*|n", &db, &stride)) return NULL;
    if (stride < 1) {
        PyBuffer_Release(&db);
        PyErr_SetString(PyExc_ValueError, "stride must be at least 1");
        return NULL;
    }
    uint64_t tot[256], total = 0;
    double bits = 0.0;
    int present = 0;
    Py_BEGIN_ALLOW_THREADS
    hist_into(db.buf, db.len, stride, tot);
    for (int s = 0; s < 256; s++) total += tot[s];
    for (int s = 0; s < 256; s++)
        if (tot[s]) {
            bits += (double)tot[s] * log2((double)total / (double)tot[s]);
            present++;
        }
    if (present > 1) bits += (double)(present - 1) / (2.0 * log(2.0));
    Py_END_ALLOW_THREADS
    Py_ssize_t n = db.len;
    PyBuffer_Release(&db);
    return PyFloat_FromDouble(total ? bits / 8.0 * (double)n / (double)total : 0.0);
}

static PyMethodDef methods[] = {
    {"xor_count", xor_count, METH_VARARGS, "xor_count(a, b, itemsize) -> (n_diff, a ^ b or None)"},
    {"cast_bf16", cast_bf16, METH_VARARGS, "cast_bf16(f32, rne) -> bf16 bit patterns"},
    {"fsplit_split", fsplit_split, METH_VARARGS, "fsplit_split(raw, itemsize) -> (top, j, n, planes, x)"},
    {"fsplit_join", fsplit_join, METH_VARARGS, "fsplit_join(j, n, planes, x, top, itemsize[, dest]) -> bytes, True or None"},
    {"planes_split", planes_split, METH_VARARGS, "planes_split(raw, base, itemsize, mode[, segmap]) -> planes"},
    {"order0_bytes", order0_bytes, METH_VARARGS, "order0_bytes(data[, stride]) -> order-0 entropy in bytes, scaled to len(data)"},
    {"byte_hist", byte_hist, METH_VARARGS, "byte_hist(data[, stride]) -> 256 u64 counts of data[::stride]"},
    {"rans_encode", rans_encode, METH_VARARGS, "rans_encode(data, freqs, scale) -> rANS blob"},
    {"rans_decode", rans_decode, METH_VARARGS, "rans_decode(blob, cap) -> bytes"},
    {"exp_counts", exp_counts, METH_VARARGS, "exp_counts(base, itemsize) -> 256 u64 counts of the exponent keys"},
    {"planes_join", planes_join, METH_VARARGS, "planes_join(planes, base, mode[, dest[, segmap]]) -> bytes or True"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "One-pass codec transforms.", -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
#ifdef RANS_SIMD
    rans_spread_init();
    rans_pack_init();
#endif
    return PyModule_Create(&module);
}
