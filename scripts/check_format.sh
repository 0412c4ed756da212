#!/usr/bin/env bash
# Formatting check of what a change touches, for CI and before a commit:
#   C++ / CUDA (.h .cpp .cu .cuh .inc): the changed LINES must be as clang-format (.clang-format) writes them, so a change
#     never has to reformat a whole file that others are editing;
#   Python under python/, tests/python, bench/: the changed FILES must pass `ruff check` and `ruff format --check`
#     (configured in pyproject.toml [tool.ruff]).
# Usage:
#   scripts/check_format.sh [BASE]      changes since the merge base with BASE (default: origin/main, else main)
#   scripts/check_format.sh -- FILE...  these files, whole
# Tools: clang-format-diff from Debian's clang-format (scripts/install_deps.sh); ruff from PyPI
# (scripts/install_deps.sh python). A missing tool
# fails the check with a message (set SLA_FORMAT_SKIP_MISSING=1 to skip that language instead).
set -euo pipefail
cd "$(dirname "$0")/.."

# ruff: $RUFF, else on PATH, else the module of ${PYTHON:-python3} (pip installs it there).
if [ -n "${RUFF:-}" ]; then
  ruff_cmd=("$RUFF")
elif command -v ruff >/dev/null; then
  ruff_cmd=(ruff)
else
  ruff_cmd=("${PYTHON:-python3}" -m ruff)
fi
clang_format_diff=$(command -v clang-format-diff || command -v clang-format-diff-14 || true)
status=0

missing() {
  if [ -n "${SLA_FORMAT_SKIP_MISSING:-}" ]; then
    echo "[format] $1 not found: skipping that check" >&2
  else
    echo "[format] $1 not found ($2); set SLA_FORMAT_SKIP_MISSING=1 to skip" >&2
    status=1
  fi
}

is_cxx() { case "$1" in *.h | *.cpp | *.cu | *.cuh | *.inc) return 0 ;; esac; return 1; }
# clang-format-diff's own default pattern leaves out .cu and .cuh: name the C++/CUDA suffixes explicitly.
cxx_regex='.*\.(h|cpp|cu|cuh|inc)'
is_py() { case "$1" in python/*.py | tests/python/*.py | bench/*.py) return 0 ;; esac; return 1; }

if [ "${1:-}" = "--" ]; then
  shift
  files=("$@")
  cxx=()
  for f in "${files[@]}"; do is_cxx "$f" && cxx+=("$f"); done
  if [ ${#cxx[@]} -gt 0 ]; then
    if command -v clang-format >/dev/null; then
      clang-format --dry-run -Werror "${cxx[@]}" || status=1
    else
      missing clang-format "apt-get install clang-format"
    fi
  fi
else
  base_ref=${1:-}
  if [ -z "$base_ref" ]; then
    if git rev-parse -q --verify origin/main >/dev/null; then base_ref=origin/main; else base_ref=main; fi
  fi
  if ! git rev-parse -q --verify "$base_ref^{commit}" >/dev/null; then
    echo "[format] no commit '$base_ref' to compare with (a shallow clone?); pass a base or use -- FILE..." >&2
    exit 2
  fi
  base=$(git merge-base HEAD "$base_ref")
  mapfile -t files < <(git diff --name-only --diff-filter=ACMR "$base" --)
  cxx=()
  for f in "${files[@]}"; do is_cxx "$f" && cxx+=("$f"); done
  if [ ${#cxx[@]} -gt 0 ]; then
    if [ -n "$clang_format_diff" ]; then
      out=$(git diff -U0 --no-color "$base" -- "${cxx[@]}" | "$clang_format_diff" -p1 -iregex "$cxx_regex" || true)
      if [ -n "$out" ]; then
        echo "$out"
        echo "[format] changed C++/CUDA lines differ from clang-format (above; fix with: git diff -U0 $base | $clang_format_diff -p1 -iregex '$cxx_regex' -i)" >&2
        status=1
      fi
    else
      missing clang-format-diff "apt-get install clang-format"
    fi
  fi
fi

py=()
for f in "${files[@]}"; do is_py "$f" && [ -f "$f" ] && py+=("$f"); done
if [ ${#py[@]} -gt 0 ]; then
  if "${ruff_cmd[@]}" --version >/dev/null 2>&1; then
    "${ruff_cmd[@]}" check "${py[@]}" || status=1
    "${ruff_cmd[@]}" format --check "${py[@]}" || status=1
  else
    missing ruff "python3 -m pip install ruff"
  fi
fi

[ $status -eq 0 ] && echo "[format] ok (${#files[@]} files checked)"
exit $status
