/* libFuzzer harness: the PNG reader (sd_png_decode), with a re-encode check. */
#include "targets.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An invariant broken on an accepted input is a finding like a crash. */
    if (sd_fuzz_png(data, size) != 0)
        abort();
    return 0;
}
