"""The kernel fact behind rolling restarts: what happens to connections queued on a closing SO_REUSEPORT listener.

Two listeners share a port; 40 clients connect and send a request; listener A never accepts and closes; B
accepts what it can. With net.ipv4.tcp_migrate_req=0 the connections queued on A are reset; with 1 they move
to B. Needs no proxy. To compare both without touching the host, as root:

    for m in 0 1; do unshare --net sh -c "ip link set lo up; sysctl -qw net.ipv4.tcp_migrate_req=$m; \\
        .venv/bin/python bench/accept_queue_migration.py"; done
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

CLIENTS = 40


def listener(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def main() -> None:
    first = listener()
    port = first.getsockname()[1]
    second = listener(port)
    clients = []
    for _ in range(CLIENTS):
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(client)
    time.sleep(0.2)  # let every handshake complete into one of the two accept queues
    first.close()
    second.settimeout(0.2)
    accepted = []
    try:
        while True:
            accepted.append(second.accept()[0])
    except TimeoutError:
        pass
    reset = 0
    for client in clients:
        client.settimeout(0.2)
        try:
            if client.recv(16) == b"":
                reset += 1
        except ConnectionResetError:
            reset += 1
        except TimeoutError:
            pass
    migrate = Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip()
    print(f"tcp_migrate_req={migrate}: {CLIENTS} queued, the other listener accepted {len(accepted)}, {reset} reset")


if __name__ == "__main__":
    main()
