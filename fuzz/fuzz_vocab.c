/* libFuzzer harness: the CLIP vocab.json + merges.txt loader (sd_fuzz_vocab). */
#include "targets.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An invariant broken on an accepted input is a finding like a crash. */
    if (sd_fuzz_vocab(data, size) != 0)
        abort();
    return 0;
}
