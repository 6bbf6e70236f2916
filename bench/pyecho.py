"""Echo servers from Python's standard library, for the comparison: socketserver's
ForkingTCPServer or ThreadingTCPServer with a byte-echo handler.
Usage: python3 pyecho.py fork|thread PORT (listens on 127.0.0.1)."""
import socket
import socketserver
import sys


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class Forking(socketserver.ForkingTCPServer):
    allow_reuse_address = True
    request_queue_size = 1024
    max_children = 256


class Threading(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    request_queue_size = 1024
    daemon_threads = True


if __name__ == "__main__":
    server = {"fork": Forking, "thread": Threading}[sys.argv[1]]
    with server(("127.0.0.1", int(sys.argv[2])), Echo) as s:
        s.serve_forever()
