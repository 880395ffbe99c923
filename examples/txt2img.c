/* The README's example: one picture from a checkpoint, as a complete program.
 * Built by `make` (build/examples/txt2img) so it keeps compiling. */
#include <sdunet_pipeline.h>
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
    sdunet_error err;
    sdunet_pipeline *pl;
    if (sdunet_pipeline_load("v1-5-pruned-emaonly.safetensors", NULL, &pl, &err)) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    sdunet_gen_params p;
    sdunet_gen_params_default(&p);
    p.prompt = "a photo of an astronaut riding a horse on mars";
    p.seed = 42;
    p.steps = 25;
    p.scheduler = "dpmpp_2m";
    unsigned char *rgb = malloc(512 * 512 * 3); /* (1, 512, 512, 3) */
    if (sdunet_generate(pl, &p, rgb, NULL, &err))
        fprintf(stderr, "%s\n", err.message);
    free(rgb);
    sdunet_pipeline_free(pl);
    return 0;
}
