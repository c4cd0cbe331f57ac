"""The pushed kernel's status (once, or polled until it ends), its output and log fetched into kernels/<name>/output/
when it has run, and after `./run.sh submit` the submission's state until Kaggle has scored it."""
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.io import within
from pipeline.kaggle.client import (
    PUSHED_JSON,
    SUBMITTED_JSON,
    call,
    client,
    enum_name,
    not_found_fix,
    pages,
    poll,
    read_record,
    write_record,
)
from pipeline.kernel.spec import load_package

INTERVAL, TIMEOUT = 60.0, 12 * 3600.0  # seconds; a code competition's kernel may run 9 hours, its scoring as long
ENDED = ("complete", "error", "cancel_acknowledged", "cancel_requested")
OUTPUT = "output"


def kernel_state(api, name: str, ref: str, pushed: dict | None) -> tuple[str, str]:
    """(state, failure message) of the kernel's latest run: queued, running, complete, error, ..."""
    r = call(f"status of kernel {ref}", api.kernels_status, ref, fixes={404: not_found_fix(name, ref, pushed)})
    return enum_name(r.status), " ".join(str(getattr(r, "failure_message", "") or "").split())


def _output_listing(api, ref: str) -> tuple[list, str]:
    """([(file name, URL)] of the kernel's output as Kaggle names it, every page; its log text). Listed here, not by
    the client's kernels_output, which writes each file at <folder>/<its name> whatever the name holds."""
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

    owner, slug = ref.split("/", 1)
    with api.build_kaggle_client() as kaggle:
        def page(page_token, page_size):
            request = ApiListKernelSessionOutputRequest()
            request.user_name, request.kernel_slug, request.page_size = owner, slug, page_size
            if page_token:
                request.page_token = page_token
            return kaggle.kernels.kernels_api_client.list_kernel_session_output(request)

        responses = list(pages(f"output of kernel {ref}", page))
    return [(f.file_name, f.url) for r in responses for f in r.files or []], responses[0].log or ""


def _get(url: str, path: Path) -> None:
    import requests

    with requests.get(url, stream=True, timeout=60) as r, open(path, "wb") as f:
        r.raise_for_status()
        for chunk in r.iter_content(1 << 20):
            f.write(chunk)


def _fetch_output(api, pkg: Path, ref: str, log) -> Path:
    """The kernel's output files and log into pkg/output/, replacing the previous ones only once all arrived. A file
    whose name would leave pkg/output/ is a UserError before anything is fetched."""
    out = pkg / OUTPUT
    listed, kernel_log = _output_listing(api, ref)
    if kernel_log:
        listed.append((f"{ref.split('/', 1)[1]}.log", None))
    tmp = Path(tempfile.mkdtemp(prefix=f".{OUTPUT}.", suffix=".tmp", dir=pkg)).resolve()
    try:
        files = []
        for name, url in listed:
            path = within(tmp, name)
            if path is None:
                raise UserError(f"kernel {ref}: Kaggle names an output file {name!r}, which leaves {out}; nothing "
                                f"was fetched (see its output on kaggle.com/code/{ref})")
            files.append((path, url))
        for path, url in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            if url is None:
                path.write_text(kernel_log)
            else:
                call(f"output file {path.relative_to(tmp)} of kernel {ref}", _get, url, path)
        old = None
        if out.exists():  # a folder cannot be swapped atomically: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{OUTPUT}.", suffix=".old", dir=pkg))
            os.replace(out, old / OUTPUT)
        os.replace(tmp, out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for path in sorted(p for p, _ in files):
        p = out / path.relative_to(tmp)
        log(f"downloaded {p} ({p.stat().st_size:,} B)")
    return out / f"{ref.split('/', 1)[1]}.log"


def _submission_state(api, sub: dict) -> tuple[bool, str, object]:
    listed = call(f"submissions to {sub['competition']}", api.competition_submissions, sub["competition"]) or []
    for s in listed:
        if (s.ref == sub["submission"]) if sub.get("submission") else (s.description == sub["message"]):
            state = enum_name(s.status)
            if state == "complete":
                return True, f"public score {s.public_score}" + (f", private {s.private_score}"
                                                                 if s.private_score else ""), s
            if state == "error":
                return True, "error", s
            return False, f"{state} (being scored)", s
    return False, "not listed yet", None


def _submission(api, pkg, name, sub, wait, interval, timeout, log):
    what = f"submission {sub.get('submission') or sub['message']!r} of kernel version {sub['version']}"
    if wait:
        s = poll(what, lambda: _submission_state(api, sub), interval, timeout,
                 f"Kaggle is still scoring it: rerun ./run.sh status {name} --wait later", log)
    else:
        done, shown, s = _submission_state(api, sub)
        log(f"{what}: {shown}")
        if not done:
            return
    if enum_name(s.status) == "error":
        # a code competition's failure may come with no reason at all (kaggle-cli #1190): say so, not ": ;"
        reason = " ".join(str(s.error_description or "").split()) or \
            "Kaggle gave no reason (kaggle-cli #1190; the kernel's log and its page may show it)"
        raise UserError(f"{what} failed on Kaggle: {reason}; fix the kernel, ./run.sh upload {name}, then "
                        f"./run.sh submit {name}")
    write_record(pkg, SUBMITTED_JSON, dict(sub, public_score=s.public_score, private_score=s.private_score))


def status(name: str, wait: bool = False, interval: float = INTERVAL, timeout: float = TIMEOUT,
           log: Callable[[str], object] = print) -> str:
    """The kernel's state (lower case); its output fetched once it ran; a submission's score once it has one."""
    pkg, package = load_package(name)
    ref = package.ref("kernel")
    pushed, sub = read_record(pkg, PUSHED_JSON), read_record(pkg, SUBMITTED_JSON)
    api = client(f"the status of kernel {ref}")
    what = f"kernel {ref}" + (f" version {pushed['version']}" if pushed and pushed.get("version") else "")

    def check():
        state, failure = kernel_state(api, name, ref, pushed)
        return state in ENDED, state + (f" ({failure})" if failure else ""), (state, failure)

    if wait:
        state, failure = poll(what, check, interval, timeout,
                              f"it keeps running on Kaggle: rerun ./run.sh status {name} --wait", log)
    else:
        _, shown, (state, failure) = check()
        log(f"{what}: {shown}")
    if state == "complete":
        _fetch_output(api, pkg, ref, log)
    elif state == "error":
        try:
            kernel_log = _fetch_output(api, pkg, ref, log)
        except UserError:  # the failure is the news; the log is then on its page
            kernel_log = None
        where = kernel_log if kernel_log and kernel_log.is_file() else f"on kaggle.com/code/{ref}"
        raise UserError(f"{what} ended with an error{f' ({failure})' if failure else ''}: see its log {where}")
    elif state in ENDED:
        raise UserError(f"{what} was cancelled ({state}): push it again with ./run.sh upload {name}")
    if state == "complete" and sub:
        if pushed and pushed.get("version") != sub.get("version"):
            log(f"{what} is not submitted: the submission below is of version {sub.get('version')} "
                f"(./run.sh submit {name} sends version {pushed.get('version')})")
        _submission(api, pkg, name, sub, wait, interval, timeout, log)
    return state
