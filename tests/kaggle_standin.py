"""A stand-in for Kaggle's API servers on loopback, for the real kaggle client (KAGGLE_API_ENVIRONMENT=LOCALHOST
points it at http://localhost; HTTP_PROXY routes that, and every other host, to this server's port, so no
privileged port is needed). It speaks the kagglesdk JSON protocol (POST /api/v1/<service>/<Method>) and records
every request (method, URL path, headers, body) in `requests`.

Served (kagglesdk method: what it answers):
  datasets  GetDatasetStatus (404 until created, then READY), StartBlobUpload (a token and a createUrl), PUT of a blob,
            CreateDataset / CreateDatasetVersion (the version holds the blobs it names that arrived; a .zip blob, as
            the client makes of a folder with dir_mode="zip", is listed unpacked under the folder's name, as Kaggle
            mounts it), ListDatasetFiles (that list: names and sizes, paged)
  kernels   SaveKernel (versionNumber counts the pushes), GetKernelSessionStatus, ListKernelSessionOutput (file URLs
            and the log), GET of an output file
  compets.  ListDataFiles (every file of the competition with its size), DownloadDataFiles (a 302 redirect to the
            archive on another host, storage.localhost, as Kaggle's is on Google storage: the client then drops its
            Authorization header), GET of <slug>.zip (with Accept-Ranges, an ETag and Last-Modified; a Range
            `bytes=N-` or `bytes=N-M` is answered 206 with those bytes, unless an If-Range names another version
            of the archive: then 200 and the whole file; a range past its end 416), CreateCodeSubmission,
            ListSubmissions
Anything else answers 404 "the stand-in does not serve <Method>".

Knobs (plain attributes; set them before or between client calls):
  competitions        {slug: {path: bytes}}; add_competition(slug, folder) reads a folder into it
  archives            {slug: bytes}: the archive served for slug instead of the zip of competitions[slug] (which
                      stays its listing): zip_of(files, fault) makes a damaged or hostile one
  max_page_size       the most items a list call answers, whatever page size the client asks (None: no cap)
  download_delay      seconds to sleep after each 16 KiB of an archive (to interrupt a download);
                      `download_started` (threading.Event) is set once the first chunk went out
  download_stall_at   a byte offset (None: off): an archive answer stops there (at the end of the 16 KiB chunk
                      that reaches it) and holds the connection until the knob is set back to None or the server
                      closes, so that the client has written a known part of the file when it is killed
                      (the client writes 1 MiB at a time); `download_stalled` (threading.Event) is set when it stops
  fail_blobs          blob file names (e.g. "wheels.zip", "kernel.json") whose upload PUT is refused with 400: the
                      client then leaves the file out of the version without an error (a partial version)
  kernel_states       the states GetKernelSessionStatus answers, one per call, the last one repeated
                      (default ["COMPLETE"]; e.g. ["RUNNING", "RUNNING", "COMPLETE"] or ["ERROR"])
  kernel_failure      the failureMessage sent with those states ("" = none)
  unsaved_kernels     kernel refs "owner/slug" that answer 404 to status, output and submission although pushed
                      (SPEC §6: not found until saved once in the web UI); a kernel never pushed answers 404 too
  add_kernel(ref)     registers a pushed kernel without a push (for tests that start after upload)
  output, log         the kernel's output files {name: bytes} (a name is sent as it is, '../x' too; its URL is
                      its index) and its log text
  score_after         ListSubmissions calls for which a new submission stays PENDING (default 1)
  score               its publicScore once scored (default "0.61234"); submission_error: if set, it ends ERROR
                      with this errorDescription instead
State it keeps: blobs {token: bytes}, blob_names {token: name}, datasets {ref: [create/version request bodies]},
dataset_files {ref: {path: bytes}}, kernels {ref: [SaveKernel bodies]}, submissions {competition: [records]},
archive_answers [(status, first byte, end byte)], one per GET of an archive, in order (206: the range sent; 200: 0
and the archive's size, whether the client read it all or not; 416: 0, 0)."""
import hashlib
import io
import json
import re
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

STORAGE = "http://storage.localhost"
CHUNK = 16 * 1024
LAST_MODIFIED = "Mon, 02 May 2022 10:00:00 GMT"  # the archives' date
LOCAL, CENTRAL = b"PK\x03\x04", b"PK\x01\x02"  # zip header signatures
FAULTS = ("corrupt", "encrypted", "method99")


def zip_of(files: dict, fault: str | None = None) -> bytes:
    """files {path: bytes} as a deflated zip (the same bytes for the same files); fault breaks its last member as a
    damaged or foreign archive would: 'corrupt' (its deflate stream starts with an invalid block), 'encrypted' (its
    encryption flag set), 'method99' (compression method 99, WinZip AES, which zipfile cannot read). Names and sizes
    stay as listed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            # dated as the archive (not now), so the same files make the same bytes: a resumed download's rest
            info = zipfile.ZipInfo(path, date_time=(2022, 5, 2, 10, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o600 << 16
            z.writestr(info, data)
    data = bytearray(buf.getvalue())
    if fault is None:
        return bytes(data)
    assert fault in FAULTS, fault
    last = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[-1]
    local, central = last.header_offset, data.rindex(CENTRAL)  # the last central entry is the last member's
    assert data[local:local + 4] == LOCAL
    if fault == "corrupt":
        start = local + 30 + int.from_bytes(data[local + 26:local + 28], "little") + \
            int.from_bytes(data[local + 28:local + 30], "little")
        data[start:start + 4] = b"\xff" * 4  # BTYPE 11: a reserved block type
    elif fault == "encrypted":
        data[local + 6] |= 1
        data[central + 8] |= 1
    else:
        data[local + 8:local + 10] = data[central + 10:central + 12] = (99).to_bytes(2, "little")
    return bytes(data)


class StandIn:
    def __init__(self):
        self.requests = []  # (method, path, headers dict, body bytes)
        self.blobs, self.blob_names = {}, {}
        self.datasets, self.dataset_files = {}, {}
        self.kernels = {}
        self.submissions = {}
        self.competitions, self.archives = {}, {}
        self.max_page_size = None
        self.download_delay = 0.0
        self.download_started = threading.Event()
        self.download_stall_at = None
        self.download_stalled = threading.Event()
        self.archive_answers = []
        self._closing = False
        self.fail_blobs = set()
        self.kernel_states, self.kernel_failure = ["COMPLETE"], ""
        self.unsaved_kernels = set()
        self.output = {"submission.csv": b"image_id,hotel_id\n"}
        self.log = '[{"stream_name":"stdout","time":1.0,"data":"kernel done\\n"}]'
        self.score_after, self.score, self.submission_error = 1, "0.61234", None
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ knobs' helpers

    def add_competition(self, slug, folder):
        folder = Path(folder)
        self.competitions[slug] = {p.relative_to(folder).as_posix(): p.read_bytes()
                                   for p in sorted(folder.rglob("*")) if p.is_file()}

    def add_kernel(self, ref):
        self.kernels.setdefault(ref, []).append({"slug": ref})

    def archive(self, slug):
        return self.archives.get(slug) or zip_of(self.competitions[slug])

    def env(self):
        """Environment for a client process: LOCALHOST API, proxied to this server, nothing else reachable."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": proxy, "http_proxy": proxy,
                "HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}

    # ------------------------------------------------------------------ the API

    def _listing(self, tokens):
        files = {}
        for token in tokens:
            name, data = self.blob_names.get(token), self.blobs.get(token)
            if data is None:
                continue  # announced but never arrived
            if name.endswith(".zip"):  # Kaggle unpacks an uploaded archive under its name
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    files.update({f"{name[:-4]}/{m.filename}": m.file_size for m in z.infolist() if not m.is_dir()})
            else:
                files[name] = len(data)
        return files

    def _kernel_missing(self, ref):
        if ref in self.unsaved_kernels or ref not in self.kernels:
            return 404, {"code": 404, "message": f"Kernel {ref} not found"}
        return None

    def _submission(self, sub):
        sub["polls"] += 1
        out = {"ref": sub["ref"], "date": sub["date"], "description": sub["description"], "fileName": sub["fileName"],
               "status": "PENDING"}
        if sub["polls"] > self.score_after:
            if self.submission_error is not None:  # "": an error with no reason given (kaggle-cli #1190)
                out.update(status="ERROR", **({"errorDescription": self.submission_error} if self.submission_error
                                              else {}))
            else:
                out.update(status="COMPLETE", publicScore=self.score)
        return out

    def answer(self, method, req):
        if method == "GetDatasetStatus":
            ref = f"{req.get('ownerSlug')}/{req.get('datasetSlug')}"
            if ref in self.datasets:
                return 200, {"status": "READY"}
            return 404, {"code": 404, "message": f"dataset {ref} not found"}
        if method == "StartBlobUpload":
            token = f"blob{len(self.blob_names)}"
            self.blob_names[token] = req.get("name")
            return 200, {"token": token, "createUrl": f"{STORAGE}/upload/{token}"}
        if method in ("CreateDataset", "CreateDatasetVersion"):
            new = method == "CreateDataset"
            ref = f"{req.get('ownerSlug')}/{req.get('slug' if new else 'datasetSlug')}"
            if not new and ref not in self.datasets:
                return 404, {"code": 404, "message": f"dataset {ref} not found"}
            self.datasets.setdefault(ref, []).append(req)
            files = req.get("files") if new else (req.get("body") or {}).get("files")
            self.dataset_files[ref] = self._listing(f.get("token") for f in files or [])
            return 200, {"ref": ref, "url": f"http://localhost/datasets/{ref}", "status": "ok"}
        if method == "ListDatasetFiles":
            ref = f"{req.get('ownerSlug')}/{req.get('datasetSlug')}"
            if ref not in self.dataset_files:
                return 404, {"code": 404, "message": f"dataset {ref} not found"}
            return 200, self._page(req, "datasetFiles", [{"name": n, "totalBytes": b}
                                                         for n, b in sorted(self.dataset_files[ref].items())])
        if method == "SaveKernel":
            ref = req.get("slug")
            self.kernels.setdefault(ref, []).append(req)
            return 200, {"ref": f"/code/{ref}", "url": f"http://localhost/code/{ref}",
                         "versionNumber": len(self.kernels[ref])}
        if method in ("GetKernelSessionStatus", "ListKernelSessionOutput"):
            missing = self._kernel_missing(f"{req.get('userName')}/{req.get('kernelSlug')}")
            if missing:
                return missing
            if method == "ListKernelSessionOutput":
                return 200, {"files": [{"fileName": n, "url": f"{STORAGE}/output/{i}"}
                                       for i, n in enumerate(self.output)],
                             "log": self.log}
            state = self.kernel_states.pop(0) if len(self.kernel_states) > 1 else self.kernel_states[0]
            return 200, {"status": state, **({"failureMessage": self.kernel_failure} if self.kernel_failure else {})}
        if method in ("ListDataFiles", "DownloadDataFiles"):
            slug = req.get("competitionName")
            if slug not in self.competitions:
                return 404, {"code": 404, "message": f"competition {slug} not found"}
            if method == "DownloadDataFiles":
                return 302, {"Location": f"{STORAGE}/competitions/{slug}.zip"}
            files = [{"name": n, "totalBytes": len(b)} for n, b in self.competitions[slug].items()]
            return 200, self._page(req, "files", files)
        if method == "CreateCodeSubmission":
            missing = self._kernel_missing(f"{req.get('kernelOwner')}/{req.get('kernelSlug')}")
            if missing:
                return missing
            if not req.get("kernelVersion"):
                return 400, {"code": 400, "message": "a code competition needs the kernel version"}
            subs = self.submissions.setdefault(req.get("competitionName"), [])
            subs.append({"ref": 1000 + len(subs), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "description": req.get("submissionDescription", ""), "fileName": req.get("fileName"),
                         "kernel": f"{req.get('kernelOwner')}/{req.get('kernelSlug')}",
                         "version": req.get("kernelVersion"), "polls": 0})
            return 200, {"message": "Your submission was successfully saved", "ref": subs[-1]["ref"]}
        if method == "ListSubmissions":
            subs = self.submissions.get(req.get("competitionName"), [])
            return 200, {"submissions": [self._submission(s) for s in reversed(subs)]}
        return 404, {"code": 404, "message": f"the stand-in does not serve {method}"}

    def _page(self, req, key, items):
        start, size = int(req.get("pageToken") or 0), int(req.get("pageSize") or 20)
        size = min(size, self.max_page_size or size)
        rest = start + size < len(items)
        return {key: items[start:start + size], "nextPageToken": str(start + size) if rest else ""}

    # ------------------------------------------------------------------ HTTP

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _record(self, body=b""):
                path = urlsplit(self.path).path
                with standin._lock:
                    standin.requests.append((self.command, path, dict(self.headers), body))
                return path

            def _reply(self, code, obj=None, raw=None, ctype="application/json", headers=()):
                data = raw if raw is not None else json.dumps(obj if obj is not None else {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self._body()
                path = self._record(body)
                with standin._lock:
                    code, obj = standin.answer(path.rsplit("/", 1)[-1], json.loads(body or b"{}"))
                if code == 302:
                    self._reply(302, {}, headers=[("Location", obj["Location"])])
                else:
                    self._reply(code, obj)

            def do_PUT(self):
                body = self._body()
                token = self._record(body).rsplit("/", 1)[-1]
                if standin.blob_names.get(token) in standin.fail_blobs:
                    return self._reply(400, {"error": "upload refused by the stand-in (fail_blobs)"})
                with standin._lock:
                    standin.blobs[token] = body
                self._reply(200, {})

            def do_GET(self):
                path = self._record()
                folder, name = path.rsplit("/", 2)[-2:]
                outputs = list(standin.output.values())
                if folder == "output" and name.isdigit() and int(name) < len(outputs):
                    return self._reply(200, raw=outputs[int(name)], ctype="application/octet-stream")
                if folder == "competitions" and name.removesuffix(".zip") in standin.competitions:
                    return self._archive(standin.archive(name.removesuffix(".zip")))
                self._reply(404, {"code": 404, "message": "not found"})

            def _archive(self, data):
                size, etag = len(data), f'"{hashlib.sha256(data).hexdigest()[:32]}"'
                start, end, status = 0, size, 200
                asked, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                if asked and (if_range is None or if_range in (etag, LAST_MODIFIED)):
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", asked.strip())
                    if m and int(m.group(1)) < size:
                        start, status = int(m.group(1)), 206
                        end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                    elif m:
                        with standin._lock:
                            standin.archive_answers.append((416, 0, 0))
                        return self._reply(416, {}, headers=[("Content-Range", f"bytes */{size}")])
                with standin._lock:
                    standin.archive_answers.append((status, start, end))
                self.send_response(status)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", LAST_MODIFIED)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.end_headers()
                try:
                    for i in range(start, end, CHUNK):
                        self.wfile.write(data[i:min(i + CHUNK, end)])
                        self.wfile.flush()
                        standin.download_started.set()
                        if standin.download_delay:
                            time.sleep(standin.download_delay)
                        while standin.download_stall_at is not None and i + CHUNK >= standin.download_stall_at \
                                and not standin._closing:
                            standin.download_stalled.set()
                            time.sleep(0.02)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (killed, or it dropped an answer it did not need)

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._closing = True  # a stalled archive answer ends
        self.server.shutdown()
        self.server.server_close()
