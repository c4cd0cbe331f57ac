"""The kaggle client's side of a package built by `./run.sh kernel`: upload (each dataset created the first time,
a new version after, then the kernel pushed) and the pushed kernel's status and output. Credentials come only from
the client's own places (~/.kaggle/kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN); none is ever
written to kernels/, a log or an error message."""
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.errors import UserError
from pipeline.kernel.spec import DATASETS, PARTS, VERIFIED_JSON, load_package

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

NO_CREDENTIALS = ("no Kaggle credentials: put kaggle.json (kaggle.com > Settings > API > Create New Token) in "
                  "~/.kaggle/ with chmod 600, or set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN")


def _credentials_present():
    if os.environ.get("KAGGLE_API_TOKEN") or (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        return True
    from pipeline.kaggle.guard import kaggle_config_dirs

    names = ("kaggle.json", "access_token", "access_token.txt")
    return any((d / n).is_file() for d in kaggle_config_dirs() for n in names)


def client() -> "KaggleApi":
    """An authenticated KaggleApi, or a one-line UserError saying where credentials go."""
    if not _credentials_present():
        raise UserError(NO_CREDENTIALS)
    from kaggle.api.kaggle_api_extended import KaggleApi  # imported late: `import kaggle` authenticates

    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:
        raise UserError(NO_CREDENTIALS) from None
    return api


def scrub(text: str) -> str:
    """text with any local credential value masked (for messages built from client errors)."""
    from pipeline.kaggle.guard import local_secrets

    for s in local_secrets():
        text = text.replace(s.decode(), "***")
    return text


def _call(what, fn, *a, **kw):
    from requests import HTTPError, RequestException

    try:
        return fn(*a, **kw)
    except HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        raise UserError(scrub(f"{what}: Kaggle answered HTTP {code} ({e})")) from None
    except (RequestException, ValueError) as e:
        raise UserError(scrub(f"{what}: {type(e).__name__}: {e}")) from None


def _exists(api, ref):
    from requests import HTTPError

    try:
        api.dataset_status(ref)
        return True
    except HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            return False
        raise UserError(scrub(f"dataset {ref}: status check failed ({e})")) from None


def _listing(pkg, package, log):
    total = 0
    for part in PARTS:
        files = [f for f in package.files if f["path"].startswith(part + "/")]
        size = sum(f["bytes"] for f in files)
        total += size
        target = package.ref(part)
        log(f"{'kernel' if part == 'kernel' else 'dataset'} {target}: {len(files)} files, {size / 2**20:.1f} MB "
            f"from {pkg / part}")
        for f in files:
            log(f"  {f['path']}  {f['bytes']:,} B")
    log(f"total {total / 2**20:.1f} MB")


def upload(name: str, dry_run: bool = False, unverified: bool = False,
           log: Callable[[str], object] = print) -> str | None:
    from pipeline.kaggle import guard

    pkg, package = load_package(name)
    guard.check_tree(pkg)  # again: the folder may have been edited since it was built
    if not unverified and not (pkg / VERIFIED_JSON).is_file():
        raise UserError(f"{pkg} has not passed its offline check (no verified.json): rebuild without --no-verify, "
                        "or upload with --unverified")
    api = None if dry_run else client()  # a missing credential stops before the listing
    _listing(pkg, package, log)
    if dry_run:
        log("dry run: nothing was uploaded")
        return None
    note = f"models {' '.join(package.models)}; git {package.git_commit}"
    for part in DATASETS:
        ref = package.ref(part)
        if _exists(api, ref):
            r = _call(f"new version of {ref}", api.dataset_create_version, str(pkg / part), version_notes=note,
                      quiet=True, dir_mode="zip")
            action = "new version"
        else:
            r = _call(f"create {ref}", api.dataset_create_new, str(pkg / part), public=False, quiet=True,
                      dir_mode="zip")
            action = "created (private)"
        if getattr(r, "error", None):
            raise UserError(scrub(f"dataset {ref}: {r.error}"))
        log(f"dataset {ref}: {action} ({note})")
    r = _call(f"push kernel {package.slugs['kernel']}", api.kernels_push, str(pkg / "kernel"))
    if getattr(r, "error", None):
        raise UserError(scrub(f"kernel {package.slugs['kernel']}: {r.error}"))
    log(f"kernel pushed: {r.url} (version {r.version_number}); check it with ./run.sh kernel-status {name}")
    return r.url


def status(name: str, log: Callable[[str], object] = print) -> str:
    """The kernel's status name (lower case); downloads the output when complete."""
    pkg, package = load_package(name)
    ref = package.ref("kernel")
    api = client()
    r = _call(f"status of {ref}", api.kernels_status, ref)
    state = getattr(r.status, "name", str(r.status)).lower()
    log(f"kernel {ref}: {state}" + (f" ({r.failure_message})" if getattr(r, "failure_message", "") else ""))
    if state == "complete":
        out = pkg / "output"
        out.mkdir(exist_ok=True)
        files, _ = _call(f"output of {ref}", api.kernels_output, ref, str(out), force=True, quiet=True)
        for f in files or []:
            log(f"downloaded {f}")
    elif state in ("error", "cancel_acknowledged", "cancel_requested"):
        raise UserError(f"kernel {ref} ended with status {state}; see its log on Kaggle")
    return state
