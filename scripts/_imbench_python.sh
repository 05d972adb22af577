# Sourced by scripts/reproduce_*.sh: the Python that runs imbench is $IMBENCH_PYTHON if set,
# else this repository's .venv (made by `make install`), else python3 from PATH.
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${IMBENCH_PYTHON:-}" ]; then
  if [ -x "$_repo/.venv/bin/python" ]; then
    IMBENCH_PYTHON="$_repo/.venv/bin/python"
  else
    IMBENCH_PYTHON=python3
    export PYTHONPATH="$_repo${PYTHONPATH:+:$PYTHONPATH}"   # the package from this checkout
  fi
fi
