"""A stand-in for Kaggle's API servers on loopback, for the real kaggle client (KAGGLE_API_ENVIRONMENT=LOCALHOST
points it at http://localhost; HTTP_PROXY routes that to this server's port, so no privileged port is needed).

It speaks the kagglesdk JSON protocol (POST /api/v1/<service>/<Method>) for the calls upload and kernel-status
make, takes blob uploads (PUT to the createUrl it hands out) and serves kernel output files, and records every
request: method, path, headers, body."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class StandIn:
    def __init__(self):
        self.requests = []  # (method, path, headers dict, body bytes)
        self.blobs = {}  # token -> uploaded bytes
        self.datasets = {}  # "owner/slug" -> list of request bodies (create, then versions)
        self.kernels = {}  # "owner/slug" -> list of SaveKernel bodies
        self.output = {"submission.csv": b"image_id,hotel_id\n"}
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _reply(self, code, obj=None, raw=None, ctype="application/json"):
                data = raw if raw is not None else json.dumps(obj if obj is not None else {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self._body()
                path = urlsplit(self.path).path
                with standin._lock:
                    standin.requests.append(("POST", path, dict(self.headers), body))
                code, obj = standin.answer(path.rsplit("/", 1)[-1], json.loads(body or b"{}"))
                self._reply(code, obj)

            def do_PUT(self):
                body = self._body()
                path = urlsplit(self.path).path
                with standin._lock:
                    standin.requests.append(("PUT", path, dict(self.headers), body))
                    standin.blobs[path.rsplit("/", 1)[-1]] = body
                self._reply(200, {})

            def do_GET(self):
                path = urlsplit(self.path).path
                with standin._lock:
                    standin.requests.append(("GET", path, dict(self.headers), b""))
                name = path.rsplit("/", 1)[-1]
                if name in standin.output:
                    self._reply(200, raw=standin.output[name], ctype="application/octet-stream")
                else:
                    self._reply(404, {"code": 404, "message": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, method, req):
        if method == "GetDatasetStatus":
            ref = f"{req.get('ownerSlug')}/{req.get('datasetSlug')}"
            if ref in self.datasets:
                return 200, {"status": "READY"}
            return 404, {"code": 404, "message": f"dataset {ref} not found"}
        if method == "StartBlobUpload":
            token = f"blob{len(self.blobs) + len(self.requests)}"
            return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}
        if method == "CreateDataset":
            ref = f"{req.get('ownerSlug')}/{req.get('slug')}"
            self.datasets[ref] = [req]
            return 200, {"ref": ref, "url": f"http://localhost/datasets/{ref}", "status": "ok"}
        if method == "CreateDatasetVersion":
            ref = f"{req.get('ownerSlug')}/{req.get('datasetSlug')}"
            if ref not in self.datasets:
                return 404, {"code": 404, "message": f"dataset {ref} not found"}
            self.datasets[ref].append(req)
            return 200, {"ref": ref, "url": f"http://localhost/datasets/{ref}", "status": "ok"}
        if method == "SaveKernel":
            ref = req.get("slug")
            self.kernels.setdefault(ref, []).append(req)
            return 200, {"ref": f"/code/{ref}", "url": f"http://localhost/code/{ref}",
                         "versionNumber": len(self.kernels[ref])}
        if method == "GetKernelSessionStatus":
            return 200, {"status": "COMPLETE"}
        if method == "ListKernelSessionOutput":
            return 200, {"files": [{"fileName": n, "url": f"http://localhost/output/{n}"} for n in self.output],
                         "log": "[]"}
        return 404, {"code": 404, "message": f"the stand-in does not serve {method}"}

    def env(self):
        """Environment for a client process: LOCALHOST API, proxied to this server, nothing else reachable."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": proxy, "http_proxy": proxy,
                "HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
