/* The floor for fork-per-connection: accept, fork, echo bytes until EOF, exit. No limits, no
 * logging, no framing: what fork itself costs. Children are reaped by the kernel
 * (SIGCHLD ignored). Usage: minimal-fork PORT (listens on 127.0.0.1). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: minimal-fork PORT\n");
        return 2;
    }
    signal(SIGCHLD, SIG_IGN);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 1024)) {
        perror("minimal-fork");
        return 1;
    }
    for (;;) {
        int conn = accept(listener, NULL, NULL);
        if (conn < 0)
            continue;
        if (fork() == 0) {
            close(listener);
            setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            char buf[65536];
            ssize_t n;
            while ((n = read(conn, buf, sizeof buf)) > 0)
                for (ssize_t off = 0; off < n;) {
                    ssize_t w = write(conn, buf + off, n - off);
                    if (w <= 0)
                        _exit(1);
                    off += w;
                }
            _exit(0);
        }
        close(conn);
    }
}
