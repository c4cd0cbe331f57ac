"""Show a pushed kernel's status; when it is complete, download its output (submission.csv, log) to
kernels/<name>/output/.

example: ./run.sh kernel-status hotel"""
from .errors import UserError


def add_arguments(p):
    p.add_argument("name", help="package under kernels/ whose kernel was pushed with ./run.sh upload")


def run(args):
    status(args.name)


def status(name, log=print):
    """The kernel's status name (lower case); downloads the output when complete."""
    from .upload import _call, client, load_package

    pkg, package = load_package(name)
    ref = f"{package['owner']}/{package['slugs']['kernel']}"
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
