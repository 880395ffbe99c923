/* libFuzzer harness: the .ckpt reader (sd_ckpt_parse) on raw zip bytes: the zip container first. */
#include "targets.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An invariant broken on an accepted input is a finding like a crash. */
    if (sd_fuzz_ckpt(data, size) != 0)
        abort();
    return 0;
}
