"""One paho-mqtt (2.x) client against the broker: connect (MQTT 5 or
3.1.1, plain or TLS with a client certificate), subscribe at QoS 2, publish
one message at each QoS to itself, and check all three come back. Prints a
JSON line; exits 0 only if everything arrived. Used by io/tests/paho.rs."""
import argparse
import json
import ssl
import sys
import time

import paho.mqtt.client as mqtt

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--protocol", choices=["5", "311"], required=True)
p.add_argument("--client-id", required=True)
p.add_argument("--ca")
p.add_argument("--cert")
p.add_argument("--key")
args = p.parse_args()

protocol = mqtt.MQTTv5 if args.protocol == "5" else mqtt.MQTTv311
client = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=protocol
)
if args.ca:
    client.tls_set(
        ca_certs=args.ca,
        certfile=args.cert,
        keyfile=args.key,
        cert_reqs=ssl.CERT_REQUIRED,
    )

state = {"connack": None, "suback": None, "got": [], "disconnect": None}


def on_connect(c, userdata, flags, reason, properties=None):
    state["connack"] = str(reason)


def on_subscribe(c, userdata, mid, reasons, properties=None):
    state["suback"] = [str(r) for r in reasons]


def on_message(c, userdata, msg):
    state["got"].append([msg.topic, msg.qos, msg.payload.decode()])


def on_disconnect(c, userdata, flags, reason, properties=None):
    state["disconnect"] = str(reason)


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.on_disconnect = on_disconnect


def wait(what, seconds=10):
    end = time.time() + seconds
    while not what() and time.time() < end:
        time.sleep(0.02)
    return what()


client.connect("127.0.0.1", args.port, keepalive=30)
client.loop_start()
ok = wait(lambda: state["connack"] is not None)
topic = f"paho/{args.client_id}"
if ok:
    client.subscribe(topic, qos=2)
    ok = wait(lambda: state["suback"] is not None)
if ok:
    for qos in (0, 1, 2):
        client.publish(topic, f"qos{qos}", qos=qos).wait_for_publish(10)
    ok = wait(lambda: len(state["got"]) >= 3)
client.disconnect()
client.loop_stop()
expected = sorted([[topic, q, f"qos{q}"] for q in (0, 1, 2)])
state["ok"] = bool(ok) and sorted(state["got"]) == expected
print(json.dumps(state))
sys.exit(0 if state["ok"] else 1)
