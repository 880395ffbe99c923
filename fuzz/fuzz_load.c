/* libFuzzer harness: the loader end to end: file bytes -> sdunet_load with the micro config ->
 * one small forward -> sdunet_free. */
#include "targets.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An invariant broken on an accepted input is a finding like a crash. */
    if (sd_fuzz_load(data, size) != 0)
        abort();
    return 0;
}
