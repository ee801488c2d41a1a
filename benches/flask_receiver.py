"""The Flask reference receiver of KLIKIT.md section 5, for the load benchmark.

Run by examples/load.rs (configuration `flask`, `CONFIGS=...,flask bash benches/run.sh`)
under gunicorn (2 sync workers pinned to the server
CPU). Each worker has its own seen set and its own background thread, as the
reference receiver does when run under a pre-fork server.
"""
import hashlib
import hmac
import json
import os
import queue
import threading

from flask import Flask, jsonify, request

SECRET = os.environ["KLIKIT_WEBHOOK_SECRET"].encode()
app = Flask(__name__)
seen = set()
jobs = queue.Queue(maxsize=1024)


def worker():
    while True:
        event_id, payload = jobs.get()
        len(payload.get("orders", []))


threading.Thread(target=worker, daemon=True).start()


@app.post("/webhooks/klikit")
def receive():
    signature = request.headers.get("x-klikit-signature")
    event_id = request.headers.get("x-klikit-event-id")
    event_type = request.headers.get("x-klikit-event-type")
    if not (signature and event_id and event_type):
        return jsonify(error="missing klikit headers"), 400
    raw = request.get_data()
    expected = hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return jsonify(error="invalid signature"), 401
    if event_id in seen:
        return jsonify(status="duplicate-ignored"), 200
    seen.add(event_id)
    jobs.put_nowait((event_id, json.loads(raw)))
    return jsonify(status="received"), 200
