"""The kaggle client as every network stage (download, upload, status, submit) uses it: credentials only from the
client's own places (~/.kaggle/kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN), the API host reached
before the client is imported (`import kaggle` authenticates, and a token is checked over the network), every
failed call turned into one line that says what to do and holds no credential, bounded polling with a progress line
per poll, and the small records upload and submit leave in kernels/<name>/ for the stages after them."""
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError
from pipeline.core.io import read_json, write_text
from pipeline.core.network import reach

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

NO_CREDENTIALS = ("no Kaggle credentials: put kaggle.json (kaggle.com > Settings > API > Create New Token) in "
                  "~/.kaggle/ with chmod 600, or set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN")
# kernels/<name>/ records: the pushed kernel version (upload), the submission made of it (submit)
PUSHED_JSON, SUBMITTED_JSON = "pushed.json", "submitted.json"


def _credentials_present():
    from pipeline.core.guard import kaggle_config_dirs, kaggle_json_files

    # read even where the variables give the credentials: the client parses kaggle.json whatever else it has
    if list(kaggle_json_files()):
        return True
    if os.environ.get("KAGGLE_API_TOKEN") or (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        return True
    return any((d / n).is_file() for d in kaggle_config_dirs() for n in ("access_token", "access_token.txt"))


def api_url() -> str:
    """The API host the client calls: https://api.kaggle.com, or http://localhost with
    KAGGLE_API_ENVIRONMENT=LOCALHOST (the tests' stand-in, through HTTP_PROXY)."""
    from kagglesdk.kaggle_env import get_endpoint, get_env

    try:
        return get_endpoint(get_env())
    except Exception:  # kagglesdk raises a bare Exception for an unknown value
        raise UserError(f"KAGGLE_API_ENVIRONMENT={os.environ.get('KAGGLE_API_ENVIRONMENT')}: not a Kaggle "
                        "environment; unset it") from None


def client(what: str) -> "KaggleApi":
    """An authenticated KaggleApi once the API host answers, or a one-line UserError: no credentials (where they
    go), or the host unreachable within a few seconds (`what` names the job)."""
    if not _credentials_present():
        raise UserError(NO_CREDENTIALS)
    reach(api_url(), what, "check the internet connection (this stage needs Kaggle's API)")
    from kaggle.api.kaggle_api_extended import KaggleApi  # imported late: `import kaggle` authenticates

    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:
        raise UserError(NO_CREDENTIALS) from None
    return api


def scrub(text: str) -> str:
    """text on one line with any local credential value masked (for messages built from client errors)."""
    from pipeline.core.guard import local_secrets

    for s in local_secrets():
        text = text.replace(s.decode(), "***")
    return " ".join(text.split())


def pages(what: str, fn: Callable, *a, fixes: dict | None = None, **kw):
    """Each response of a paged list call of the client, fn(*a, page_token=..., page_size=..., **kw), from the first
    page to the last (a call as `call` makes it)."""
    token = None
    while True:
        r = call(what, fn, *a, page_token=token, page_size=200, fixes=fixes, **kw)
        yield r
        token = r.next_page_token
        if not token:
            return


def call(what: str, fn: Callable, *a, fixes: dict | None = None, **kw):
    """fn(*a, **kw) of the client; a failure is a one-line UserError starting with `what`. fixes: HTTP status ->
    what to do, appended to that status's message."""
    from requests import HTTPError, RequestException

    try:
        return fn(*a, **kw)
    except HTTPError as e:
        code = e.response.status_code if e.response is not None else None
        fix = (fixes or {}).get(code)
        raise UserError(scrub(f"{what}: Kaggle answered HTTP {code or '?'} ({e})" + (f": {fix}" if fix else "")
                              )) from None
    except (RequestException, ValueError, OSError) as e:
        raise UserError(scrub(f"{what}: {type(e).__name__}: {e}")) from None


def enum_name(value) -> str:
    """A kagglesdk enum (KernelWorkerStatus.COMPLETE, SubmissionStatus.PENDING) as the lower-case word."""
    return getattr(value, "name", str(value)).lower()


def not_found_fix(name: str, ref: str, pushed: dict | None) -> str:
    """What to do when Kaggle answers 404 for the package's pushed kernel: SPEC §6, a notebook pushed through the
    API may be "not found" until it has been saved once in the web UI."""
    saved = f"open it once in the Kaggle web UI (kaggle.com/code/{ref}) and save it, then rerun"
    if pushed is None:
        return f"push it first with ./run.sh upload {name}; if it was pushed, {saved}"
    return f"version {pushed.get('version')} was pushed at {pushed.get('pushed')}: {saved}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def poll(what: str, check: Callable[[], tuple], interval: float, timeout: float, fix: str,
         log: Callable[[str], object] = print):
    """Call check() -> (done, shown, value) every `interval` seconds, printing '<what>: <shown> (<elapsed>)' each
    time, until done; then return value. Past `timeout` seconds a one-line UserError ending with `fix`."""
    t0 = time.monotonic()
    while True:
        done, shown, value = check()
        elapsed = time.monotonic() - t0
        log(f"{what}: {shown} ({_duration(elapsed)})")
        if done:
            return value
        if elapsed + interval > timeout:
            raise UserError(f"{what}: still {shown} after {_duration(elapsed)} (--timeout {timeout:g}): {fix}")
        time.sleep(interval)


def read_record(pkg: Path, name: str) -> dict | None:
    """kernels/<name>/<record>.json as a dict, None when absent; a damaged one is a UserError naming it."""
    path = Path(pkg) / name
    if not path.is_file():
        return None
    return read_json(path, "rerun the stage that writes it")


def write_record(pkg: Path, name: str, record: dict) -> None:
    write_text(Path(pkg) / name, json.dumps(record, indent=1) + "\n")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
