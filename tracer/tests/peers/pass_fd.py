"""Descriptor passing: the opener connects N times to PORT, sends each socket to a receiver
process over a Unix socket pair (SCM_RIGHTS), and closes its own copies.

Prints "opener PID" and "receiver PID", then "passed" once the receiver holds everything.
Both stay alive until stdin closes."""
import os
import socket
import sys

count, port = int(sys.argv[1]), int(sys.argv[2])
left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
pid = os.fork()
if pid == 0:
    left.close()
    held = []
    while len(held) < count:
        _, fds, _, _ = socket.recv_fds(right, 16, 16)
        held.extend(socket.socket(fileno=fd) for fd in fds)
    right.sendall(b"k")
    sys.stdin.read()
    os._exit(0)
right.close()
print("opener", os.getpid(), flush=True)
print("receiver", pid, flush=True)
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    socket.send_fds(left, [b"x"], [s.fileno()])
    s.close()
left.recv(1)
print("passed", flush=True)
sys.stdin.read()
os.waitpid(pid, 0)
