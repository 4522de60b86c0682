"""The broker's CPU time per /metrics scrape with N connected MQTT clients.

    python3 bench/scrape-cost.py target/release/starling N SCRAPES

Starts the broker (memory durability, HTTP on 127.0.0.1:26002), opens N MQTT 3.1.1
connections, measures the idle CPU for 3 s, then times SCRAPES sequential scrapes and prints
the broker CPU per scrape (utime + stime from /proc, idle subtracted). Loopback only.
"""
import os, tempfile, socket, struct, subprocess, sys, time, urllib.request
BIN = sys.argv[1]; N = int(sys.argv[2]); SCRAPES = int(sys.argv[3])
d = os.path.join(tempfile.mkdtemp(prefix="starling-scrape."), "data"); os.makedirs(d, exist_ok=True)
open(os.path.join(os.path.dirname(d), "s.toml"), "w").write('[[listener]]\nbind = "127.0.0.1:26001"\n[http]\nbind = "127.0.0.1:26002"\n[storage]\ndurability = "memory"\n[limits]\nmax_connections = 100000\n')
p = subprocess.Popen([BIN, "serve", "--config", os.path.join(os.path.dirname(d), "s.toml"), "--data-dir", d], stderr=subprocess.DEVNULL)
time.sleep(1)
def connect_pkt(cid):
    cid = cid.encode()
    vh = b"\x00\x04MQTT\x04\x02\x00\x00"
    pl = struct.pack(">H", len(cid)) + cid
    rem = len(vh) + len(pl)
    return bytes([0x10, rem]) + vh + pl
socks = []
for i in range(N):
    s = socket.create_connection(("127.0.0.1", 26001)); s.sendall(connect_pkt(f"c{i}")); socks.append(s)
for s in socks: s.recv(4)
def cpu():
    f = open(f"/proc/{p.pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
url = "http://127.0.0.1:26002/metrics"
body = urllib.request.urlopen(url).read()
time.sleep(1)
c0 = cpu(); t0 = time.time(); time.sleep(3); idle = (cpu() - c0) / (time.time() - t0)
c0 = cpu(); t0 = time.time()
for _ in range(SCRAPES): urllib.request.urlopen(url).read()
dt = time.time() - t0; used = cpu() - c0 - idle * dt
print(f"clients={N} scrapes={SCRAPES} body={len(body)}B broker_cpu_per_scrape_ms={used/SCRAPES*1000:.3f} idle_cpu={idle*100:.2f}%")
p.terminate(); p.wait()
