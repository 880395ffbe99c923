/* Worker pool: workers sleep on a condition variable between jobs and claim
 * tasks from an atomic counter during a job, so load imbalance between
 * tasks evens out without a scheduler. One job runs at a time. */
#define _GNU_SOURCE
#include "runtime/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct sd_pool {
    int size;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    /* current job */
    sd_task_fn fn;
    void *ctx;
    int64_t ntasks;
    atomic_llong next;
    int active; /* workers still inside the current job */
    unsigned long generation;
    int quit;
};

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
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen)
            pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit)
            break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_tasks(p, wa.index);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
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

void sd_pool_destroy(sd_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
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
    p->active = p->size - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->active > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
