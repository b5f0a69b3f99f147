#!/usr/bin/env bash
# The rpathfix story on the stub wheels: the split per-wheel layout (what Bazel's
# rules_python makes) fails to load torch's CUDA libraries; `rpathfix venv` builds a
# per-binary site-packages in which the same import works, with no LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RF="$PY -m rpathfix"
OUT=demo-out
STUBS=testdata/cuda_stubs/out
unset LD_LIBRARY_PATH

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "build the stub wheels (gcc; torch-like, nvidia cu12/cu13-like, onnxruntime-like)"
$PY testdata/cuda_stubs/build.py --out "$STUBS"
ls "$STUBS"

rm -rf "$OUT"
mkdir -p "$OUT"
WHEELS=$(ls "$STUBS"/*.whl | grep -v -e shadow -e macosx)

step "rpathfix scan: the torch-like wheel's libraries and their search paths"
$RF scan "$STUBS"/torchstub-*.whl

step "rpathfix unpack: one directory per wheel, as rules_python's whl_library makes"
$RF unpack -v $WHEELS --into "$OUT/roots"
ROOTS=$(ls -d "$OUT"/roots/*)
SPLIT=$(printf '%s/site-packages:' $ROOTS)
SPLIT=${SPLIT%:}  # a trailing ':' would put the working directory on sys.path

step "split layout: every root on PYTHONPATH -> import fails"
if PYTHONPATH="$SPLIT" $PY -c 'import torchstub; print(torchstub.cuda_answer())'; then
  echo "unexpected: the split layout worked"; exit 1
fi

step "rpathfix verify explains it (exit 1 = errors)"
$RF verify $ROOTS || true

step "rpathfix doctor: what fails, why, and the command that fixes each thing"
PYTHONPATH="$SPLIT" $RF doctor --python $PY || true

step "rpathfix why: where ld.so looks for libxcudart.so.13 from torch's library"
$RF why "$OUT"/roots/torchstub/site-packages/torchstub/lib/libxtorch_cuda.so libxcudart.so.13 || true

step "rpathfix plan: which directories must be real, which can be one symlink"
$RF plan $ROOTS | grep -E '^real' || true

step "rpathfix venv: write the per-binary venv (its extension modules checked before writing)"
$RF venv -v "$OUT/venv" $ROOTS

step "the same import through the venv's interpreter, LD_LIBRARY_PATH unset"
"$OUT"/venv/bin/python -c 'import torchstub; print("torchstub.cuda_answer() =", torchstub.cuda_answer())'
"$OUT"/venv/bin/python -c 'from nvidia import nvimgcodec; print("from nvidia import nvimgcodec:", nvimgcodec.Decoder())'
"$OUT"/venv/bin/torchstubrun

step "rpathfix verify of the venv (the onnxruntime-like provider still needs an rpath: a layout cannot fix that)"
$RF verify "$OUT/venv"
echo
echo "demo: ok"
