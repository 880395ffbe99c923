/* Small POSIX file helpers shared by the writers. */
#ifndef SD_FILEIO_H
#define SD_FILEIO_H

#include <stddef.h>

/* write(2) until all n bytes are written, in chunks a 32-bit size_t or a
 * picky kernel accepts, retrying on EINTR. 0 on success, -1 with errno set. */
int sd_write_all(int fd, const void *buf, size_t n);

#endif
