/* A program whose code addresses tests/symbolize.rs symbolizes: it prints the addresses of two
 * functions and the return address of a call, then waits until its stdin closes. The markers
 * `LINE:<name>` let the test find the lines it expects. Built by the test with
 * `cc -O1 -g -fno-omit-frame-pointer`. */
#include <stdio.h>
#include <unistd.h>

static void *volatile caller_return;

__attribute__((noinline)) int leak_connections(int n) { /* LINE:leak_connections */
    caller_return = __builtin_return_address(0);
    return n * 3 + 1;
}

__attribute__((noinline)) int tidy_close(int fd) { /* LINE:tidy_close */
    return fd - 1;
}

int main(void) {
    int r = leak_connections(4); /* LINE:call */
    r += tidy_close(r);
    printf("leak_connections %p\n", (void *)&leak_connections);
    printf("tidy_close %p\n", (void *)&tidy_close);
    printf("return_in_main %p\n", caller_return);
    printf("ready %d\n", r);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
