"""`rpathfix layout`: the check of a venv of per-file links (the Bazel rules' links layout),
on roots made by `rpathfix unpack` from the stub wheels, with manifests written as the rule
writes them (tests/test_bazel.py runs the rule itself)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import rpathfix
from rpathfix.layout import SCHEMA

CUDA = ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink")


def _roots(wheels: dict[str, Path], names: tuple[str, ...], top: Path) -> list[str]:
    """Unpack each wheel into top/<name>/<dist>; the roots' paths relative to `top`."""
    out = []
    for n in names:
        p = rpathfix("unpack", str(wheels[n]), "--into", str(top / n), "--no-compile")
        assert p.returncode == 0, p.stderr
        (root,) = [d for d in (top / n).iterdir() if d.is_dir()]
        out.append(root.relative_to(top).as_posix())
    return out


def _manifest(top: Path, roots: list[str], version: str = "3.11") -> dict[str, str]:
    """venv path -> source, as the rule maps them: the first root by name wins a path."""
    files: dict[str, str] = {}
    for r in sorted(roots, key=lambda r: r.rsplit("/", 1)[-1]):
        for dirpath, _, names in os.walk(top / r):
            for name in names:
                rel = (Path(dirpath) / name).relative_to(top / r).as_posix()
                kind, _, rest = rel.partition("/")
                if kind == "site-packages":
                    files.setdefault(f"lib/python{version}/site-packages/{rest}", f"{r}/{rel}")
                elif kind == "bin" and rest not in ("python", "python3", f"python{version}"):
                    files.setdefault(f"bin/{rest}", f"{r}/{rel}")
    return files


def _write(top: Path, roots: list[str], files: dict[str, str], name: str = "//:venv",
           shadowed: list[str] | None = None) -> Path:
    lines = [SCHEMA, "--name", name, "--python-version", "3.11"]
    if shadowed is not None:
        lines.append("--complete")
    for f in shadowed or []:
        lines += ["--shadowed", f]
    for r in roots:
        lines += ["--root", r]
    for vp in sorted(files):
        lines += ["--file", vp, files[vp]]
    python = os.path.realpath(os.path.join(os.path.dirname(os.__file__), "..", "..", "bin", "python3.11"))
    lines += ["--extra", "bin/python", python if os.path.exists(python) else "/usr/bin/python3"]
    m = top / "manifest.txt"
    m.write_text("\n".join(lines) + "\n")
    return m


def test_the_cuda_stack_passes_and_the_report_names_no_host_path(stub_wheels: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    roots = _roots(stub_wheels, CUDA, tmp_path)
    m = _write(tmp_path, roots, _manifest(tmp_path, roots))
    p = rpathfix("layout", str(m), "--report", "report.txt", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    report = (tmp_path / "report.txt").read_text()
    assert report.startswith(f"{SCHEMA} //:venv: ok\n") and "1 extension modules load" in report
    assert str(tmp_path) not in report and "/" + "tmp" not in report


def test_without_the_cuda_wheels_the_check_names_the_library(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    roots = _roots(stub_wheels, ("torchstub",), tmp_path)
    m = _write(tmp_path, roots, _manifest(tmp_path, roots), name="//:broken")
    p = rpathfix("layout", str(m), "--report", "report.txt", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "[missing-library]" in p.stderr and "libxcublas.so.13" in p.stderr and "will not load" in p.stderr
    assert "rpathfix layout: //:broken: the venv would not work" in p.stderr
    assert not (tmp_path / "report.txt").exists()


def test_a_layout_that_differs_from_rpathfix_plan_is_named(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    roots = _roots(stub_wheels, CUDA, tmp_path)
    files = _manifest(tmp_path, roots)
    lib = "lib/python3.11/site-packages/nvidia/cu13/lib/libxcudart.so.13"
    init = next(v for k, v in files.items() if k.endswith("torchstub/__init__.py"))
    files[lib] = init  # the rule links another file there
    extra = "lib/python3.11/site-packages/torchstub/extra.py"
    files[extra] = init  # and a file rpathfix does not place
    del files["lib/python3.11/site-packages/nvidia/cu13/lib/libxcublas.so.13"]  # and forgets one
    p = rpathfix("layout", str(_write(tmp_path, roots, files)), cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    errs = p.stderr.splitlines()
    assert any(e.startswith(f"rules and rpathfix disagree about {lib}: the rule links {init}") for e in errs), errs
    assert any(e.startswith(f"rules and rpathfix disagree about {extra}: the rule links") for e in errs), errs
    assert any("disagree about lib/python3.11/site-packages/nvidia/cu13/lib/libxcublas.so.13: rpathfix places"
               in e for e in errs), errs
    # Control: the rule's own merge passes (previous test); so does this one without the changes.


def test_an_executable_that_climbs_into_another_wheel_needs_the_tree_layout(edge_wheels: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    roots = _roots(edge_wheels, ("toolx", "nvidia_xcux"), tmp_path)
    p = rpathfix("layout", str(_write(tmp_path, roots, _manifest(tmp_path, roots))), cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "cannot be a link in a runfiles venv" in ln]
    assert lines and all('use layout = "tree"' in ln for ln in lines), p.stderr
    assert any("xtool" in ln for ln in lines), p.stderr


def test_files_the_rule_was_not_given_are_left_out_with_a_note(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    """Unsandboxed, the action sees files of a root that Bazel did not give the rule (a name
    with a space): with the rule's full list (--shadowed), they are not the venv's."""
    roots = _roots(stub_wheels, CUDA, tmp_path)
    files = _manifest(tmp_path, roots)
    odd = tmp_path / roots[0] / "site-packages" / "torchstub" / "launcher manifest.xml"
    odd.write_text("<x/>")
    p = rpathfix("layout", str(_write(tmp_path, roots, files, shadowed=[])), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "1 file(s) of the roots are not inputs of the rule" in p.stderr
    # Control: without the list, the check cannot tell and names the file.
    p = rpathfix("layout", str(_write(tmp_path, roots, files)), cwd=tmp_path)
    assert p.returncode == 1 and "disagree about lib/python3.11/site-packages/torchstub/launcher manifest.xml" in p.stderr


@pytest.mark.parametrize("text", ["", "rpathfix.layout/0\n", f"{SCHEMA}\n--file\nonly-one\n",
                                  f"{SCHEMA}\n--python-version\n3\n--root\nr\n"])
def test_a_bad_manifest_is_one_line_and_exit_2(tmp_path: Path, text: str) -> None:
    m = tmp_path / "m.txt"
    m.write_text(text)
    p = rpathfix("layout", str(m), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and str(m) in p.stderr, p.stderr


def test_a_script_gets_a_launcher_that_runs_the_venv_python(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    roots = _roots(stub_wheels, CUDA, tmp_path)
    files = _manifest(tmp_path, roots)
    src = files["bin/torchstubrun"]
    m = _write(tmp_path, roots, files, shadowed=[])
    text = m.read_text().replace(f"--file\nbin/torchstubrun\n{src}\n", f"--script\nbin/torchstubrun\n{src}\nout/torchstubrun\n")
    assert "--script" in text
    m.write_text(text)
    (tmp_path / "out").mkdir()
    p = rpathfix("layout", str(m), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    launcher = (tmp_path / "out" / "torchstubrun").read_bytes()
    assert launcher.splitlines()[:3] == [b"#!/bin/sh", b"'''exec' \"${0%/*}/python\" \"$0\" \"$@\"", b"' '''"]
    assert b"from torchstub.cli import main" in launcher and str(tmp_path).encode() not in launcher
    assert not launcher.count(b"#!") - 1  # the script's own #! line is gone
    assert os.stat(tmp_path / "out" / "torchstubrun").st_mode & 0o777 == 0o755
