/* LD_PRELOAD shim for tests: any name lookup or internet connect by any process (Python
 * or native code) is logged to $OGA_NPU_NETLOG and fails. Built by tests/conftest.py. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void note(const char *what, const char *detail) {
    const char *path = getenv("OGA_NPU_NETLOG");
    FILE *f;
    if (!path || !(f = fopen(path, "a"))) return;
    fprintf(f, "pid %d %s %s\n", (int)getpid(), what, detail ? detail : "");
    fclose(f);
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
    (void)service; (void)hints; (void)res;
    note("getaddrinfo", node);
    return EAI_FAIL;
}

struct hostent *gethostbyname(const char *name) {
    note("gethostbyname", name);
    h_errno = NO_RECOVERY;
    return NULL;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) {
        note("connect", addr->sa_family == AF_INET ? "AF_INET" : "AF_INET6");
        errno = ENETUNREACH;
        return -1;
    }
    if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    return real(fd, addr, len);
}
