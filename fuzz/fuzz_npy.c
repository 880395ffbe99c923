/* libFuzzer harness: the .npy reader (sd_npy_parse_f32). */
#include "targets.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An invariant broken on an accepted input is a finding like a crash. */
    if (sd_fuzz_npy(data, size) != 0)
        abort();
    return 0;
}
