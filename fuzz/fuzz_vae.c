/* libFuzzer harness: the VAE from a weight file (sdunet_vae_load with the configuration inferred,
 * then a decode and an encode). */
#include "targets.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An invariant broken on an accepted input is a finding like a crash. */
    if (sd_fuzz_vae(data, size) != 0)
        abort();
    return 0;
}
