/* A fixed pool of worker threads, made once per model or once for the
 * models a pipeline composes (they run one at a time, so they can share
 * it). The caller's thread takes part in the work, so a pool of size 1 runs
 * everything inline. */
#ifndef SD_POOL_H
#define SD_POOL_H

#include "common.h"

typedef struct sd_pool sd_pool;

/* Task callback: `task` in [0, ntasks), `thread` in [0, size) identifies the
 * worker running it (for per-thread scratch). */
typedef void (*sd_task_fn)(void *ctx, int64_t task, int thread);

sdunet_status sd_pool_create(int nthreads, sd_pool **out, sdunet_error *err);
/* Another holder of `pool` (returned); each holder calls sd_pool_destroy,
 * and the last one stops the threads. */
sd_pool *sd_pool_retain(sd_pool *pool);
void sd_pool_destroy(sd_pool *pool);   /* drops one holder; NULL is a no-op */
int sd_pool_size(const sd_pool *pool); /* 1 for NULL */

/* Runs fn(ctx, t, thread) for t = 0..ntasks-1 across the pool and returns
 * when all are done. Tasks are handed out dynamically (an atomic counter).
 * A NULL pool runs them inline. Not reentrant: tasks must not call it. */
void sd_pool_run(sd_pool *pool, int64_t ntasks, sd_task_fn fn, void *ctx);

/* Online CPUs (at least 1). */
int sd_cpu_count(void);
/* SDUNET_THREADS when it is a number in 1..1024, else sd_cpu_count(). */
int sd_default_threads(void);
/* Replaces *pool by a pool of `requested` threads (1..1024; 0 = the
 * default), updating *threads; on failure *pool is kept. */
sdunet_status sd_pool_resize(sd_pool **pool, int *threads, int requested, sdunet_error *err);

#endif
