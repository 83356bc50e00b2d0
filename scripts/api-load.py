#!/usr/bin/env python3
"""Load on one node's HTTP API, for `scripts/resilience.sh apiload`: IDLE connections that send
nothing, SLOW clients that drip a request head one byte a second, and POLLERS clients that fetch
PATH in a loop. Runs until killed; prints the pollers' request count on SIGTERM."""
import signal, socket, sys, threading, time

addr, idle, slow, pollers, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
host, port = addr.rsplit(":", 1)
port = int(port)
done = [0]
held = []

def hold_idle():
    for _ in range(idle):
        try:
            s = socket.create_connection((host, port), timeout=5)
            held.append(s)
        except OSError:
            time.sleep(0.01)

def drip():
    while True:
        try:
            s = socket.create_connection((host, port), timeout=5)
            for b in b"GET /status HTTP/1.1\r\nHost: x\r\n":
                s.send(bytes([b]))
                time.sleep(1)
        except OSError:
            time.sleep(0.1)

def poll():
    req = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    while True:
        try:
            s = socket.create_connection((host, port), timeout=5)
            f = s.makefile("rb")
            while True:
                s.sendall(req)
                length = 0
                while True:
                    line = f.readline()
                    if not line:
                        raise OSError("closed")
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    if line in (b"\r\n", b"\n"):
                        break
                f.read(length)
                done[0] += 1
        except OSError:
            time.sleep(0.05)

def stop(*_):
    print(f"pollers answered {done[0]} requests", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
threading.Thread(target=hold_idle, daemon=True).start()
for _ in range(slow):
    threading.Thread(target=drip, daemon=True).start()
for _ in range(pollers):
    threading.Thread(target=poll, daemon=True).start()
while True:
    time.sleep(1)
