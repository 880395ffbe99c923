/* libFuzzer harness: the .ckpt pickle machine: the input is data.pkl inside a valid stored zip
 * that also holds a few storages, so mutations reach the interpreter instead of
 * dying on the CRC. */
#include "targets.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An invariant broken on an accepted input is a finding like a crash. */
    if (sd_fuzz_pickle(data, size) != 0)
        abort();
    return 0;
}
