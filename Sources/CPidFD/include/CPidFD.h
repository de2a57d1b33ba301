// Process file descriptors (Linux 5.3+), which glibc's Swift module does not export: a pidfd names one process
// for good (never a later process that reuses its PID) and polls readable when that process exits. Also glibc's
// closefrom file action for posix_spawn.
#pragma once
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

/// A close-on-exec pidfd for `pid`, or -1 with errno set (ESRCH: no such process).
static inline int cpidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

/// Sends `signal` to the process `pidfd` names; 0, or -1 with errno set (ESRCH: it has exited).
static inline int cpidfd_send_signal(int pidfd, int signal) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0);
}

// glibc 2.34+ declares this only under _GNU_SOURCE, which a module must not define (it changes shared structs).
extern int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *actions, int lowest);

/// Makes the spawned process close every descriptor from `lowest` up before it runs (glibc 2.34+).
static inline int cpidfd_spawn_closefrom(posix_spawn_file_actions_t *actions, int lowest) {
    return posix_spawn_file_actions_addclosefrom_np(actions, lowest);
}

/// glibc's POSIX_SPAWN_SETSID (2.26+, also _GNU_SOURCE only): the spawned process starts a session of its own.
static const short cpidfd_spawn_setsid = 0x80;
