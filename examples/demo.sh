#!/usr/bin/env bash
# The rpathfix story on the stub wheels: the split per-wheel layout (what Bazel's
# rules_python makes) fails to load torch's CUDA libraries; `rpathfix venv` builds a
# per-binary site-packages in which the same import works, with no LD_LIBRARY_PATH; a
# plugin that cannot reach its provider gets a patched copy there (--repair), and
# `rpathfix repair` + `rpathfix index` serve wheels that find their sibling wheels.
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

step "rpathfix venv: written, with one warning: onnxstub's CUDA provider cannot reach the cu12 wheels (as under pip); the fix names --repair"
$RF venv "$OUT/venv" $ROOTS

step "rpathfix venv --repair: a patched copy of that provider in the venv; every other file stays a link"
$RF venv -v --repair "$OUT/venv" $ROOTS

step "the same import through the venv's interpreter, LD_LIBRARY_PATH unset"
"$OUT"/venv/bin/python -c 'import torchstub; print("torchstub.cuda_answer() =", torchstub.cuda_answer())'
"$OUT"/venv/bin/python -c 'from nvidia import nvimgcodec; print("from nvidia import nvimgcodec:", nvimgcodec.Decoder())'
"$OUT"/venv/bin/torchstubrun

"$OUT"/venv/bin/python -c 'import onnxstub; print("onnxstub.load_cuda_provider() =", onnxstub.load_cuda_provider())'

step "rpathfix verify of the venv"
$RF verify "$OUT/venv"

step "rpathfix repair: the onnxruntime-gpu-like wheel finds its cu13 sibling wheels (\$ORIGIN rpath, Requires-Dist added)"
mkdir -p "$OUT/index"
cp "$STUBS"/nvidia_xcublas-13*.whl "$STUBS"/nvidia_xcuda_runtime-13*.whl "$STUBS"/nvidia_xnvjitlink-13*.whl "$OUT/index"
$RF repair "$STUBS"/onnxgpustub-*.whl --with "$OUT"/index/*.whl --add-requires --out "$OUT/index"

step "rpathfix index + python -m http.server on 127.0.0.1: a private index"
$RF index "$OUT/index"
$PY -u -m http.server 0 --bind 127.0.0.1 --directory "$OUT/index" > "$OUT/http.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
PORT=""
for _ in $(seq 50); do
  PORT=$(sed -n 's/.* port \([0-9]*\).*/\1/p' "$OUT/http.log" | head -1)
  [ -n "$PORT" ] && break
  sleep 0.1
done
$PY -m venv --without-pip "$OUT/pipvenv"
$PY -m pip --isolated --disable-pip-version-check --no-cache-dir --python "$OUT/pipvenv/bin/python" \
  install -q --index-url "http://127.0.0.1:$PORT/simple/" onnxgpustub
grep '^Build:' "$OUT"/pipvenv/lib/python*/site-packages/onnxgpustub-*.dist-info/WHEEL

step "pip installed the repaired wheel and its siblings: the provider loads, no LD_LIBRARY_PATH, no preload"
"$OUT"/pipvenv/bin/python -c 'import onnxgpustub; print("onnxgpustub.load_cuda_provider() =", onnxgpustub.load_cuda_provider())'
echo
echo "demo: ok"
