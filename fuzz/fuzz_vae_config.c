/* libFuzzer harness: the VAE's config.json parser (sd_vae_config_parse). */
#include "targets.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An invariant broken on an accepted input is a finding like a crash. */
    if (sd_fuzz_vae_config(data, size) != 0)
        abort();
    return 0;
}
