"""cloudpilot's cluster agent: runs last in a cluster VM's boot, reports it ready, then heartbeats.

Standard library only: this file is copied as it is into each cluster VM's user-data and run there with
``python3 cluster-agent.py CONFIG``. It finds the address the VM reaches the server from (the route's source
address, as the VM sees it), serves its identity as JSON on a free TCP port of that address (so other services
and health URLs can reach it), reports both with ``POST …/ready``, and heartbeats until the server says the VM is
gone; then it exits and the VM powers off.
"""

import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

GIVE_UP = (400, 401, 403, 404, 409, 410, 422)  # the server will never accept this VM: stop retrying


def own_address(server_url):
    """The VM's source address towards the server. A UDP connect sends nothing; it only picks the route."""
    parts = urlsplit(server_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    family, _, _, _, where = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(where)
        return probe.getsockname()[0]


def serve(address, identity):
    """Answer ``GET /`` with ``identity`` on a free port of ``address``; returns the port."""
    body = json.dumps(identity).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        daemon_threads = True

    server = Server((address, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def post(url, token, body):
    """The HTTP status of a POST, 0 when the server cannot be reached."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError) as exc:
        print(f"cluster agent: {url}: {exc}", file=sys.stderr, flush=True)
        return 0


def main(argv):
    root = os.environ.get("CLOUDPILOT_VM_ROOT", "")  # set by the local cloud only
    with open(argv[0]) as f:
        config = json.load(f)
    with open(root + config["token_file"]) as f:
        token = f.read().strip()
    base = f"{config['server_url'].rstrip('/')}/api/v1/clusters/{config['cluster_id']}/instances/{config['vm_id']}"
    delay = 1
    while True:  # the network may come up late
        try:
            address = own_address(config["server_url"])
            break
        except OSError as exc:
            print(f"cluster agent: no route to the server yet: {exc}", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(2 * delay, 30)
    identity = {"vm_id": config["vm_id"], "cluster_id": config["cluster_id"], "service": config["service"]}
    port = serve(address, identity)
    report = {"address": address, "port": port, "hostname": socket.gethostname()}
    delay = 1
    while True:
        status = post(base + "/ready", token, report)
        if 200 <= status < 300:
            break
        if status in GIVE_UP:
            print(f"cluster agent: the server refused the report ({status})", file=sys.stderr, flush=True)
            return 1
        time.sleep(delay)
        delay = min(2 * delay, 30)
    print(f"cluster agent: {config['vm_id']} reported ready at {address} port {port}", flush=True)
    while True:
        time.sleep(config["heartbeat_seconds"])
        status = post(base + "/heartbeat", token, {})
        if status in GIVE_UP:
            print(f"cluster agent: the server has let this VM go ({status})", flush=True)
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
