"""Credential guard: nothing that holds a Kaggle credential may be packaged, uploaded or logged.

A file is refused when its name is a credential file (kaggle.json, access_token[.txt], credentials.json) or its
bytes hold: the key of the Kaggle credentials found on this machine (KAGGLE_KEY, KAGGLE_API_TOKEN, the kaggle.json
the client reads); a kaggle.json-style {"username": ..., "key": <32 hex>} pair; a KAGGLE_KEY= / KAGGLE_API_TOKEN=
assignment with a value; an access_token / api key field with a token-like value. The patterns need a value, so
this module (which names them) and code that merely mentions them pass."""
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.io import damaged, read_json

CREDENTIAL_FILES = {"kaggle.json", "access_token", "access_token.txt", "credentials.json"}
_PATTERNS = [
    (re.compile(rb'"username"\s*:\s*"[^"]+"\s*,\s*"key"\s*:\s*"[0-9a-f]{32}"'), "a kaggle.json username/key pair"),
    (re.compile(rb'"key"\s*:\s*"[0-9a-f]{32}"'), "a Kaggle API key field"),
    (re.compile(rb'KAGGLE_(?:KEY|API_TOKEN)\s*[=:]\s*["\']?[A-Za-z0-9_.\-]{16,}'),
     "a KAGGLE_KEY/KAGGLE_API_TOKEN value"),
    (re.compile(rb'access_token["\']?\s*[=:]\s*["\']?[A-Za-z0-9_.\-]{16,}'), "an access_token value"),
]
_MIN_SECRET = 8  # shorter "secrets" (test placeholders) would match everywhere
NEW_TOKEN = "put a new token in its place (kaggle.com > Settings > API > Create New Token), chmod 600"


def kaggle_config_dirs() -> list[Path]:
    """The folders where the kaggle client looks for its credential files (kaggle.json, the access_token file),
    in its order: KAGGLE_CONFIG_DIR or ~/.kaggle, then the XDG config dir."""
    return [Path(os.environ.get("KAGGLE_CONFIG_DIR") or os.path.expanduser("~/.kaggle")),
            Path(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "kaggle")]


def kaggle_json_files() -> Iterator[tuple[Path, dict]]:
    """(path, contents) of each kaggle.json the client may read, in its order. One that is not a JSON object is a
    one-line UserError naming it: the client would fail on it with a traceback, or say there are no credentials."""
    for d in kaggle_config_dirs():
        path = Path(d, "kaggle.json")
        if not path.is_file():
            continue
        try:
            values = read_json(path, NEW_TOKEN)
        except OSError as e:
            raise UserError(f"{path}: cannot be read ({e.strerror}): chmod 600 it as its owner") from None
        odd = [k for k in ("username", "key") if k in values and not isinstance(values[k], str)]
        if odd:
            raise damaged(path, f"its {odd[0]} is a JSON {type(values[odd[0]]).__name__}, not a string", NEW_TOKEN)
        yield path, values


def kaggle_json(field: str) -> Iterator[str]:
    """The values of `field` (username, key) in the kaggle.json files the client would read, in its order."""
    for _, values in kaggle_json_files():
        if values.get(field):
            yield str(values[field])


def without_credentials(env: Mapping[str, str] | None = None) -> dict:
    """env (default: this process's) minus every KAGGLE_* variable (KAGGLE_KEY, KAGGLE_API_TOKEN, KAGGLE_USERNAME,
    KAGGLE_CONFIG_DIR, ...): the environment of every subprocess that needs no Kaggle credential, so that none reaches
    it, or its output where that is echoed."""
    return {k: v for k, v in (os.environ if env is None else env).items() if not k.upper().startswith("KAGGLE_")}


def local_secrets() -> list[bytes]:
    """The credential values the kaggle client would use on this machine (never printed)."""
    found = []
    for var in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        v = os.environ.get(var, "")
        if v and not Path(v).is_file():
            found.append(v)
    found += kaggle_json("key")
    for d in kaggle_config_dirs():
        for name in ("access_token", "access_token.txt"):
            try:
                tok = Path(d, name).read_text().strip()
                if tok:
                    found.append(tok)
            except OSError:
                pass
    return [s.encode() for s in found if len(s) >= _MIN_SECRET]


def why_refused(name: str, data: bytes, secrets: list[bytes]) -> str | None:
    """The reason `data` (bytes, of a file called `name`) may not be packaged, or None."""
    if Path(name).name.lower() in CREDENTIAL_FILES:
        return "a Kaggle credential file"
    if any(s in data for s in secrets):
        return "this machine's Kaggle credential"
    for pattern, what in _PATTERNS:
        if pattern.search(data):
            return what
    return None


def check_tree(root: str | Path, secrets: list[bytes] | None = None) -> None:
    """UserError naming the first file under root (a folder or one file) that holds a credential."""
    secrets = local_secrets() if secrets is None else secrets
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        why = why_refused(path.name, path.read_bytes(), secrets)
        if why:
            raise UserError(f"{path}: holds {why}; refusing to package it. Remove it (credentials belong in "
                            "~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY only) and rebuild")
