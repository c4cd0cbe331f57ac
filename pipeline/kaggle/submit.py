"""Submit the pushed kernel to its code competition: the version upload recorded (pushed.json; Kaggle needs the
numeric version, SPEC §6), once Kaggle says that run completed; the submission's id goes to submitted.json, which
`./run.sh status` polls for the score."""
from collections.abc import Callable

from pipeline.core.errors import UserError
from pipeline.kaggle.client import (
    PUSHED_JSON,
    SUBMITTED_JSON,
    call,
    client,
    not_found_fix,
    now,
    read_record,
    write_record,
)
from pipeline.kaggle.status import kernel_state
from pipeline.kernel.spec import load_package

OUTPUT_FILE = "submission.csv"  # what kernel.py writes to /kaggle/working


def submit(name: str, message: str | None = None, again: bool = False,
           log: Callable[[str], object] = print) -> int | None:
    """Submit kernels/<name>'s pushed kernel version; the submission's id (None if Kaggle gave none). A version
    submitted before (submitted.json) is refused unless `again`: Kaggle counts every submission against the day's."""
    pkg, package = load_package(name)
    ref = package.ref("kernel")
    pushed = read_record(pkg, PUSHED_JSON)
    if pushed is None:
        raise UserError(f"{pkg / PUSHED_JSON} not found: a code-competition submission needs the kernel's numeric "
                        f"version, which ./run.sh upload {name} records when it pushes the kernel")
    version = pushed.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{pkg / PUSHED_JSON}: no numeric kernel version ({version!r}; a code-competition "
                        f"submission needs one): see kaggle.com/code/{ref}, then ./run.sh upload {name} again")
    before = read_record(pkg, SUBMITTED_JSON)
    if before and before.get("version") == version and not again:
        raise UserError(f"kernel {ref} version {version} was submitted at {before.get('submitted')} (submission "
                        f"{before.get('submission')}, {pkg / SUBMITTED_JSON}): see its score with ./run.sh status "
                        f"{name}, push a new version with ./run.sh upload {name}, or submit it again with --again")
    api = client(f"submitting {ref}")
    state, failure = kernel_state(api, name, ref, pushed)
    if state == "error":
        raise UserError(f"kernel {ref} version {version} failed{f' ({failure})' if failure else ''}: see its log "
                        f"(./run.sh status {name}), fix it, ./run.sh upload {name}, then submit")
    if state != "complete":
        raise UserError(f"kernel {ref} version {version} is {state}, not complete: wait for it "
                        f"(./run.sh status {name} --wait), then submit")
    message = message or f"{name} v{version}: models {' '.join(package.models)}; git {package.git_commit}"
    r = call(f"submit kernel {ref} version {version} to {package.competition}", api.competition_submit_code,
             OUTPUT_FILE, message, competition=package.competition, kernel=ref, kernel_version=version, quiet=True,
             fixes={404: not_found_fix(name, ref, pushed)})
    submission = r.ref or None
    write_record(pkg, SUBMITTED_JSON, {"competition": package.competition, "kernel": ref, "version": version,
                                       "submission": submission, "message": message, "submitted": now()})
    log(f"submitted kernel {ref} version {version} to {package.competition} (submission {submission}: "
        f"{' '.join(str(r.message or '').split())}); its score: ./run.sh status {name} --wait")
    return submission
