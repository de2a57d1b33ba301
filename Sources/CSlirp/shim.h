#include <slirp/libslirp.h>
