/* libFuzzer harness: prompts through the builtin CLIP tokenizer (sd_fuzz_tokenizer). */
#include "targets.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An invariant broken on an accepted input is a finding like a crash. */
    if (sd_fuzz_tokenizer(data, size) != 0)
        abort();
    return 0;
}
