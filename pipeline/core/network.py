"""The network policy. Stages that compute (train, embed, ensemble, evaluate, the kernel) never reach the network;
the stages whose job is the network (weights, download, upload, submit, status) call `reach` before the client
does, so an offline machine gets one line naming the host within seconds instead of a client's retry loop."""
import os
import socket
import threading
import time
import urllib.request
from urllib.parse import urlsplit

from pipeline.core.errors import UserError

# seconds a connection attempt may take before the host counts as unreachable (PIPELINE_NET_TIMEOUT overrides):
# short enough that an offline stage, interpreter start included, ends within 10 s
TIMEOUT = 3.0
# huggingface_hub's waits (its defaults: 10 s for a HEAD, 10 s per stalled read); read once, when it is imported
HUB_TIMEOUTS = {"HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "20"}


def set_policy(online: bool) -> None:
    """Called by the CLI before a stage runs (so before huggingface_hub is imported). A compute stage gets
    HF_HUB_OFFLINE=1: a missing weights file is an error at once, never a download or a wait on the hub. A network
    stage keeps the user's setting and gets bounded hub timeouts (the user's own values win)."""
    if not online:
        os.environ["HF_HUB_OFFLINE"] = "1"
        return
    for key, value in HUB_TIMEOUTS.items():
        os.environ.setdefault(key, value)


def _via(url: str) -> tuple[str, int, str]:
    """(host, port, shown name) a connection to url really opens: the proxy the environment names for it, if any."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return p.hostname or "", p.port or 80, f"{host} (through the proxy {p.hostname}:{p.port or 80})"
    return host, port, host


def timeout_seconds() -> float:
    raw = os.environ.get("PIPELINE_NET_TIMEOUT", "")
    try:
        return float(raw) if raw else TIMEOUT
    except ValueError:
        raise UserError(f"PIPELINE_NET_TIMEOUT={raw!r}: give seconds (e.g. 3), or unset it") from None


def reach(url: str, what: str, fix: str = "check the connection, or work offline",
          timeout: float | None = None) -> None:
    """Return when a TCP connection to url's host (or its proxy) opens within `timeout` seconds (default:
    PIPELINE_NET_TIMEOUT or TIMEOUT), else a one-line UserError: 'cannot reach <host> for <what> (<why>): <fix>'."""
    timeout = timeout_seconds() if timeout is None else timeout
    host, port, shown = _via(url)
    t = time.monotonic()
    try:
        return _connect(host, port, timeout)
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise UserError(f"cannot reach {shown} for {what} ({why} after {time.monotonic() - t:.1f}s): {fix}") from None


def _connect(host: str, port: int, timeout: float) -> None:
    """Open and close a TCP connection within `timeout` seconds, the name lookup included (create_connection's own
    timeout does not bound a lookup that hangs when no DNS server answers)."""
    outcome: list = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise TimeoutError("timed out")
    if outcome[0] is not None:
        raise outcome[0]
