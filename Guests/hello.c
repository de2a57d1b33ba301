/* hello: prints one fixed line (plus the command line, if any) and exits 0. */
#include "rt.h"

int main(void) {
    rt_puts("Hello from a Tern test guest\n");
    if (rt_cmdline()[0]) rt_printf("cmdline: %s\n", rt_cmdline());
    return 0;
}
