#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and runs a command in it.
#   ./dev.sh demo   runs the end-to-end migration example
#   ./dev.sh test   runs ruff and the test suite
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -x .venv/bin/python ]] || ! \
    .venv/bin/python -c 'import bridge, pytest, sklearn' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,examples]'
fi
case "${1:-}" in
  demo) exec .venv/bin/python examples/migrate_end_to_end.py ;;
  test) .venv/bin/ruff check . && exec .venv/bin/python -m pytest -n 2 tests ;;
  *) echo "usage: ./dev.sh demo|test" >&2; exit 2 ;;
esac
