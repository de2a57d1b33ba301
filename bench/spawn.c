/* spawn: runs a command once and prints "<exit status> <wall seconds> <peak RSS KiB>" on stderr.
 * A tiny C parent keeps its own RSS (which the child's ru_maxrss inherits across fork) far below the
 * programs measured. Usage: spawn OUTPUT_FILE COMMAND [ARGS...]  (the command's stdout goes to OUTPUT_FILE) */
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: spawn OUTPUT_FILE COMMAND [ARGS...]\n"); return 2; }
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pid_t pid = fork();
    if (pid == 0) {
        int out = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644), null = open("/dev/null", O_RDWR);
        dup2(null, 0); dup2(out, 1); dup2(null, 2);
        execv(argv[2], argv + 2);
        _exit(127);
    }
    int status; struct rusage usage;
    wait4(pid, &status, 0, &usage);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) * 1e-9;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    fprintf(stderr, "%d %.6f %ld\n", code, seconds, usage.ru_maxrss);
    return 0;
}
