#!/usr/bin/env bash
# criasr — one entry point for set-up, the main job and the tests (needs only python3 >= 3.10).
#   ./run.sh demo    set up .venv, then train Cria-CL on the offline demo dataset:
#                    papermill nbs/train.ipynb runs/demo.ipynb   (outputs in runs/)
#   ./run.sh test    set up .venv, then run the whole test suite: nbdev_test + pytest
#   ./run.sh setup   only the set-up (idempotent; re-runs when settings.ini/setup.py change)
#   ./run.sh lab     set up, then start JupyterLab on the notebooks
#   ./run.sh tensorboard [folder]   set up, then TensorBoard on runs/ (runs trained with trackers=["tensorboard"])
#   ./run.sh outputs [notebook ...]   set up, then re-run chapter notebooks in place keeping their figures and tables
#                    (default: the chapters listed in nbs/render_outputs.py; deterministic, cleaned as nbdev_clean does)
# Environment: PYTHON (default python3), CRIASR_VENV (default .venv),
#              CRIASR_TORCH (default "torch==2.14.1 torchvision==0.29.1").
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
VENV="${CRIASR_VENV:-.venv}"
TORCH_SPEC="${CRIASR_TORCH:-torch==2.14.1 torchvision==0.29.1}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "criasr: creating $VENV with $PY"
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.criasr-setup" want
  want="$(cat settings.ini setup.py pyproject.toml | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "criasr: installing dependencies into $VENV (first time: about 6 minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q $TORCH_SPEC
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    "$VENV/bin/python" -m pip check
    echo "$want" > "$stamp"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
}

run_tests() {
  echo "== nbdev_test (notebooks; cells flagged slow/gpu/browser are skipped here, covered by pytest) =="
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" nbdev_test --n_workers 2
  echo "== pytest =="
  local rc=0
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" python -m pytest -q -rs tests "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; return 1; fi
  return "$rc"
}

cmd="${1:-help}"; shift || true
case "$cmd" in
  setup) setup ;;
  demo)
    setup
    mkdir -p runs
    papermill nbs/train.ipynb runs/demo.ipynb "$@"
    echo "criasr: executed notebook runs/demo.ipynb; run folders (params.json, metrics.jsonl, samples/, checkpoints/):"
    ls -d runs/*/
    ;;
  test) setup; run_tests "$@" ;;
  lab) setup; exec jupyter lab --notebook-dir nbs "$@" ;;
  outputs) setup; OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" python nbs/render_outputs.py "$@" ;;
  tensorboard) setup; mkdir -p "${1:-runs}"; exec tensorboard --logdir "${1:-runs}" "${@:2}" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
