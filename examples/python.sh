# Sourced by the launch scripts: the Python they run, as $PYTHON. One given in the environment;
# else the project's virtual environment (.venv, which `make setup` and `make train` build), so
# the scripts work right after those; else python3 (an environment of your own).
_venv_python="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$_venv_python" ]; then PYTHON=$_venv_python; else PYTHON=python3; fi
fi
unset _venv_python
