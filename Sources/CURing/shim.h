/* Glibc's headers first, under the feature macros Swift's Glibc module is built with: liburing.h defines
 * _XOPEN_SOURCE and _GNU_SOURCE before its own includes, which would give types such as fd_set definitions
 * that clash with Glibc's. eventfd(2) carries the ring's completion events. */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/eventfd.h>
#include <signal.h>
#include <fcntl.h>
#include <sched.h>
#include <liburing.h>
