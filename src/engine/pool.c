/* Worker pool: workers claim tasks from an atomic counter during a job, so
 * load imbalance between tasks evens out without a scheduler. One job runs
 * at a time. Between jobs a worker first spins for a few tens of
 * microseconds (a forward posts ~700 jobs back to back, and waking a
 * thread blocked on a condition variable takes that long or longer in a
 * VM), then sleeps on the condition variable; the caller waits for the
 * workers' last tasks the same way. */
#define _GNU_SOURCE
#include "engine/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct sd_pool {
    int size;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    /* current job: written under mu before `generation` is bumped */
    sd_task_fn fn;
    void *ctx;
    int64_t ntasks;
    atomic_llong next;
    atomic_int active;       /* workers still inside the current job */
    atomic_ulong generation; /* bumped (release) per job and at quit */
    int quit;
    atomic_int refs; /* holders beyond the creator (sd_pool_retain) */
};

/* Spin iterations before blocking (~30-100 us with the pause hint). */
#define SPIN_ITERS 2000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

typedef struct {
    sd_pool *pool;
    int index;
} worker_arg;

static void run_tasks(sd_pool *p, int thread)
{
    for (;;) {
        int64_t t = atomic_fetch_add(&p->next, 1);
        if (t >= p->ntasks)
            break;
        p->fn(p->ctx, t, thread);
    }
}

static void *worker_main(void *arg)
{
    worker_arg wa = *(worker_arg *)arg;
    free(arg);
    sd_pool *p = wa.pool;
    unsigned long seen = 0;
    for (;;) {
        for (int i = 0; i < SPIN_ITERS && atomic_load(&p->generation) == seen; i++)
            cpu_relax();
        pthread_mutex_lock(&p->mu);
        while (!p->quit && atomic_load(&p->generation) == seen)
            pthread_cond_wait(&p->wake, &p->mu);
        int quit = p->quit;
        seen = atomic_load(&p->generation);
        pthread_mutex_unlock(&p->mu);
        if (quit)
            break;
        run_tasks(p, wa.index);
        /* The last one out wakes the caller if it went to sleep; under the
         * mutex, so the signal cannot fall between its check and its wait. */
        if (atomic_fetch_sub(&p->active, 1) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

int sd_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > 1024 ? 1024 : (int)n);
}

sdunet_status sd_pool_create(int nthreads, sd_pool **out, sdunet_error *err)
{
    *out = NULL;
    if (nthreads < 1 || nthreads > 1024)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "thread count %d out of range 1..1024", nthreads);
    sd_pool *p = calloc(1, sizeof *p);
    if (!p)
        return sd_fail(err, SDUNET_E_NOMEM, "out of memory creating thread pool");
    p->size = nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (nthreads > 1) {
        p->threads = calloc((size_t)nthreads - 1, sizeof *p->threads);
        if (!p->threads) {
            sd_pool_destroy(p);
            return sd_fail(err, SDUNET_E_NOMEM, "out of memory creating thread pool");
        }
        for (int i = 1; i < nthreads; i++) {
            worker_arg *wa = malloc(sizeof *wa);
            if (wa) {
                wa->pool = p;
                wa->index = i;
            }
            if (!wa || pthread_create(&p->threads[i - 1], NULL, worker_main, wa) != 0) {
                free(wa);
                p->size = i; /* only i-1 workers exist: destroy joins exactly those */
                sd_pool_destroy(p);
                return sd_fail(err, SDUNET_E_NOMEM, "cannot start worker thread %d", i);
            }
        }
    }
    *out = p;
    return SDUNET_OK;
}

sd_pool *sd_pool_retain(sd_pool *p)
{
    if (p)
        atomic_fetch_add(&p->refs, 1);
    return p;
}

void sd_pool_destroy(sd_pool *p)
{
    if (!p)
        return;
    if (atomic_fetch_sub(&p->refs, 1) > 0)
        return; /* another holder still uses it */
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    atomic_fetch_add(&p->generation, 1); /* spinning workers stop spinning */
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    if (p->threads)
        for (int i = 0; i < p->size - 1; i++)
            pthread_join(p->threads[i], NULL);
    free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p);
}

int sd_pool_size(const sd_pool *p)
{
    return p ? p->size : 1;
}

void sd_pool_run(sd_pool *p, int64_t ntasks, sd_task_fn fn, void *ctx)
{
    if (ntasks <= 0)
        return;
    if (!p || p->size == 1 || ntasks == 1) {
        for (int64_t t = 0; t < ntasks; t++)
            fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->ntasks = ntasks;
    atomic_store(&p->next, 0);
    atomic_store(&p->active, p->size - 1);
    atomic_fetch_add(&p->generation, 1); /* publishes the job to spinning workers */
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    for (int i = 0; i < SPIN_ITERS && atomic_load(&p->active) > 0; i++)
        cpu_relax();
    if (atomic_load(&p->active) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->active) > 0)
            pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

int sd_default_threads(void)
{
    const char *s = getenv("SDUNET_THREADS");
    if (s && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (*end == 0 && v >= 1 && v <= 1024)
            return (int)v;
    }
    return sd_cpu_count();
}

sdunet_status sd_pool_resize(sd_pool **pool, int *threads, int requested, sdunet_error *err)
{
    if (requested < 0 || requested > 1024)
        return sd_fail(err, SDUNET_E_INVALID_ARG, "threads must be 0..1024 (got %d)", requested);
    int n = requested ? requested : sd_default_threads();
    sd_pool *p;
    sdunet_status st = sd_pool_create(n, &p, err);
    if (st)
        return st;
    sd_pool_destroy(*pool);
    *pool = p;
    *threads = n;
    return SDUNET_OK;
}
