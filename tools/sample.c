#include "cli.h"

int cmd_sample(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return die("sample: not implemented yet");
}
