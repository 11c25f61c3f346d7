"""A prefork-style server: accept, fork, the parent closes its copy, the child serves (holds).

Prints "port N" once listening, then one "child PID" line per accepted connection. Children
hold their connection until stdin closes (the test ends), then exit."""
import os
import socket
import sys

count = int(sys.argv[1])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print("port", listener.getsockname()[1], flush=True)
children = []
for _ in range(count):
    conn, _ = listener.accept()
    pid = os.fork()
    if pid == 0:
        listener.close()
        sys.stdin.read()  # hold the connection until the test is done
        os._exit(0)
    conn.close()  # the parent's copy: the child is now the only holder
    children.append(pid)
    print("child", pid, flush=True)
sys.stdin.read()
for pid in children:
    os.waitpid(pid, 0)
