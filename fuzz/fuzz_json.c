/* libFuzzer harness: the JSON parser (sd_json_parse) and config.json reader (sd_config_parse). */
#include "targets.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An invariant broken on an accepted input is a finding like a crash. */
    if (sd_fuzz_json(data, size) != 0)
        abort();
    return 0;
}
