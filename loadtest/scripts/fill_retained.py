#!/usr/bin/env python3
"""Fills a broker with N retained messages (64 B, distinct topics), QoS 0
except the last (QoS 1, waited for): the recovery-time measurement of
docs/PERFORMANCE.md ("Persistence"). Usage: fill_retained.py N [PORT]."""
import sys
import time

import paho.mqtt.client as mqtt

n = int(sys.argv[1])
port = int(sys.argv[2]) if len(sys.argv) > 2 else 1883
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="filler", protocol=mqtt.MQTTv311)
c.max_inflight_messages_set(1000)
c.connect("127.0.0.1", port)
c.loop_start()
t = time.time()
payload = b"x" * 64
last = None
for i in range(n):
    qos = 1 if i == n - 1 else 0
    last = c.publish(f"site/area{i % 100}/dev{i}/temp", payload, qos=qos, retain=True)
last.wait_for_publish(120)
print(f"{n} retained in {time.time() - t:.1f}s")
c.loop_stop()
c.disconnect()
