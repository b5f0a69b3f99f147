"""`rpathfix index`: a static simple repository that real pip and uv install from, served by
`python -m http.server` on 127.0.0.1; and a real index server (pypiserver, fed by twine)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import rpathfix
from rpathfix.index import build_index

BIN = Path(sys.executable).parent
UV = shutil.which("uv", path=str(BIN)) or shutil.which("uv")
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not k.startswith(("PIP_", "UV_", "LD_LIBRARY_PATH", "VIRTUAL_ENV"))}


# ---------------------------------------------------------------- servers


class Served:
    """`python -m http.server` on a free loopback port, serving a directory; its request log."""

    def __init__(self, directory: Path, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(directory)],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"port (\d+)", line)
        assert m, line
        self.url = f"http://127.0.0.1:{m.group(1)}"

    def requests(self) -> list[str]:
        """The paths GET requested so far."""
        self._log.flush()
        return re.findall(r'"GET (\S+) HTTP', self.log_path.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@contextlib.contextmanager
def serve(directory: Path, log: Path) -> Iterator[Served]:
    s = Served(directory, log)
    try:
        yield s
    finally:
        s.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def pypiserver(packages: Path, log: Path) -> Iterator[str]:
    """A real index server (pypiserver) on loopback, accepting unauthenticated uploads."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "pypi-server"), "run", "-p", str(port), "-i", "127.0.0.1",
                                 "-a", ".", "-P", ".", "--disable-fallback", str(packages)],
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    urllib.request.urlopen(url + "/simple/", timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise AssertionError(log.read_text()) from None
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def pip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """This interpreter's pip, ignoring the machine's pip configuration (its extra indexes)."""
    return subprocess.run([sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check",
                           "--no-cache-dir", *args], capture_output=True, text=True, env=CLEAN_ENV, cwd=cwd,
                          timeout=600)


def new_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def uv(*args: str, venv: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    assert UV is not None, "uv is part of the test extra"
    env = {**CLEAN_ENV, "VIRTUAL_ENV": str(venv), "UV_CACHE_DIR": str(cache), "UV_NO_CONFIG": "1"}
    return subprocess.run([UV, *args], capture_output=True, text=True, env=env, timeout=600)


# ---------------------------------------------------------------- the repository


def wheel_dir(stub_wheels: dict[str, Path], tmp: Path, names: tuple[str, ...]) -> Path:
    d = tmp / "wheels"
    d.mkdir()
    for n in names:
        shutil.copy(stub_wheels[n], d)
    return d


CU13 = ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink")


def test_pages_hashes_and_metadata_files(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    src = wheel_dir(stub_wheels, tmp_path, CU13)
    from test_wheelfile import make_wheel

    make_wheel(src / "Odd.Name-1.0-py3-none-any.whl", {"odd_name/__init__.py": b""}, name="Odd.Name",
               metadata_extra='Requires-Python: >=3.9,<4,!="3.10.<b>"\n')
    out = tmp_path / "site"
    proc = rpathfix("index", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    root = (out / "simple" / "index.html").read_text()
    assert '<a href="odd-name/">odd-name</a>' in root and '<a href="nvidia-xcublas/">' in root
    page = (out / "simple" / "odd-name" / "index.html").read_text()
    whl = src / "Odd.Name-1.0-py3-none-any.whl"
    digest = hashlib.sha256(whl.read_bytes()).hexdigest()
    meta = (out / (whl.name + ".metadata")).read_bytes()
    meta_digest = hashlib.sha256(meta).hexdigest()
    assert meta.startswith(b"Metadata-Version: 2.1\nName: Odd.Name\n")
    assert f'href="../../{whl.name}#sha256={digest}"' in page
    assert 'data-requires-python="&gt;=3.9,&lt;4,!=&quot;3.10.&lt;b&gt;&quot;"' in page
    assert f'data-dist-info-metadata="sha256={meta_digest}" data-core-metadata="sha256={meta_digest}"' in page
    doc = json.loads((out / "simple" / "odd-name" / "index.json").read_text())
    assert doc["meta"] == {"api-version": "1.1"} and doc["name"] == "odd-name" and doc["versions"] == ["1.0"]
    (f,) = doc["files"]
    assert f["url"] == f"../../{whl.name}" and f["hashes"] == {"sha256": digest}
    assert f["core-metadata"] == {"sha256": meta_digest} and f["requires-python"] == '>=3.9,<4,!="3.10.<b>"'
    assert f["size"] == whl.stat().st_size and f["yanked"] is False
    projects = json.loads((out / "simple" / "index.json").read_text())["projects"]
    assert [p["name"] for p in projects] == sorted(p["name"] for p in projects)
    assert os.path.samefile(out / whl.name, whl), "wheels are hard-linked into OUT"
    # Deterministic: a second index of the same wheels elsewhere has the same bytes.
    again = tmp_path / "again"
    build_index(str(src), str(again))
    for p in sorted(out.rglob("*")):
        if p.is_file():
            assert (again / p.relative_to(out)).read_bytes() == p.read_bytes(), p


def test_incremental_and_atomic(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    src = wheel_dir(stub_wheels, tmp_path, CU13)
    out = tmp_path / "site"
    first = build_index(str(src), str(out))
    assert first.read == 4
    old = 1_000_000_000
    for p in out.rglob("*"):
        if p.is_file() and not p.name.endswith(".whl"):
            os.utime(p, ns=(old, old))
    assert build_index(str(src), str(out)).written == [], "nothing changed: nothing written"
    shutil.copy(stub_wheels["onnxgpustub"], src)
    second = build_index(str(src), str(out))
    assert second.read == 1, "only the new wheel is read"
    name = stub_wheels["onnxgpustub"].name
    assert second.written == [name, name + ".metadata", "simple/onnxgpustub/index.html",
                              "simple/onnxgpustub/index.json", "simple/index.html", "simple/index.json",
                              ".rpathfix-index.json"]
    untouched = out / "simple" / "torchstub" / "index.html"
    assert untouched.stat().st_mtime_ns == old, "other projects' pages are not rewritten"
    assert not [p for p in out.rglob(".*.rpathfix-*")], "no temporary file left"
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = out / "simple" / f".index.html.rpathfix-{dead.pid}-0000"  # a killed run's temporary page
    leftover.write_text("<html>half")
    (src / name).unlink()
    third = build_index(str(src), str(out))
    assert not leftover.exists()
    assert "simple/onnxgpustub/" in third.removed and name + ".metadata" in third.removed
    assert not (out / "simple" / "onnxgpustub").exists() and not (out / name).exists()
    assert "onnxgpustub" not in (out / "simple" / "index.html").read_text()


def test_bad_wheel_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad-1.0-py3-none-any.whl").write_bytes(b"<html>404</html>")
    proc = rpathfix("index", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "bad-1.0-py3-none-any.whl" in proc.stderr


@pytest.mark.slow
def test_pip_resolves_from_metadata_files_without_downloading(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    src = wheel_dir(stub_wheels, tmp_path, CU13)
    out = tmp_path / "site"
    build_index(str(src), str(out))
    report = tmp_path / "report.json"
    with serve(out, tmp_path / "http.log") as server:
        proc = pip("install", "--dry-run", "--ignore-installed", "--report", str(report),
                   "--index-url", server.url + "/simple/", "torchstub")
        assert proc.returncode == 0, proc.stderr
        got = server.requests()
    installed = sorted(i["metadata"]["name"] for i in json.loads(report.read_text())["install"])
    assert installed == ["nvidia-xcublas", "nvidia-xcuda-runtime", "nvidia-xnvjitlink", "torchstub"]
    assert [p for p in got if p.endswith(".whl.metadata")], got
    assert not [p for p in got if p.endswith(".whl")], f"pip downloaded wheels: {got}"
    # Control: the same repository without the PEP 658 attributes makes pip download every wheel.
    for page in (out / "simple").glob("*/index.html"):
        page.write_text(re.sub(r' data-(dist-info|core)-metadata="[^"]*"', "", page.read_text()))
    with serve(out, tmp_path / "http2.log") as server:
        proc = pip("install", "--dry-run", "--ignore-installed", "--index-url", server.url + "/simple/", "torchstub")
        assert proc.returncode == 0, proc.stderr
        assert len([p for p in server.requests() if p.endswith(".whl")]) == 4


@pytest.mark.slow
def test_pip_and_uv_install_from_the_static_repository(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    src = wheel_dir(stub_wheels, tmp_path, CU13)
    out = tmp_path / "site"
    build_index(str(src), str(out))
    code = "import torchstub; print(torchstub.cuda_answer())"
    with serve(out, tmp_path / "http.log") as server:
        index = server.url + "/simple/"
        py = new_venv(tmp_path / "pipvenv")
        proc = pip("--python", str(py), "install", "-q", "--index-url", index, "torchstub")
        assert proc.returncode == 0, proc.stderr
        run = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=CLEAN_ENV)
        assert run.returncode == 0 and run.stdout.strip() == "11", run.stderr
        venv = tmp_path / "uvvenv"
        new_venv(venv)
        proc = uv("pip", "install", "--index-url", index, "torchstub", venv=venv, cache=tmp_path / "uvcache")
        assert proc.returncode == 0, proc.stderr
        run = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                             env=CLEAN_ENV)
        assert run.returncode == 0 and run.stdout.strip() == "11", run.stderr


@pytest.mark.slow
def test_twine_upload_to_pypiserver_then_pip_install(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    packages.mkdir()
    with pypiserver(packages, tmp_path / "pypiserver.log") as url:
        up = subprocess.run([str(BIN / "twine"), "upload", "--non-interactive", "--disable-progress-bar",
                             "--repository-url", url + "/", "-u", "x", "-p", "x",
                             *[str(stub_wheels[n]) for n in CU13]], capture_output=True, text=True, env=CLEAN_ENV)
        assert up.returncode == 0, up.stdout + up.stderr
        assert sorted(p.name for p in packages.iterdir()) == sorted(stub_wheels[n].name for n in CU13)
        py = new_venv(tmp_path / "venv")
        proc = pip("--python", str(py), "install", "-q", "--index-url", url + "/simple/", "torchstub")
        assert proc.returncode == 0, proc.stderr
    run = subprocess.run([str(py), "-c", "import torchstub; print(torchstub.cuda_answer())"], capture_output=True,
                         text=True, env=CLEAN_ENV)
    assert run.returncode == 0 and run.stdout.strip() == "11", run.stderr
