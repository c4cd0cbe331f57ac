"""Upload a package built by `./run.sh kernel`: each dataset created the first time and versioned after, then
checked against Kaggle's own file list of it (names and sizes; the client skips a file whose blob upload failed and
still makes the version, SPEC §6), and only then the kernel pushed; its version number goes to pushed.json."""
from collections.abc import Callable

from pipeline.core.errors import UserError
from pipeline.core.io import read_json
from pipeline.kaggle.client import PUSHED_JSON, call, client, now, pages, poll, scrub, write_record
from pipeline.kernel.spec import DATASET_METADATA, DATASETS, PARTS, VERIFIED_JSON, load_package, package_digest

READY_INTERVAL, READY_TIMEOUT = 5.0, 1800.0  # seconds: Kaggle processes a new dataset version for minutes


def _state(api, ref):
    """The dataset's processing state ('ready', 'failed', ...), None while Kaggle does not know it."""
    from requests import HTTPError

    try:
        return api.dataset_status(ref)
    except HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            return None
        raise UserError(scrub(f"dataset {ref}: status check failed ({e})")) from None


def _check_verified(pkg, name):
    """A UserError unless pkg's verified.json records a passed offline check of this very build of it."""
    path, rebuild = pkg / VERIFIED_JSON, f"rebuild it with ./run.sh kernel {name} ..., or upload with --unverified"
    if not path.is_file():
        raise UserError(f"{pkg} has not passed its offline check (no {VERIFIED_JSON}): {rebuild} (without "
                        "--no-verify)")
    record = read_json(path, rebuild)
    if record.get("package") != package_digest(pkg):  # a check of an earlier build, or a hand-made file
        raise UserError(f"{path}: records the offline check of another build of {name}, not of the files there now: "
                        f"{rebuild}")


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


def remote_files(api, ref: str) -> dict:
    """{path: bytes} of the dataset's current version as Kaggle lists it (every page)."""
    files = {}
    for r in pages(f"file list of dataset {ref}", api.dataset_list_files, ref):
        if r.error_message:
            raise UserError(scrub(f"file list of dataset {ref}: {r.error_message}"))
        files.update({f.name: f.total_bytes for f in r.dataset_files or []})
    return files


def local_files(package, part: str) -> dict:
    """{path inside the dataset: bytes} of what the client uploads of a part (all but its dataset-metadata.json)."""
    n = len(part) + 1
    return {f["path"][n:]: f["bytes"] for f in package.files
            if f["path"].startswith(part + "/") and f["path"][n:] != DATASET_METADATA}


def _size(n):
    return "missing" if n is None else f"{n:,} B"


def first_difference(local: dict, remote: dict) -> str | None:
    """'<path>: <size> here, <size or missing> on Kaggle' for the first path (sorted) that differs, else None."""
    for path in sorted(local.keys() | remote.keys()):
        here, there = local.get(path), remote.get(path)
        if here != there:
            return f"{path}: {_size(here)} here, {_size(there)} on Kaggle"
    return None


def _verify(api, package, part, name, log, interval, timeout):
    ref = package.ref(part)

    def ready():
        state = call(f"status of dataset {ref}", _state, api, ref)
        if state == "failed":
            raise UserError(f"dataset {ref}: Kaggle failed to process the new version (kaggle.com/datasets/{ref}); "
                            f"run ./run.sh upload {name} again")
        return state == "ready", state or "not listed yet", None

    poll(f"dataset {ref}", ready, interval, timeout, f"check kaggle.com/datasets/{ref}, then rerun ./run.sh upload "
         f"{name}", log)
    local, remote = local_files(package, part), remote_files(api, ref)
    diff = first_difference(local, remote)
    if diff:
        raise UserError(f"dataset {ref}: the version on Kaggle differs from {name}'s package (first: {diff}); a "
                        f"partial upload, so the kernel was not pushed: run ./run.sh upload {name} again")
    log(f"dataset {ref}: verified, Kaggle lists the package's {len(local)} files with their sizes")


def upload(name: str, dry_run: bool = False, unverified: bool = False, log: Callable[[str], object] = print,
           interval: float = READY_INTERVAL, timeout: float = READY_TIMEOUT) -> str | None:
    """Upload kernels/<name> (datasets, verified, then the kernel); the kernel's address, None for a dry run."""
    from pipeline.core import guard

    pkg, package = load_package(name)
    guard.check_tree(pkg)  # again: the folder may have been edited since it was built
    if not unverified:
        _check_verified(pkg, name)
    api = None if dry_run else client(f"uploading {name}")  # no credential or no network: before the listing
    _listing(pkg, package, log)
    if dry_run:
        log("dry run: nothing was uploaded")
        return None
    note = f"models {' '.join(package.models)}; git {package.git_commit}"
    for part in DATASETS:
        ref = package.ref(part)
        # quiet=False: the client's per-file lines and progress bars are the upload's progress
        if _state(api, ref) is not None:
            r = call(f"new version of {ref}", api.dataset_create_version, str(pkg / part), version_notes=note,
                     quiet=False, dir_mode="zip")
            action = "new version"
        else:
            r = call(f"create {ref}", api.dataset_create_new, str(pkg / part), public=False, quiet=False,
                     dir_mode="zip")
            action = "created (private)"
        if getattr(r, "error", None):
            raise UserError(scrub(f"dataset {ref}: {r.error}"))
        log(f"dataset {ref}: {action} ({note})")
        _verify(api, package, part, name, log, interval, timeout)
    kernel = package.ref("kernel")
    r = call(f"push kernel {kernel}", api.kernels_push, str(pkg / "kernel"))
    if getattr(r, "error", None):
        raise UserError(scrub(f"kernel {kernel}: {r.error}"))
    version = r.version_number or None
    write_record(pkg, PUSHED_JSON, {"kernel": kernel, "version": version, "url": r.url, "pushed": now(),
                                    "competition": package.competition, "models": package.models,
                                    "git_commit": package.git_commit})
    log(f"kernel pushed: {r.url} (version {version or 'not given'}); follow it with ./run.sh status {name} --wait")
    return r.url
