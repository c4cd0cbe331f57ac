"""`./run.sh status` and `submit` with the real kaggle client against the loopback stand-in: status --wait polls
the kernel to its end and fetches its output and log; submit sends the pushed version (pushed.json) only once that
run is complete; status then reports the submission pending, and --wait polls it until it has a score. The known
client pains (a pushed kernel "not found", no numeric version, a failed run) are one line each saying what to do;
no credential in any byte sent, written or printed."""
import json

import pytest
from test_upload import USER, assert_no_credential, calls, kaggle_env

from pipeline.core.errors import UserError
from pipeline.kaggle.client import PUSHED_JSON, write_record
from pipeline.kaggle.submit import submit
from pipeline.kernel.spec import Package

from conftest import assert_one_line_error, cli
from kaggle_standin import StandIn

NAME = "tinyk"  # kernels/<name>/, as the kernel-name rule allows
REF, COMPETITION = f"{USER}/tinyk", "tiny-code-competition"
FAST = ("--interval", "0.05", "--timeout", "30")


def _package(work, version=3):
    """kernels/tinyk/ as upload leaves it: package.json and pushed.json (what submit and status read)."""
    pkg = work / "kernels" / NAME
    pkg.mkdir(parents=True)
    Package(["a"], USER, {"models": "k-models", "code": "k-code", "kernel": "tinyk"}, COMPETITION, {}, {}, "abc1234",
            "2026-01-01T00:00:00Z").write(pkg)
    if version is not None:
        write_record(pkg, PUSHED_JSON, {"kernel": REF, "version": version, "pushed": "2026-01-01T00:00:00Z"})
    return pkg


def test_status_wait_submit_then_score(tmp_path):
    work = tmp_path / "project"
    pkg = _package(work)
    with StandIn() as s:
        s.add_kernel(REF)
        s.kernel_states = ["QUEUED", "RUNNING", "COMPLETE"]
        env = kaggle_env(tmp_path, s)
        early = cli("submit", NAME, cwd=work, env=env)
        assert_one_line_error(early, f"kernel {REF} version 3 is queued, not complete", "./run.sh status tinyk --wait")
        assert calls(s, "CreateCodeSubmission") == []

        ran = cli("status", NAME, "--wait", *FAST, cwd=work, env=env)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        polls = [line for line in ran.stdout.splitlines() if line.startswith(f"kernel {REF} version 3: ")]
        assert [line.split(": ")[1].split(" (")[0] for line in polls] == ["running", "complete"]
        assert (pkg / "output" / "submission.csv").read_bytes() == s.output["submission.csv"]
        assert (pkg / "output" / "tinyk.log").read_text() == s.log

        sent = cli("submit", NAME, "--message", "first try", cwd=work, env=env)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        (req,) = calls(s, "CreateCodeSubmission")
        assert req == {"competitionName": COMPETITION, "kernelOwner": USER, "kernelSlug": "tinyk", "kernelVersion": 3,
                       "fileName": "submission.csv", "submissionDescription": "first try"}
        record = json.loads((pkg / "submitted.json").read_text())
        assert record["submission"] == 1000 and record["version"] == 3

        once = cli("status", NAME, cwd=work, env=env)
        assert once.returncode == 0, once.stderr
        assert "submission 1000 of kernel version 3: pending (being scored)" in once.stdout

        scored = cli("status", NAME, "--wait", *FAST, cwd=work, env=env)
        assert scored.returncode == 0, scored.stderr
        assert "submission 1000 of kernel version 3: public score 0.61234" in scored.stdout
        assert json.loads((pkg / "submitted.json").read_text())["public_score"] == "0.61234"

        twice = cli("submit", NAME, cwd=work, env=env)  # a daily submission is scarce: the same version needs --again
        assert_one_line_error(twice, f"kernel {REF} version 3 was submitted at", "--again")
        assert len(calls(s, "CreateCodeSubmission")) == 1
        again = cli("submit", NAME, "--again", cwd=work, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(calls(s, "CreateCodeSubmission")) == 2

        write_record(pkg, PUSHED_JSON, {"kernel": REF, "version": 4, "pushed": "2026-01-02T00:00:00Z"})
        newer = cli("status", NAME, cwd=work, env=env)  # a version pushed since the submission: say so
        assert newer.returncode == 0, newer.stderr
        assert (f"kernel {REF} version 4 is not submitted: the submission below is of version 3 (./run.sh submit tinyk "
                "sends version 4)") in newer.stdout, newer.stdout
    assert_no_credential(s, [early, ran, sent, once, scored, twice, again, newer], [pkg])


def test_known_pains_are_one_line_each(tmp_path, monkeypatch):
    work = tmp_path / "project"
    pkg = _package(work)
    with StandIn() as s:
        s.add_kernel(REF)
        env = kaggle_env(tmp_path, s)
        s.unsaved_kernels = {REF}  # pushed, but Kaggle says "not found" until it is saved once in the web UI
        p = cli("submit", NAME, cwd=work, env=env)
        assert_one_line_error(p, "HTTP 404", f"open it once in the Kaggle web UI (kaggle.com/code/{REF}) and save it")
        s.unsaved_kernels = set()
        s.kernel_states, s.kernel_failure = ["ERROR"], "CUDA out of memory"
        failed = cli("status", NAME, "--wait", *FAST, cwd=work, env=env)
        assert_one_line_error(failed, "ended with an error (CUDA out of memory)",
                              "see its log kernels/tinyk/output/tinyk.log")
        assert (pkg / "output" / "tinyk.log").is_file()
        s.kernel_states, s.kernel_failure = ["COMPLETE"], None
        for given, said in (("Notebook Threw Exception", "failed on Kaggle: Notebook Threw Exception; fix the kernel"),
                            ("", "failed on Kaggle: Kaggle gave no reason (kaggle-cli #1190")):
            s.submission_error = given
            sent = cli("submit", NAME, "--again", cwd=work, env=env)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            scored = cli("status", NAME, "--wait", *FAST, cwd=work, env=env)
            assert_one_line_error(scored, said, "./run.sh upload tinyk")
    assert_no_credential(s, [p, failed, sent, scored], [pkg])

    (pkg / PUSHED_JSON).unlink()  # pushed by hand, or before upload recorded versions
    monkeypatch.chdir(work)
    with pytest.raises(UserError, match="needs the kernel's numeric version"):
        submit(NAME)
    write_record(pkg, PUSHED_JSON, {"kernel": REF, "version": None})
    with pytest.raises(UserError, match="no numeric kernel version"):
        submit(NAME)
