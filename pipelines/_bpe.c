/*
 * pipelines._bpe: GPT-2-style byte-level BPE encoding of many documents on several threads.
 *
 * Written for this project (see pipelines/fast_bpe.py, the only user).  The encoder reproduces a Hugging Face
 * `tokenizers` pipeline made of the ByteLevel pre-tokenizer (GPT-2's split pattern, no prefix space) and a BPE model
 * without dropout:
 *
 *   1. Pre-tokenisation: a hand-written state machine equivalent to the pattern
 *        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *      over the code points of a Python str (read in place, whatever its PEP 393 width).  The class of every code
 *      point (letter, number, whitespace, other, or "unsure") comes from a table built in Python.
 *   2. Each piece is turned into UTF-8 bytes, each byte into its byte token, and the adjacent pair with the lowest
 *      merge rank is merged (leftmost first on ties) until no pair has a merge -- what `tokenizers`' BPE does.
 *
 * Lookups, in order: whole pieces that are one vocabulary token (a read-only table, filled at construction only
 * with tokens whose own BPE gives exactly themselves, so the shortcut never changes a result), a per-thread cache of
 * pieces already encoded (kept between calls, cleared when full), then the merge loop.
 *
 * A document is reported back as "not encoded" (length -1) when it holds a code point of the "unsure" class
 * (unassigned in Python's Unicode database, surrogates) or a piece longer than PIECE_LIMIT bytes; the caller
 * encodes those with the reference tokenizer.
 *
 * Threads: the tables are read-only after construction; every worker has its own cache and buffers.  Long documents
 * are cut at positions where a whitespace character follows a non-whitespace one -- the pattern always has a piece
 * boundary there and matching after it never looks back -- so one big document also uses every thread.  The GIL is
 * released for the whole encoding; calls on one Encoder are serialised by a mutex.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { CL_OTHER = 0, CL_LETTER = 1, CL_NUMBER = 2, CL_SPACE = 3, CL_UNSURE = 4 };

#define NUM_CODEPOINTS 0x110000
#define PIECE_LIMIT 4096     /* bytes; a longer piece sends its document back */
#define CHUNK_CHARS 65536    /* long documents are cut into work items of about this many code points */
#define MAX_THREADS 64
#define CACHE_SLOTS (1u << 16)
#define CACHE_MAX_COUNT (CACHE_SLOTS / 2)
#define CACHE_MAX_KEY 255
#define CACHE_KEY_ARENA (1u << 21)
#define CACHE_ID_ARENA (1u << 19)
#define NO_RANK UINT32_MAX

/* ---------------------------------------------------------------------------------------------------------------- */
/* hashing                                                                                                            */

static inline uint64_t mix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

static inline uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)n * 0xff51afd7ed558ccdULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = (h ^ w) * 0x94d049bb133111ebULL;
        h ^= h >> 29;
    }
    return mix64(h);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* read-only tables                                                                                                   */

typedef struct {
    uint64_t key; /* (left << 32) | right; EMPTY_KEY when free */
    uint32_t rank;
    uint32_t new_id;
} MergeSlot;

#define EMPTY_KEY UINT64_MAX

typedef struct {
    uint64_t hash;
    uint32_t off; /* into vocab_bytes */
    uint32_t len; /* 0: free slot */
    uint32_t id;
} VocabSlot;

typedef struct {
    uint32_t byte_id[256];
    MergeSlot *merges;
    size_t merge_mask;
    VocabSlot *vocab;
    size_t vocab_mask;
    uint8_t *vocab_bytes;
    uint8_t *classes; /* NUM_CODEPOINTS entries */
} Tables;

static inline uint32_t merge_rank(const Tables *T, uint32_t left, uint32_t right, uint32_t *new_id) {
    uint64_t key = ((uint64_t)left << 32) | right;
    size_t i = (size_t)mix64(key) & T->merge_mask;
    for (;;) {
        const MergeSlot *s = &T->merges[i];
        if (s->key == key) {
            *new_id = s->new_id;
            return s->rank;
        }
        if (s->key == EMPTY_KEY) return NO_RANK;
        i = (i + 1) & T->merge_mask;
    }
}

static inline int vocab_find(const Tables *T, uint64_t h, const uint8_t *p, size_t n, uint32_t *id) {
    if (!T->vocab) return 0;
    size_t i = (size_t)h & T->vocab_mask;
    for (;;) {
        const VocabSlot *s = &T->vocab[i];
        if (s->len == 0) return 0;
        if (s->hash == h && s->len == n && memcmp(T->vocab_bytes + s->off, p, n) == 0) {
            *id = s->id;
            return 1;
        }
        i = (i + 1) & T->vocab_mask;
    }
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* per-thread state                                                                                                   */

typedef struct {
    uint64_t hash;
    uint32_t key_off;
    uint32_t ids_off;
    uint16_t key_len; /* 0: free slot */
    uint16_t n_ids;
} CacheSlot;

typedef struct {
    CacheSlot *slots;
    size_t count;
    uint8_t *keys;
    size_t keys_len;
    uint32_t *ids;
    size_t ids_len;
    uint8_t piece[PIECE_LIMIT + 8];
    uint32_t sym[PIECE_LIMIT];
    uint32_t rank[PIECE_LIMIT];
    uint32_t next_id[PIECE_LIMIT];
    uint32_t *out;
    size_t out_len, out_cap;
    int oom;
    PyObject *ends; /* split() only: a list that receives the end of every piece */
} Worker;

static Worker *worker_new(void) {
    Worker *w = calloc(1, sizeof(Worker));
    if (!w) return NULL;
    w->slots = calloc(CACHE_SLOTS, sizeof(CacheSlot));
    w->keys = malloc(CACHE_KEY_ARENA);
    w->ids = malloc(CACHE_ID_ARENA * sizeof(uint32_t));
    if (!w->slots || !w->keys || !w->ids) {
        free(w->slots);
        free(w->keys);
        free(w->ids);
        free(w);
        return NULL;
    }
    return w;
}

static void worker_free(Worker *w) {
    if (!w) return;
    free(w->slots);
    free(w->keys);
    free(w->ids);
    free(w->out);
    free(w);
}

static void cache_clear(Worker *w) {
    memset(w->slots, 0, CACHE_SLOTS * sizeof(CacheSlot));
    w->count = w->keys_len = w->ids_len = 0;
}

static inline const CacheSlot *cache_find(const Worker *w, uint64_t h, const uint8_t *p, size_t n) {
    size_t i = (size_t)h & (CACHE_SLOTS - 1);
    for (;;) {
        const CacheSlot *s = &w->slots[i];
        if (s->key_len == 0) return NULL;
        if (s->hash == h && s->key_len == n && memcmp(w->keys + s->key_off, p, n) == 0) return s;
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
}

static void cache_insert(Worker *w, uint64_t h, const uint8_t *p, size_t n, const uint32_t *ids, size_t m) {
    if (w->count >= CACHE_MAX_COUNT || w->keys_len + n > CACHE_KEY_ARENA || w->ids_len + m > CACHE_ID_ARENA)
        cache_clear(w);
    size_t i = (size_t)h & (CACHE_SLOTS - 1);
    while (w->slots[i].key_len != 0) i = (i + 1) & (CACHE_SLOTS - 1);
    CacheSlot *s = &w->slots[i];
    s->hash = h;
    s->key_off = (uint32_t)w->keys_len;
    s->ids_off = (uint32_t)w->ids_len;
    s->key_len = (uint16_t)n;
    s->n_ids = (uint16_t)m;
    memcpy(w->keys + w->keys_len, p, n);
    memcpy(w->ids + w->ids_len, ids, m * sizeof(uint32_t));
    w->keys_len += n;
    w->ids_len += m;
    w->count++;
}

static inline int out_reserve(Worker *w, size_t extra) {
    if (w->out_len + extra <= w->out_cap) return 0;
    size_t cap = w->out_cap ? w->out_cap : 4096;
    while (cap < w->out_len + extra) cap *= 2;
    uint32_t *p = realloc(w->out, cap * sizeof(uint32_t));
    if (!p) {
        w->oom = 1;
        return -1;
    }
    w->out = p;
    w->out_cap = cap;
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* BPE of one piece                                                                                                   */

/* Merges w->sym[0..n) in place; returns the number of symbols left. */
static size_t bpe_merge(const Tables *T, Worker *w, size_t n) {
    uint32_t *sym = w->sym, *rank = w->rank, *nid = w->next_id;
    if (n < 2) return n;
    for (size_t i = 0; i + 1 < n; i++) rank[i] = merge_rank(T, sym[i], sym[i + 1], &nid[i]);
    while (n > 1) {
        uint32_t best = NO_RANK;
        size_t at = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            if (rank[i] < best) { /* strict: the leftmost of equal ranks wins */
                best = rank[i];
                at = i;
            }
        }
        if (best == NO_RANK) break;
        sym[at] = nid[at];
        /* drop symbol at+1 and the pair that started there */
        size_t tail = n - (at + 2);
        if (tail) {
            memmove(&sym[at + 1], &sym[at + 2], tail * sizeof(uint32_t));
            memmove(&rank[at + 1], &rank[at + 2], (tail - 1) * sizeof(uint32_t));
            memmove(&nid[at + 1], &nid[at + 2], (tail - 1) * sizeof(uint32_t));
        }
        n--;
        if (at > 0) rank[at - 1] = merge_rank(T, sym[at - 1], sym[at], &nid[at - 1]);
        if (at + 1 < n) rank[at] = merge_rank(T, sym[at], sym[at + 1], &nid[at]);
    }
    return n;
}

/* Encodes w->piece[0..n) and appends its ids to w->out.  Returns 0, or -1 when out of memory. */
static int encode_piece(const Tables *T, Worker *w, size_t n, int use_vocab) {
    const uint8_t *p = w->piece;
    if (out_reserve(w, n) < 0) return -1;
    if (n == 1) {
        w->out[w->out_len++] = T->byte_id[p[0]];
        return 0;
    }
    uint64_t h = hash_bytes(p, n);
    uint32_t id;
    if (use_vocab && vocab_find(T, h, p, n, &id)) {
        w->out[w->out_len++] = id;
        return 0;
    }
    if (n <= CACHE_MAX_KEY) {
        const CacheSlot *s = cache_find(w, h, p, n);
        if (s) {
            memcpy(w->out + w->out_len, w->ids + s->ids_off, s->n_ids * sizeof(uint32_t));
            w->out_len += s->n_ids;
            return 0;
        }
    }
    for (size_t i = 0; i < n; i++) w->sym[i] = T->byte_id[p[i]];
    size_t m = bpe_merge(T, w, n);
    memcpy(w->out + w->out_len, w->sym, m * sizeof(uint32_t));
    w->out_len += m;
    if (n <= CACHE_MAX_KEY) cache_insert(w, h, p, n, w->sym, m);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* pre-tokenisation                                                                                                   */

#define SPAN_OK 0
#define SPAN_UNSURE 1 /* send the document back */
#define SPAN_OOM 2

static inline int cp_class(const Tables *T, Py_UCS4 c) { return c < NUM_CODEPOINTS ? T->classes[c] : CL_UNSURE; }

/* UTF-8 of code points [a, b) into w->piece; returns the byte count, or -1 when longer than PIECE_LIMIT. */
static inline Py_ssize_t piece_utf8(Worker *w, int kind, const void *data, Py_ssize_t a, Py_ssize_t b) {
    uint8_t *o = w->piece;
    size_t n = 0;
    if (b - a > PIECE_LIMIT) return -1;
    for (Py_ssize_t i = a; i < b; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (n + 4 > PIECE_LIMIT + 4) return -1;
        if (c < 0x80) {
            o[n++] = (uint8_t)c;
        } else if (c < 0x800) {
            o[n++] = (uint8_t)(0xC0 | (c >> 6));
            o[n++] = (uint8_t)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            o[n++] = (uint8_t)(0xE0 | (c >> 12));
            o[n++] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
            o[n++] = (uint8_t)(0x80 | (c & 0x3F));
        } else {
            o[n++] = (uint8_t)(0xF0 | (c >> 18));
            o[n++] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
            o[n++] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
            o[n++] = (uint8_t)(0x80 | (c & 0x3F));
        }
    }
    if (n > PIECE_LIMIT) return -1;
    return (Py_ssize_t)n;
}

static inline __attribute__((always_inline)) int emit(const Tables *T, Worker *w, int kind, const void *data,
                                                      Py_ssize_t a, Py_ssize_t b, int use_vocab) {
    Py_ssize_t n = piece_utf8(w, kind, data, a, b);
    if (n < 0) return SPAN_UNSURE;
    if (w->ends) { /* split(): holds the GIL */
        PyObject *e = PyLong_FromSsize_t(b);
        int r = e ? PyList_Append(w->ends, e) : -1;
        Py_XDECREF(e);
        return r < 0 ? SPAN_OOM : SPAN_OK;
    }
    return encode_piece(T, w, (size_t)n, use_vocab) < 0 ? SPAN_OOM : SPAN_OK;
}

/* The end of the run of class ``cl`` that continues at ``j``, or -1 when it meets a code point the table is unsure
 * of (the document then goes back). */
static inline __attribute__((always_inline)) Py_ssize_t run_end(const Tables *T, int kind, const void *data,
                                                               Py_ssize_t j, Py_ssize_t end, int cl) {
    for (; j < end; j++) {
        int k = cp_class(T, PyUnicode_READ(kind, data, j));
        if (k != cl) return k == CL_UNSURE ? -1 : j;
    }
    return j;
}

/* Splits code points [start, end) of a str into pieces and encodes them. */
static inline __attribute__((always_inline)) int encode_span_kind(const Tables *T, Worker *w, int kind,
                                                                  const void *data, Py_ssize_t start,
                                                                  Py_ssize_t end, int use_vocab) {
    Py_ssize_t i = start;
#define RD(k) PyUnicode_READ(kind, data, (k))
#define CLS(k) cp_class(T, RD(k))
    while (i < end) {
        Py_UCS4 c = RD(i);
        int cl = cp_class(T, c);
        Py_ssize_t j;
        if (cl == CL_UNSURE) return SPAN_UNSURE;
        if (c == '\'' && i + 1 < end) { /* 's 't 're 've 'm 'll 'd (lower case only) */
            Py_UCS4 c1 = RD(i + 1);
            Py_ssize_t len = 0;
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                len = 2;
            } else if (i + 2 < end) {
                Py_UCS4 c2 = RD(i + 2);
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) len = 3;
            }
            if (len) {
                int r = emit(T, w, kind, data, i, i + len, use_vocab);
                if (r) return r;
                i += len;
                continue;
            }
        }
        j = i;
        if (c == ' ' && i + 1 < end) { /* the optional space before a letter, number or other run */
            int next = CLS(i + 1);
            if (next == CL_UNSURE) return SPAN_UNSURE;
            if (next != CL_SPACE) {
                cl = next;
                j = i + 1;
            }
        }
        /* a letter, number or other run (after its optional space), or a whitespace run */
        j = run_end(T, kind, data, j + 1, end, cl);
        if (j < 0) return SPAN_UNSURE;
        /* \s+(?!\S): followed by a non-space, a whitespace run leaves its last character to the next piece;
           a single whitespace character before a non-space is a piece of its own (\s+) */
        if (cl == CL_SPACE && j < end && j - i > 1) j--;
        {
            int r = emit(T, w, kind, data, i, j, use_vocab);
            if (r) return r;
        }
        i = j;
    }
#undef RD
#undef CLS
    return SPAN_OK;
}

static int encode_span1(const Tables *T, Worker *w, const void *d, Py_ssize_t a, Py_ssize_t b, int v) {
    return encode_span_kind(T, w, PyUnicode_1BYTE_KIND, d, a, b, v);
}
static int encode_span2(const Tables *T, Worker *w, const void *d, Py_ssize_t a, Py_ssize_t b, int v) {
    return encode_span_kind(T, w, PyUnicode_2BYTE_KIND, d, a, b, v);
}
static int encode_span4(const Tables *T, Worker *w, const void *d, Py_ssize_t a, Py_ssize_t b, int v) {
    return encode_span_kind(T, w, PyUnicode_4BYTE_KIND, d, a, b, v);
}

static int encode_span(const Tables *T, Worker *w, int kind, const void *d, Py_ssize_t a, Py_ssize_t b, int v) {
    switch (kind) {
    case PyUnicode_1BYTE_KIND: return encode_span1(T, w, d, a, b, v);
    case PyUnicode_2BYTE_KIND: return encode_span2(T, w, d, a, b, v);
    default: return encode_span4(T, w, d, a, b, v);
    }
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* the Encoder object                                                                                                 */

typedef struct {
    PyObject_HEAD
    Tables tables;
    Worker *workers[MAX_THREADS];
    pthread_mutex_t lock;
    int lock_ready;
} Encoder;

typedef struct {
    Py_ssize_t doc;
    Py_ssize_t start, end;
    int kind;
    const void *data;
    int worker;
    int status;
    size_t out_off, out_len;
} Item;

typedef struct {
    Encoder *enc;
    Item *items;
    Py_ssize_t n_items;
    Py_ssize_t next; /* the next item to take, atomically incremented */
} Shared;

typedef struct {
    Shared *shared;
    int worker;
} Job;

static void *run_worker(void *arg) {
    Job *job = (Job *)arg;
    Shared *sh = job->shared;
    Encoder *enc = sh->enc;
    Worker *w = enc->workers[job->worker];
    for (;;) {
        Py_ssize_t k = __atomic_fetch_add(&sh->next, 1, __ATOMIC_RELAXED);
        if (k >= sh->n_items) break;
        Item *it = &sh->items[k];
        size_t before = w->out_len;
        it->worker = job->worker;
        it->status = encode_span(&enc->tables, w, it->kind, it->data, it->start, it->end, 1);
        if (it->status != SPAN_OK) w->out_len = before;
        it->out_off = before;
        it->out_len = w->out_len - before;
    }
    return NULL;
}

static void tables_free(Tables *T) {
    free(T->merges);
    free(T->vocab);
    free(T->vocab_bytes);
    free(T->classes);
    memset(T, 0, sizeof(*T));
}

static void Encoder_dealloc(Encoder *self) {
    for (int i = 0; i < MAX_THREADS; i++) worker_free(self->workers[i]);
    tables_free(&self->tables);
    if (self->lock_ready) pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static size_t pow2_at_least(size_t n) {
    size_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

/* Encoder(byte_ids: bytes, merges: bytes, vocab: list[tuple[bytes, int]], classes: bytes)
 *   byte_ids: 256 native uint32, the token of each byte
 *   merges: native uint32 triples (left, right, new), in rank order
 *   vocab: whole-piece candidates (the bytes of a token and its id); kept only where BPE gives exactly that id
 *   classes: NUM_CODEPOINTS bytes, CL_* of every code point */
static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"byte_ids", "merges", "vocab", "classes", NULL};
    Py_buffer bi = {0}, mg = {0}, cl = {0};
    PyObject *vocab;
    PyObject *fast = NULL;
    Worker *probe = NULL;
    int ok = -1;
    if (self->lock_ready) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*Oy*", kwlist, &bi, &mg, &vocab, &cl)) return -1;
    Tables *T = &self->tables;
    if (bi.len != 256 * 4) {
        PyErr_SetString(PyExc_ValueError, "byte_ids must hold 256 uint32");
        goto done;
    }
    memcpy(T->byte_id, bi.buf, sizeof(T->byte_id));
    if (mg.len % 12 != 0) {
        PyErr_SetString(PyExc_ValueError, "merges must hold uint32 triples");
        goto done;
    }
    if (cl.len != NUM_CODEPOINTS) {
        PyErr_SetString(PyExc_ValueError, "classes must hold one byte per code point (0x110000)");
        goto done;
    }
    T->classes = malloc(NUM_CODEPOINTS);
    if (!T->classes) goto nomem;
    memcpy(T->classes, cl.buf, NUM_CODEPOINTS);
    for (size_t i = 0; i < NUM_CODEPOINTS; i++) {
        if (T->classes[i] > CL_UNSURE) {
            PyErr_SetString(PyExc_ValueError, "classes holds an unknown class");
            goto done;
        }
    }

    size_t n_merges = (size_t)mg.len / 12;
    size_t cap = pow2_at_least(n_merges * 2 + 2);
    T->merges = malloc(cap * sizeof(MergeSlot));
    if (!T->merges) goto nomem;
    for (size_t i = 0; i < cap; i++) T->merges[i].key = EMPTY_KEY;
    T->merge_mask = cap - 1;
    const uint32_t *m = (const uint32_t *)mg.buf;
    for (size_t r = 0; r < n_merges; r++) {
        uint32_t left = m[3 * r], right = m[3 * r + 1], nid = m[3 * r + 2];
        uint64_t key = ((uint64_t)left << 32) | right;
        if (key == EMPTY_KEY) {
            PyErr_SetString(PyExc_ValueError, "token id 2**32-1 is not supported");
            goto done;
        }
        size_t i = (size_t)mix64(key) & T->merge_mask;
        while (T->merges[i].key != EMPTY_KEY && T->merges[i].key != key) i = (i + 1) & T->merge_mask;
        /* a repeated pair takes its last rank, as in `tokenizers` (a map filled in order) */
        T->merges[i].key = key;
        T->merges[i].rank = (uint32_t)r;
        T->merges[i].new_id = nid;
    }

    /* whole-piece table: only tokens whose BPE is exactly themselves */
    fast = PySequence_Fast(vocab, "vocab must be a sequence of (bytes, int)");
    if (!fast) goto done;
    Py_ssize_t nv = PySequence_Fast_GET_SIZE(fast);
    size_t total = 0;
    for (Py_ssize_t k = 0; k < nv; k++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(fast, k);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_SetString(PyExc_TypeError, "vocab items must be (bytes, int)");
            goto done;
        }
        total += (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0));
    }
    if (total > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "vocabulary too large");
        goto done;
    }
    probe = worker_new();
    if (!probe) goto nomem;
    T->vocab_bytes = malloc(total + 1);
    size_t vcap = pow2_at_least((size_t)nv * 2 + 2);
    T->vocab = calloc(vcap, sizeof(VocabSlot));
    if (!T->vocab_bytes || !T->vocab) goto nomem;
    T->vocab_mask = vcap - 1;
    size_t used = 0;
    for (Py_ssize_t k = 0; k < nv; k++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(fast, k);
        PyObject *b = PyTuple_GET_ITEM(pair, 0);
        unsigned long id = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(pair, 1));
        if (id == (unsigned long)-1 && PyErr_Occurred()) goto done;
        if (id >= UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "token id too large");
            goto done;
        }
        size_t n = (size_t)PyBytes_GET_SIZE(b);
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(b);
        if (n < 2 || n > PIECE_LIMIT) continue; /* single bytes go through byte_id */
        for (size_t i = 0; i < n; i++) probe->sym[i] = T->byte_id[p[i]];
        if (bpe_merge(T, probe, n) != 1 || probe->sym[0] != (uint32_t)id) continue;
        uint64_t h = hash_bytes(p, n);
        uint32_t dummy;
        if (vocab_find(T, h, p, n, &dummy)) continue;
        size_t i = (size_t)h & T->vocab_mask;
        while (T->vocab[i].len != 0) i = (i + 1) & T->vocab_mask;
        memcpy(T->vocab_bytes + used, p, n);
        T->vocab[i].hash = h;
        T->vocab[i].off = (uint32_t)used;
        T->vocab[i].len = (uint32_t)n;
        T->vocab[i].id = (uint32_t)id;
        used += n;
    }
    if (pthread_mutex_init(&self->lock, NULL) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_mutex_init failed");
        goto done;
    }
    self->lock_ready = 1;
    ok = 0;
    goto done;
nomem:
    PyErr_NoMemory();
done:
    if (ok != 0) tables_free(T);
    worker_free(probe);
    Py_XDECREF(fast);
    PyBuffer_Release(&bi);
    PyBuffer_Release(&mg);
    PyBuffer_Release(&cl);
    return ok;
}

/* Cuts documents into work items (see the header comment). */
static int add_items(const Tables *T, Item **items, Py_ssize_t *n, Py_ssize_t *cap, Py_ssize_t doc, int kind,
                     const void *data, Py_ssize_t len) {
    Py_ssize_t s = 0;
    do {
        Py_ssize_t e = len;
        if (len - s > CHUNK_CHARS + CHUNK_CHARS / 2) {
            Py_ssize_t p = s + CHUNK_CHARS;
            for (; p < len; p++) {
                if (cp_class(T, PyUnicode_READ(kind, data, p)) == CL_SPACE &&
                    cp_class(T, PyUnicode_READ(kind, data, p - 1)) != CL_SPACE)
                    break;
            }
            e = p;
        }
        if (*n == *cap) {
            Py_ssize_t nc = *cap ? *cap * 2 : 256;
            Item *q = realloc(*items, (size_t)nc * sizeof(Item));
            if (!q) return -1;
            *items = q;
            *cap = nc;
        }
        Item *it = &(*items)[(*n)++];
        it->doc = doc;
        it->start = s;
        it->end = e;
        it->kind = kind;
        it->data = data;
        it->status = SPAN_OK;
        it->worker = 0;
        it->out_off = it->out_len = 0;
        s = e;
    } while (s < len);
    return 0;
}

/* encode(texts: list[str], num_threads: int) -> (ids: bytes, lengths: bytes)
 *   ids: native uint32 of every encoded document, one after another
 *   lengths: native int64 per document: its number of ids, or -1 when the document must be encoded elsewhere */
static PyObject *Encoder_encode(Encoder *self, PyObject *args) {
    PyObject *texts;
    int num_threads = 1;
    if (!self->lock_ready) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder is not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O|i", &texts, &num_threads)) return NULL;
    if (num_threads < 1) num_threads = 1;
    if (num_threads > MAX_THREADS) num_threads = MAX_THREADS;
    PyObject *seq = PySequence_Fast(texts, "texts must be a sequence of str");
    if (!seq) return NULL;
    Py_ssize_t n_docs = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = NULL, *ids_obj = NULL, *len_obj = NULL;
    PyObject **docs = NULL;
    Item *items = NULL;
    Py_ssize_t n_items = 0, cap_items = 0, held = 0;
    Shared shared;
    Job jobs[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int failed = 0, oom = 0;

    docs = PyMem_Malloc((size_t)(n_docs ? n_docs : 1) * sizeof(PyObject *));
    if (!docs) {
        PyErr_NoMemory();
        goto done;
    }
    /* own references: the list may change while the GIL is released */
    for (; held < n_docs; held++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, held);
        if (!PyUnicode_Check(t)) {
            PyErr_Format(PyExc_TypeError, "texts[%zd] is %.100s, not str", held, Py_TYPE(t)->tp_name);
            goto done;
        }
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(t) < 0) goto done;
#endif
        Py_INCREF(t);
        docs[held] = t;
    }
    for (Py_ssize_t d = 0; d < n_docs; d++) {
        PyObject *t = docs[d];
        if (add_items(&self->tables, &items, &n_items, &cap_items, d, PyUnicode_KIND(t), PyUnicode_DATA(t),
                      PyUnicode_GET_LENGTH(t)) < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
    if (num_threads > n_items) num_threads = n_items ? (int)n_items : 1;

    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    for (int k = 0; k < num_threads; k++) {
        if (!self->workers[k]) self->workers[k] = worker_new();
        if (!self->workers[k]) {
            failed = 1;
            break;
        }
        self->workers[k]->out_len = 0;
        self->workers[k]->oom = 0;
    }
    if (!failed) {
        shared.enc = self;
        shared.items = items;
        shared.n_items = n_items;
        shared.next = 0;
        for (int k = 0; k < num_threads; k++) {
            jobs[k].shared = &shared;
            jobs[k].worker = k;
        }
        /* worker 0 is this thread */
        for (int k = 1; k < num_threads; k++) started[k] = pthread_create(&tids[k], NULL, run_worker, &jobs[k]) == 0;
        run_worker(&jobs[0]);
        for (int k = 1; k < num_threads; k++)
            if (started[k]) pthread_join(tids[k], NULL);
        /* a thread that did not start leaves its share to the others, which took it already */
        for (int k = 0; k < num_threads; k++) oom |= self->workers[k]->oom;
    }
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS

    if (failed || oom) {
        PyErr_NoMemory();
        goto done;
    }
    /* lengths per document, then one buffer of ids in document order */
    len_obj = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((size_t)n_docs * sizeof(int64_t)));
    if (!len_obj) goto done;
    int64_t *lens = (int64_t *)PyBytes_AS_STRING(len_obj);
    for (Py_ssize_t d = 0; d < n_docs; d++) lens[d] = 0;
    for (Py_ssize_t k = 0; k < n_items; k++) {
        Item *it = &items[k];
        if (it->status == SPAN_OK) {
            if (lens[it->doc] >= 0) lens[it->doc] += (int64_t)it->out_len;
        } else {
            lens[it->doc] = -1;
        }
    }
    size_t total = 0;
    for (Py_ssize_t d = 0; d < n_docs; d++)
        if (lens[d] > 0) total += (size_t)lens[d];
    ids_obj = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total * sizeof(uint32_t)));
    if (!ids_obj) goto done;
    {
        uint32_t *dst = (uint32_t *)PyBytes_AS_STRING(ids_obj);
        for (Py_ssize_t k = 0; k < n_items; k++) {
            Item *it = &items[k];
            if (lens[it->doc] < 0 || it->out_len == 0) continue;
            memcpy(dst, self->workers[it->worker]->out + it->out_off, it->out_len * sizeof(uint32_t));
            dst += it->out_len;
        }
    }
    result = PyTuple_Pack(2, ids_obj, len_obj);
done:
    Py_XDECREF(ids_obj);
    Py_XDECREF(len_obj);
    for (Py_ssize_t d = 0; d < held; d++) Py_DECREF(docs[d]);
    PyMem_Free(docs);
    free(items);
    Py_DECREF(seq);
    return result;
}

static PyObject *Encoder_clear_caches(Encoder *self, PyObject *Py_UNUSED(ignored)) {
    if (!self->lock_ready) Py_RETURN_NONE;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    for (int k = 0; k < MAX_THREADS; k++)
        if (self->workers[k]) cache_clear(self->workers[k]);
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* split(text) -> list[int] | None: the end offset (in code points) of every piece, or None where encode() would
 * send the document back.  For tests; holds the GIL. */
static PyObject *Encoder_split(Encoder *self, PyObject *text) {
    if (!self->lock_ready) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder is not initialised");
        return NULL;
    }
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "split() takes a str");
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0) return NULL;
#endif
    Worker *w = worker_new();
    if (!w) return PyErr_NoMemory();
    w->ends = PyList_New(0);
    PyObject *result = w->ends;
    if (result) {
        int r = encode_span(&self->tables, w, PyUnicode_KIND(text), PyUnicode_DATA(text), 0,
                            PyUnicode_GET_LENGTH(text), 0);
        if (r == SPAN_OOM) {
            Py_CLEAR(result);
            if (!PyErr_Occurred()) PyErr_NoMemory();
        } else if (r == SPAN_UNSURE) {
            Py_DECREF(result);
            result = Py_NewRef(Py_None);
        }
    }
    worker_free(w);
    return result;
}

static PyMethodDef Encoder_methods[] = {
    {"split", (PyCFunction)Encoder_split, METH_O,
     "split(text) -> list of piece end offsets (code points), or None where encode() gives the text back."},
    {"encode", (PyCFunction)Encoder_encode, METH_VARARGS,
     "encode(texts, num_threads=1) -> (ids, lengths): native uint32 ids of all documents one after another, and "
     "native int64 lengths per document (-1: not encoded, use the reference tokenizer)."},
    {"clear_caches", (PyCFunction)Encoder_clear_caches, METH_NOARGS, "Empty the per-thread piece caches."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pipelines._bpe.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(byte_ids, merges, vocab, classes): byte-level BPE over many documents on several threads.",
    .tp_methods = Encoder_methods,
    .tp_init = (initproc)Encoder_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef bpe_module = {
    PyModuleDef_HEAD_INIT, "pipelines._bpe", "GPT-2-style byte-level BPE on several threads (see fast_bpe.py).", -1,
    NULL,
};

PyMODINIT_FUNC PyInit__bpe(void) {
    if (PyType_Ready(&EncoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&bpe_module);
    if (!m) return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "PIECE_LIMIT", PIECE_LIMIT);
    PyModule_AddIntConstant(m, "CLASS_OTHER", CL_OTHER);
    PyModule_AddIntConstant(m, "CLASS_LETTER", CL_LETTER);
    PyModule_AddIntConstant(m, "CLASS_NUMBER", CL_NUMBER);
    PyModule_AddIntConstant(m, "CLASS_SPACE", CL_SPACE);
    PyModule_AddIntConstant(m, "CLASS_UNSURE", CL_UNSURE);
    return m;
}
