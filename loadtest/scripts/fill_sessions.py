#!/usr/bin/env python3
"""Creates N persistent MQTT 5 sessions (session expiry 3600 s), each with
SUBS subscriptions, over CONNS concurrent connections at a time, then leaves
them offline: the session recovery measurement of docs/PERFORMANCE.md
("Persistence"). Every CONNACK and SUBACK is waited for, so with persistence
each is on disk. Usage: fill_sessions.py N [PORT] [SUBS] [CONNS]."""
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

n = int(sys.argv[1])
port = int(sys.argv[2]) if len(sys.argv) > 2 else 1883
subs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
conns = int(sys.argv[4]) if len(sys.argv) > 4 else 16


def worker(ids):
    for i in ids:
        done = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev{i}", protocol=mqtt.MQTTv5)
        acks = {"n": 0}

        def on_subscribe(client, userdata, mid, reasons, props):
            acks["n"] += 1
            if acks["n"] == subs:
                done.set()

        c.on_subscribe = on_subscribe
        p = Properties(PacketTypes.CONNECT)
        p.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=True, properties=p)
        c.loop_start()
        for s in range(subs):
            c.subscribe(f"site/area{i % 100}/dev{i}/cmd{s}", qos=1)
        if subs and not done.wait(60):
            sys.exit(f"dev{i}: SUBACKs did not come")
        c.disconnect()
        c.loop_stop()


t = time.time()
threads = [threading.Thread(target=worker, args=(range(k, n, conns),)) for k in range(conns)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print(f"{n} sessions x {subs} subscriptions in {time.time() - t:.1f}s")
