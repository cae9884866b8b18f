/* The router's ranking loop in C: what RouteTask does between the index's
 * search and building the answer, in two calls instead of some thirty numpy
 * operations (each a few microseconds inside a serving sidecar, whose caches
 * are cold after the gRPC work around every call).
 *
 * The engine keeps the pure-numpy path (are_core/router/_engine.py) for
 * machines without a C compiler; tests check both give the same answers.
 * Arrays come in through the buffer protocol (no numpy headers at build).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Checks a buffer holds whole items of `size` bytes; sets `count`. */
static int
items(const Py_buffer *view, Py_ssize_t size, const char *name, Py_ssize_t *count)
{
    if (view->len % size != 0) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes is not a whole number of %zd-byte items",
                     name, view->len, size);
        return -1;
    }
    *count = view->len / size;
    return 0;
}

/* Dot product of float32 vectors in 16 float32 partial sums (as BLAS sums
 * in float32): the compiler makes them two 8-lane registers, and the AVX2
 * clone is picked at load time where the CPU has it. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static double
dot(const float *a, const float *b, Py_ssize_t d)
{
    float s[16] = {0};
    Py_ssize_t i = 0;
    for (; i + 16 <= d; i += 16) {
        for (int j = 0; j < 16; j++) {
            s[j] += a[i + j] * b[i + j];
        }
    }
    float total = 0.0f;
    for (int j = 0; j < 16; j++) {
        total += s[j];
    }
    for (; i < d; i++) {
        total += a[i] * b[i];
    }
    return (double)total;
}

static int64_t
row_of(uint64_t key, const int64_t *cards, Py_ssize_t n_cards, const int64_t *workers,
       Py_ssize_t n_workers, uint64_t worker_base)
{
    if (key >= worker_base) {
        uint64_t at = key - worker_base;
        return at < (uint64_t)n_workers ? workers[at] : -1;
    }
    return key < (uint64_t)n_cards ? cards[key] : -1;
}

PyDoc_STRVAR(eligible_doc,
"eligible(keys, cards, workers, worker_base, row_tier, unavailable_tier, matrix, query,\n"
"         include_unavailable, out_rows, out_sims) -> int\n"
"\n"
"Maps search keys (uint64) to matrix rows through the cards and workers tables\n"
"(int64, -1 where no row; keys from worker_base on index the workers table),\n"
"drops keys without a row and, unless include_unavailable, rows whose tier\n"
"(float64) is at least unavailable_tier, and writes each kept row (int64) and\n"
"its similarity to query (float32 dot product, as a float64) to\n"
"out_rows and out_sims, in the keys' order. Returns how many were kept.");

static PyObject *
eligible(PyObject *self, PyObject *args)
{
    Py_buffer keys = {0}, cards = {0}, workers = {0}, tiers = {0}, matrix = {0}, query = {0};
    Py_buffer out_rows = {0}, out_sims = {0};
    unsigned long long worker_base;
    double unavailable_tier;
    int include_unavailable;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*Ky*dy*y*pw*w*", &keys, &cards, &workers, &worker_base, &tiers,
                          &unavailable_tier, &matrix, &query, &include_unavailable, &out_rows,
                          &out_sims)) {
        return NULL;
    }
    Py_ssize_t n_keys, n_cards, n_workers, n_tiers, n_matrix, d, n_out_rows, n_out_sims;
    if (items(&keys, 8, "keys", &n_keys) || items(&cards, 8, "cards", &n_cards)
        || items(&workers, 8, "workers", &n_workers) || items(&tiers, 8, "row_tier", &n_tiers)
        || items(&matrix, 4, "matrix", &n_matrix) || items(&query, 4, "query", &d)
        || items(&out_rows, 8, "out_rows", &n_out_rows) || items(&out_sims, 8, "out_sims", &n_out_sims)) {
        goto done;
    }
    if (d == 0 || n_matrix % d != 0) {
        PyErr_SetString(PyExc_ValueError, "matrix: not whole rows of the query's dimension");
        goto done;
    }
    if (n_out_rows < n_keys || n_out_sims < n_keys) {
        PyErr_SetString(PyExc_ValueError, "out_rows and out_sims must hold one item per key");
        goto done;
    }
    Py_ssize_t n_rows = n_matrix / d;
    const uint64_t *k = keys.buf;
    const int64_t *c = cards.buf, *w = workers.buf;
    const double *tier = tiers.buf;
    const float *m = matrix.buf, *q = query.buf;
    int64_t *rows = out_rows.buf;
    double *sims = out_sims.buf;
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < n_keys; i++) {
        int64_t row = row_of(k[i], c, n_cards, w, n_workers, (uint64_t)worker_base);
        if (row < 0) {
            continue;
        }
        if (row >= n_rows || row >= n_tiers) {
            PyErr_Format(PyExc_ValueError, "row %lld of key %llu is past the matrix", (long long)row,
                         (unsigned long long)k[i]);
            goto done;
        }
        if (!include_unavailable && tier[row] >= unavailable_tier) {
            continue;
        }
        rows[kept] = row;
        sims[kept] = dot(m + (Py_ssize_t)row * d, q, d);
        kept++;
    }
    result = PyLong_FromSsize_t(kept);
done:
    PyBuffer_Release(&keys);
    PyBuffer_Release(&cards);
    PyBuffer_Release(&workers);
    PyBuffer_Release(&tiers);
    PyBuffer_Release(&matrix);
    PyBuffer_Release(&query);
    PyBuffer_Release(&out_rows);
    PyBuffer_Release(&out_sims);
    return result;
}

/* One candidate above the threshold, as sorted: tier, then score (higher
 * first), then similarity (higher first: among equal scores, as when cost
 * alone decides and costs tie, the better match), then load, then its
 * position (numpy's lexsort is stable). */
typedef struct {
    double tier;
    double score;
    double similarity;
    double load;
    Py_ssize_t position;
} candidate_t;

static int
by_rank(const void *left, const void *right)
{
    const candidate_t *a = left, *b = right;
    if (a->tier != b->tier) {
        return a->tier < b->tier ? -1 : 1;
    }
    if (a->score != b->score) {
        return a->score > b->score ? -1 : 1;
    }
    if (a->similarity != b->similarity) {
        return a->similarity > b->similarity ? -1 : 1;
    }
    if (a->load != b->load) {
        return a->load < b->load ? -1 : 1;
    }
    return (a->position > b->position) - (a->position < b->position);
}

static int
same_key(const candidate_t *a, const candidate_t *b)
{
    return a->tier == b->tier && a->score == b->score && a->similarity == b->similarity
           && a->load == b->load;
}

PyDoc_STRVAR(rank_doc,
"rank(rows, sims, count, threshold, row_cost, row_tier, row_load, cost_biased, weight,\n"
"     top_k, out_positions, out_scores) -> (kept, above, cheapest)\n"
"\n"
"Ranks the first count eligible rows (int64) whose similarity (float64)\n"
"reaches threshold: by tier, then score (the similarity, or when cost_biased\n"
"(1 - weight) * similarity + weight * (1 - cost / the highest cost among\n"
"them)), then similarity, then load (per-row float64 tables), then their\n"
"order. Writes the positions (into rows) and scores of the first top_k, and\n"
"of those after them that tie with the last on all four keys, to\n"
"out_positions (int64) and out_scores (float64). Returns how many were\n"
"written, how many reached the\n"
"threshold, and the lowest cost among those.");

static PyObject *
rank(PyObject *self, PyObject *args)
{
    Py_buffer rows_b = {0}, sims_b = {0}, cost_b = {0}, tier_b = {0}, load_b = {0};
    Py_buffer out_pos_b = {0}, out_score_b = {0};
    Py_ssize_t count, top_k;
    double threshold, weight;
    int cost_biased;
    PyObject *result = NULL;
    candidate_t *found = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*ndy*y*y*pdnw*w*", &rows_b, &sims_b, &count, &threshold, &cost_b,
                          &tier_b, &load_b, &cost_biased, &weight, &top_k, &out_pos_b, &out_score_b)) {
        return NULL;
    }
    Py_ssize_t n_rows, n_sims, n_cost, n_tier, n_load, n_out_pos, n_out_score;
    if (items(&rows_b, 8, "rows", &n_rows) || items(&sims_b, 8, "sims", &n_sims)
        || items(&cost_b, 8, "row_cost", &n_cost) || items(&tier_b, 8, "row_tier", &n_tier)
        || items(&load_b, 8, "row_load", &n_load) || items(&out_pos_b, 8, "out_positions", &n_out_pos)
        || items(&out_score_b, 8, "out_scores", &n_out_score)) {
        goto done;
    }
    if (count < 0 || count > n_rows || count > n_sims) {
        PyErr_SetString(PyExc_ValueError, "count is past rows or sims");
        goto done;
    }
    if (top_k < 1) {
        PyErr_SetString(PyExc_ValueError, "top_k must be at least 1");
        goto done;
    }
    const int64_t *rows = rows_b.buf;
    const double *sims = sims_b.buf, *cost = cost_b.buf, *tier = tier_b.buf, *load = load_b.buf;
    found = PyMem_Malloc(sizeof(candidate_t) * (size_t)(count > 0 ? count : 1));
    if (found == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t above = 0;
    double highest = 0.0, cheapest = 0.0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!(sims[i] >= threshold)) {
            continue;
        }
        int64_t row = rows[i];
        if (row < 0 || row >= n_cost || row >= n_tier || row >= n_load) {
            PyErr_Format(PyExc_ValueError, "row %lld is past the per-row tables", (long long)row);
            goto done;
        }
        double c = cost[row];
        if (above == 0 || c > highest) {
            highest = c;
        }
        if (above == 0 || c < cheapest) {
            cheapest = c;
        }
        found[above].tier = tier[row];
        found[above].score = sims[i];
        found[above].similarity = sims[i];
        found[above].load = load[row];
        found[above].position = i;
        above++;
    }
    if (cost_biased) {
        for (Py_ssize_t j = 0; j < above; j++) {
            double cost_term = highest > 0 ? 1.0 - cost[rows[found[j].position]] / highest : 1.0;
            found[j].score = (1.0 - weight) * found[j].score + weight * cost_term;
        }
    }
    qsort(found, (size_t)above, sizeof(candidate_t), by_rank);
    Py_ssize_t kept = above < top_k ? above : top_k;
    while (kept > 0 && kept < above && same_key(&found[kept], &found[kept - 1])) {
        kept++;
    }
    if (kept > n_out_pos || kept > n_out_score) {
        PyErr_SetString(PyExc_ValueError, "out_positions and out_scores are too short");
        goto done;
    }
    int64_t *out_pos = out_pos_b.buf;
    double *out_score = out_score_b.buf;
    for (Py_ssize_t j = 0; j < kept; j++) {
        out_pos[j] = found[j].position;
        out_score[j] = found[j].score;
    }
    result = Py_BuildValue("nnd", kept, above, cheapest);
done:
    PyMem_Free(found);
    PyBuffer_Release(&rows_b);
    PyBuffer_Release(&sims_b);
    PyBuffer_Release(&cost_b);
    PyBuffer_Release(&tier_b);
    PyBuffer_Release(&load_b);
    PyBuffer_Release(&out_pos_b);
    PyBuffer_Release(&out_score_b);
    return result;
}

static PyMethodDef methods[] = {
    {"eligible", eligible, METH_VARARGS, eligible_doc},
    {"rank", rank, METH_VARARGS, rank_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "are_core.router._ranking",
    "The router's ranking loop in C (see _ranking.c); optional, numpy does the same without it.",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__ranking(void)
{
    return PyModule_Create(&module);
}
