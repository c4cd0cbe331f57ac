"""A stand-in for the Hugging Face hub on loopback, for the real huggingface_hub client (HF_ENDPOINT points it here).

It answers the two requests hf_hub_download makes for a file of a model repo: HEAD /<repo>/resolve/<revision>/<file>
(the metadata: ETag and X-Linked-Etag = the file's sha256, X-Repo-Commit, Content-Length) and then GET of the same
path (the bytes); an unknown file is a 404 with X-Error-Code: EntryNotFound, as the hub says it. Every request is
recorded (method, path)."""
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self, files: dict[str, bytes]):
        """files: '<repo id>/<file name>' -> bytes, e.g. 'timm/test_efficientnet.r160_in1k/model.safetensors'."""
        self.files = files
        self.requests: list[tuple[str, str]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, with_body):
                path = unquote(urlsplit(self.path).path)
                standin.requests.append((self.command, path))
                repo, sep, rest = path.strip("/").partition("/resolve/")
                data = standin.files.get(f"{repo}/{rest.partition('/')[2]}") if sep else None
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                self.send_response(200)
                for key, value in (("ETag", etag), ("X-Linked-Etag", etag), ("X-Repo-Commit", COMMIT),
                                   ("Content-Length", str(len(data))), ("Content-Type", "application/octet-stream")):
                    self.send_header(key, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def gets(self, name: str) -> int:
        """How many GETs of a file called `name` the stand-in has served."""
        return sum(1 for method, path in self.requests if method == "GET" and path.endswith("/" + name))


def hub_env(tmp_path, endpoint):
    """Fresh hub and torch caches (never the real ones) and the hub endpoint. HF_HUB_OFFLINE=0: the tests'
    conftest sets it to 1 for everything else."""
    return {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
            "TORCH_HOME": str(tmp_path / "torch"), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0",
            "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


def refused_endpoint():
    with socket.socket() as s:  # a port nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
